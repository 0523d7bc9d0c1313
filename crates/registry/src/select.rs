//! Model selection under a budget (DESIGN §7): the best version by a metric subject to cost
//! limits (and, when nothing fits, the candidate closest to fitting), the Pareto front over the
//! metric and the costs, and the rung plan of budgeted successive halving.
//!
//! These are pure functions over recorded versions, so they are property-tested against
//! brute force (`tests` below).

use crate::{ModelVersion, VersionRef};

/// `cost <= max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The cost's name, such as `latency_p99_ms`.
    pub cost: String,
    /// The largest value allowed.
    pub max: f64,
}

/// Parse `name=value` (value may be `5e6`).
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    let (c, v) = text
        .split_once('=')
        .ok_or_else(|| format!("--max {text:?}: write COST=VALUE, e.g. latency_p99_ms=2"))?;
    let max: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("--max {text:?}: {v:?} is not a number"))?;
    if c.trim().is_empty() || !max.is_finite() {
        return Err(format!(
            "--max {text:?}: write COST=VALUE with a finite value"
        ));
    }
    Ok(Limit {
        cost: c.trim().to_string(),
        max,
    })
}

/// What `best` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Best {
    /// The best version within the limits.
    Found {
        /// The version chosen.
        model: VersionRef,
        /// Its metric value.
        metric: f64,
    },
    /// Nothing fits. `closest` is the candidate with the smallest total relative violation,
    /// with what it violates.
    NoneFits {
        /// How many versions have the metric on the evaluation set.
        candidates: usize,
        /// The closest to fitting, with the limits it violates in words.
        closest: Option<(VersionRef, Vec<String>)>,
    },
}

/// How far a version is from fitting the limits: violated limits in words, and the total
/// relative excess (0 when it fits). A missing cost violates its limit.
pub fn violations(m: &ModelVersion, limits: &[Limit]) -> (Vec<String>, f64) {
    let mut words = Vec::new();
    let mut excess = 0.0;
    for l in limits {
        match m.costs.get(&l.cost) {
            None => {
                words.push(format!("{} is not recorded", l.cost));
                excess += 1.0;
            }
            Some(v) if *v > l.max => {
                words.push(format!("{} = {v} > {}", l.cost, l.max));
                excess += (v - l.max) / l.max.abs().max(f64::MIN_POSITIVE);
            }
            _ => {}
        }
    }
    (words, excess)
}

/// Whether `a` beats `b` on the metric (ties broken by name, then newer version first), so
/// the choice is deterministic.
fn better(a: (&ModelVersion, f64), b: (&ModelVersion, f64), minimize: bool) -> bool {
    let (x, y) = if minimize { (-a.1, -b.1) } else { (a.1, b.1) };
    if x != y {
        return x > y;
    }
    (a.0.name.as_str(), std::cmp::Reverse(a.0.version))
        < (b.0.name.as_str(), std::cmp::Reverse(b.0.version))
}

/// The metric a version has on an evaluation set (`eval.version` 0 = any version, the
/// latest recorded for it).
pub fn metric_of(m: &ModelVersion, metric: &str, eval: &VersionRef) -> Option<f64> {
    m.metric(metric, eval).filter(|v| v.is_finite())
}

/// The best candidate by `metric` on `eval` among those within every limit.
pub fn best(
    candidates: &[ModelVersion],
    metric: &str,
    eval: &VersionRef,
    limits: &[Limit],
    minimize: bool,
) -> Best {
    let scored: Vec<(&ModelVersion, f64)> = candidates
        .iter()
        .filter_map(|m| metric_of(m, metric, eval).map(|v| (m, v)))
        .collect();
    let mut chosen: Option<(&ModelVersion, f64)> = None;
    for &(m, v) in &scored {
        if violations(m, limits).0.is_empty() && chosen.is_none_or(|c| better((m, v), c, minimize))
        {
            chosen = Some((m, v));
        }
    }
    match chosen {
        Some((m, v)) => Best::Found {
            model: m.reference(),
            metric: v,
        },
        None => {
            let closest = scored
                .iter()
                .map(|(m, _)| (m, violations(m, limits)))
                .min_by(|a, b| {
                    a.1.1
                        .total_cmp(&b.1.1)
                        .then_with(|| a.0.reference().cmp(&b.0.reference()))
                })
                .map(|(m, (words, _))| (m.reference(), words));
            Best::NoneFits {
                candidates: scored.len(),
                closest,
            }
        }
    }
}

/// The versions not dominated on (metric, costs): no other version is at least as good on
/// every objective and better on one. Costs are minimized; a version lacking the metric or
/// a cost is left out. Sorted by metric, best first.
pub fn pareto(
    candidates: &[ModelVersion],
    metric: &str,
    eval: &VersionRef,
    costs: &[String],
    minimize: bool,
) -> Vec<(VersionRef, f64)> {
    // Objectives as "smaller is better".
    let points: Vec<(&ModelVersion, f64, Vec<f64>)> = candidates
        .iter()
        .filter_map(|m| {
            let v = metric_of(m, metric, eval)?;
            let mut o = vec![if minimize { v } else { -v }];
            for c in costs {
                o.push(*m.costs.get(c).filter(|x| x.is_finite())?);
            }
            Some((m, v, o))
        })
        .collect();
    let dominates = |a: &[f64], b: &[f64]| {
        a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
    };
    let mut front: Vec<(&ModelVersion, f64)> = points
        .iter()
        .filter(|(_, _, o)| !points.iter().any(|(_, _, p)| dominates(p, o)))
        .map(|(m, v, _)| (*m, *v))
        .collect();
    front.sort_by(|a, b| {
        if better(*a, *b, minimize) {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    front.into_iter().map(|(m, v)| (m.reference(), v)).collect()
}

/// One rung of successive halving: how many configurations train, on how many rows each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// How many configurations train in the rung.
    pub configs: usize,
    /// How many training rows each of them gets.
    pub rows: usize,
}

/// The rung plan for `configs` candidates under a budget of training rows: rung r trains
/// ⌈configs/ηʳ⌉ configurations on `base`·ηʳ rows each (capped at the rows available), until
/// one is left or the rows run out; `base` is the largest that keeps the total within the
/// budget. Empty when not even one row per configuration fits.
pub fn halving_plan(configs: usize, available: usize, budget: usize, eta: usize) -> Vec<Rung> {
    let eta = eta.max(2);
    if configs == 0 || available == 0 {
        return vec![];
    }
    let plan = |base: usize| -> Vec<Rung> {
        let mut out = Vec::new();
        let mut n = configs;
        let mut rows = base;
        loop {
            let r = rows.min(available);
            out.push(Rung {
                configs: n,
                rows: r,
            });
            if n == 1 || r == available {
                break;
            }
            n = n.div_ceil(eta);
            rows = rows.saturating_mul(eta);
        }
        out
    };
    let cost = |p: &[Rung]| p.iter().map(|r| r.configs * r.rows).sum::<usize>();
    // The cost grows with `base`: binary search the largest that fits.
    let (mut lo, mut hi) = (0usize, available);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if cost(&plan(mid)) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if lo == 0 { vec![] } else { plan(lo) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArtifactFile, Environment, Metric};
    use proptest::prelude::*;

    fn model(i: usize, metric: f64, latency: f64, size: f64) -> ModelVersion {
        ModelVersion {
            name: format!("m{}", i % 3),
            version: i as u64 + 1,
            artifact: ArtifactFile {
                hash: quiver_core::hash::hash_bytes(&[i as u8]),
                bytes: 1,
                file: "a".into(),
            },
            dataset: VersionRef {
                name: "train".into(),
                version: 1,
            },
            features: vec![],
            algo: None,
            label: None,
            params: Default::default(),
            metrics: vec![Metric {
                name: "auc".into(),
                eval: VersionRef {
                    name: "eval".into(),
                    version: 1,
                },
                value: metric,
            }],
            costs: [
                ("latency_p99_ms".to_string(), latency),
                ("size_bytes".to_string(), size),
            ]
            .into_iter()
            .collect(),
            parent: None,
            seed: None,
            code: None,
            env: Environment {
                os: "linux".into(),
                arch: "x86_64".into(),
                quiver_version: "0".into(),
            },
            tags: Default::default(),
            created_micros: 0,
        }
    }

    fn eval() -> VersionRef {
        VersionRef {
            name: "eval".into(),
            version: 1,
        }
    }

    fn models() -> impl Strategy<Value = Vec<ModelVersion>> {
        prop::collection::vec((0u8..20, 0u8..10, 0u8..10), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (m, l, s))| model(i, m as f64 / 20.0, l as f64, s as f64 * 1e5))
                .collect()
        })
    }

    fn fits(m: &ModelVersion, limits: &[Limit]) -> bool {
        limits
            .iter()
            .all(|l| m.costs.get(&l.cost).is_some_and(|v| *v <= l.max))
    }

    proptest! {
        #[test]
        fn best_is_feasible_and_brute_force_finds_nothing_better(
            ms in models(), lat in 0u8..10, size in 0u8..10, minimize in any::<bool>()
        ) {
            let limits = vec![
                Limit { cost: "latency_p99_ms".into(), max: lat as f64 },
                Limit { cost: "size_bytes".into(), max: size as f64 * 1e5 },
            ];
            let feasible: Vec<&ModelVersion> = ms.iter().filter(|m| fits(m, &limits)).collect();
            match best(&ms, "auc", &eval(), &limits, minimize) {
                Best::Found { model, metric } => {
                    let m = ms.iter().find(|m| m.reference() == model).unwrap();
                    prop_assert!(fits(m, &limits));
                    for f in &feasible {
                        let v = f.metrics[0].value;
                        let ok = if minimize { v >= metric } else { v <= metric };
                        prop_assert!(ok, "{} beats {}", v, metric);
                    }
                }
                Best::NoneFits { closest, .. } => {
                    prop_assert!(feasible.is_empty());
                    prop_assert_eq!(closest.is_some(), !ms.is_empty());
                }
            }
        }

        #[test]
        fn loosening_a_limit_never_makes_the_choice_worse(
            ms in models(), lat in 0u8..10, extra in 0u8..10
        ) {
            let tight = vec![Limit { cost: "latency_p99_ms".into(), max: lat as f64 }];
            let loose = vec![Limit { cost: "latency_p99_ms".into(), max: (lat + extra) as f64 }];
            let score = |b: Best| match b { Best::Found { metric, .. } => Some(metric), _ => None };
            let a = score(best(&ms, "auc", &eval(), &tight, false));
            let b = score(best(&ms, "auc", &eval(), &loose, false));
            if let Some(a) = a {
                prop_assert!(b.is_some_and(|b| b >= a));
            }
        }

        #[test]
        fn pareto_front_is_exactly_the_non_dominated_set(ms in models()) {
            let costs = vec!["latency_p99_ms".to_string()];
            let front = pareto(&ms, "auc", &eval(), &costs, false);
            for m in &ms {
                let (v, l) = (m.metrics[0].value, m.costs["latency_p99_ms"]);
                let dominated = ms.iter().any(|o| {
                    let (ov, ol) = (o.metrics[0].value, o.costs["latency_p99_ms"]);
                    ov >= v && ol <= l && (ov > v || ol < l)
                });
                prop_assert_eq!(front.iter().any(|(r, _)| *r == m.reference()), !dominated);
            }
        }

        #[test]
        fn halving_never_exceeds_the_budget(
            configs in 1usize..40, available in 1usize..5000, budget in 0usize..50_000, eta in 2usize..5
        ) {
            let plan = halving_plan(configs, available, budget, eta);
            let total: usize = plan.iter().map(|r| r.configs * r.rows).sum();
            prop_assert!(total <= budget);
            for w in plan.windows(2) {
                prop_assert!(w[1].configs < w[0].configs || w[1].rows > w[0].rows);
                prop_assert!(w[1].rows >= w[0].rows);
            }
            if let Some(first) = plan.first() {
                prop_assert_eq!(first.configs, configs);
            }
            prop_assert_eq!(plan.clone(), halving_plan(configs, available, budget, eta));
        }
    }

    #[test]
    fn nothing_fits_names_the_closest_and_its_violations() {
        let ms = vec![model(0, 0.9, 5.0, 1e6), model(1, 0.8, 3.0, 9e6)];
        let limits = vec![
            parse_limit("latency_p99_ms=2").unwrap(),
            parse_limit("size_bytes=5e6").unwrap(),
        ];
        match best(&ms, "auc", &eval(), &limits, false) {
            Best::NoneFits {
                closest: Some((r, why)),
                candidates,
            } => {
                assert_eq!(candidates, 2);
                assert_eq!(r.to_string(), "m1@2");
                assert_eq!(
                    why,
                    vec!["latency_p99_ms = 3 > 2", "size_bytes = 9000000 > 5000000"]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_limit("latency").unwrap_err().contains("COST=VALUE"));
        assert!(
            parse_limit("size_bytes=big")
                .unwrap_err()
                .contains("not a number")
        );
    }
}
