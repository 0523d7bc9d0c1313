//! The reuse planner (DESIGN §4 "Reuse"): before any event is read, decide for each
//! requested feature of a view whether it comes from a stored state (exact, widened, narrowed,
//! rows of other spines) or is computed, with the cost gate's estimates and choice. The
//! decision is a value, [`ReusePlan`]; the engine then executes it, and `--explain` prints it
//! through its `Display` (as DataFusion's `DisplayAs` does for physical plans).

use std::fmt;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use quiver_core::semantics::Window;
use quiver_core::time::is_typed_time;

use super::SourceVersion;
use super::cross::{Cross, CrossFinder, time_span, unmatched_rows};
use super::{Engine, ViewParts, kinds_equal, read_columns};
use crate::gate::{self, Choice, Cost};
use crate::reuse::{self, ReuseCatalog};
use crate::state::StateKind;
use crate::stats::ScanStats;
use crate::sweep::{FeatureSpec, Kind};
use crate::{Result, profile};

/// A time range a scan reads: `None` reads nothing, an open lower end reads from the start.
pub(super) type Range = Option<(Option<i64>, i64)>;

/// How one view's requested features are obtained.
pub(super) struct ReusePlan<'c> {
    view: String,
    source: String,
    /// The reuse catalog and the source's version, when reuse applies to this view.
    pub reuse: Option<(&'c ReuseCatalog, SourceVersion)>,
    /// The spine's identity in the catalog (keys and times), when reuse applies.
    pub spine_key: String,
    /// One per requested feature, in request order.
    pub features: Vec<FeaturePlan>,
    /// The sweep's work over every spine row: cold features (as states where they can be
    /// stored) and the bands of widened and narrowed ones.
    pub work: Vec<FeatureSpec>,
    /// The sweep's work over the rows other spines did not give ([`Self::unmatched`]).
    pub sub_work: Vec<FeatureSpec>,
    /// Spine rows some cross-spine feature still computes, ascending.
    pub unmatched: Vec<u32>,
    /// Why reuse is off or limited, found before the cost gate.
    notes: Vec<String>,
    /// The cost gate's estimates and choice, when it had a choice to make.
    gate: Option<GateReport>,
    /// Why computed states are not kept, found after the gate.
    admission: Option<String>,
}

/// How one requested feature is obtained.
pub(super) struct FeaturePlan {
    /// The feature's output label.
    label: String,
    /// The window it asks for.
    want: Window,
    /// The state it is computed (or stored) as; `None`: a plain value, neither reused nor
    /// stored.
    pub kind: Option<StateKind>,
    /// Its state's definition key in the catalog.
    pub def: Option<String>,
    /// Where its state starts: computed, or a stored state for this, a wider or a narrower
    /// window.
    pub choice: Choice,
    /// Rows other spines give it (the rest are computed in the second pass).
    pub cross: Option<Cross>,
    /// Its column in `work` (or `sub_work` when `cross`); `None` when nothing is swept.
    pub slot: Option<usize>,
}

impl FeaturePlan {
    /// Whether its state comes, in part or whole, from the catalog.
    pub fn reused(&self) -> bool {
        !matches!(self.choice, Choice::Cold) || self.cross.is_some()
    }
}

/// The cost gate's estimates for recomputing and for reusing, and its choice.
struct GateReport {
    cold: Cost,
    cold_range: Range,
    warm: Cost,
    warm_range: Range,
    /// The second pass's range, for the rows other spines did not give.
    rest_range: Range,
    /// Chosen: (partial windows, rows of other spines), and its cost.
    chosen: ((bool, bool), Cost),
    forced: bool,
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cold, best) = (&self.cold, &self.chosen.1);
        let what = match self.chosen.0 {
            (false, false) => "recompute (reuse would not be faster)".to_string(),
            _ if self.forced => "reuse (forced)".to_string(),
            (pa, cr) => format!(
                "reuse{}{} (saves ≈ {:.3} s, {} and {} rows)",
                if pa { ", partial windows" } else { "" },
                if cr { ", rows of other spines" } else { "" },
                cold.seconds(&gate::TIME_MODEL) - best.seconds(&gate::TIME_MODEL),
                gate::bytes(cold.bytes().saturating_sub(best.bytes()) as f64),
                cold.rows().saturating_sub(best.rows())
            ),
        };
        write!(
            f,
            "  cost gate: recompute reads {} {}; reuse reads {}{} {} -> {what}",
            gate::range_text(self.cold_range),
            cold.text(),
            gate::range_text(self.warm_range),
            match self.rest_range {
                Some(_) => format!(
                    " and {} for the rows left",
                    gate::range_text(self.rest_range)
                ),
                None => String::new(),
            },
            self.warm.text(),
        )
    }
}

impl fmt::Display for ReusePlan<'_> {
    /// One line per fact, each after the first indented: the header, why reuse is off or
    /// limited, the cost gate, admission, then how each feature with a state is obtained.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "view `{}` (source `{}`): {} feature(s)",
            self.view,
            self.source,
            self.features.len()
        )?;
        for n in &self.notes {
            write!(f, "\n{n}")?;
        }
        if let Some(g) = &self.gate {
            write!(f, "\n{g}")?;
        }
        if let Some(a) = &self.admission {
            write!(f, "\n{a}")?;
        }
        for fp in self.features.iter().filter(|fp| fp.kind.is_some()) {
            let how = match &fp.cross {
                Some(c) => format!(
                    "{}: {} of {} rows from {} other spine(s), the rest computed",
                    fp.want,
                    c.matched,
                    c.rows.len(),
                    c.entries.len()
                ),
                None => fp.choice.describe(&fp.want),
            };
            write!(f, "\n  `{}` {how}", fp.label)?;
        }
        Ok(())
    }
}

/// What the planner reads about a view's spine.
pub(super) struct SpineFacts<'a> {
    /// The spine input (row id, keys, time).
    pub sbatch: &'a RecordBatch,
    /// The join type of each key.
    pub key_types: &'a [DataType],
    /// The spine's times.
    pub t: &'a Int64Array,
    /// The least and greatest spine time.
    pub span: (i64, i64),
}

impl Engine {
    /// Plan how `p`'s features are obtained for this spine.
    pub(super) async fn plan_reuse(
        &self,
        p: &ViewParts<'_>,
        spine: &SpineFacts<'_>,
    ) -> Result<ReusePlan<'_>> {
        let (view, src) = (p.view, p.source);
        let mut plan = ReusePlan {
            view: view.name.clone(),
            source: src.name.clone(),
            reuse: None,
            spine_key: String::new(),
            features: p
                .features
                .iter()
                .map(|f| FeaturePlan {
                    label: f.label.clone(),
                    want: gate::window_of(&f.kind),
                    kind: None,
                    def: None,
                    choice: Choice::Cold,
                    cross: None,
                    slot: None,
                })
                .collect(),
            work: Vec::new(),
            sub_work: Vec::new(),
            unmatched: Vec::new(),
            notes: Vec::new(),
            gate: None,
            admission: None,
        };
        plan.reuse = match &self.reuse {
            Some(c) if !src.filter_created => match self.source_version(src).await? {
                Some(v) => Some((c, v)),
                None => {
                    plan.notes
                        .push("  reuse: off (the source's version is not known)".into());
                    None
                }
            },
            Some(_) => {
                plan.notes
                    .push("  reuse: off (`filter_created` windows are not ranges)".into());
                None
            }
            None => None,
        };
        let mut stats = Stats::default();
        let stored_all = self.stored_states(p, spine, &mut plan, &mut stats)?;
        profile::stage(format_args!("view {}: reuse lookups", view.name));
        self.cross_spine(p, spine, &mut plan, &stored_all, &mut stats)?;
        self.cost_gate(p, spine, &mut plan, &mut stats)?;
        profile::stage(format_args!("view {}: gate", view.name));
        admit(&mut plan, spine.sbatch.num_rows() as u64);
        work_lists(p, &mut plan);
        plan.unmatched = unmatched_rows(plan.features.iter().map(|f| &f.cross));
        Ok(plan)
    }

    /// Each feature's state kind, definition key and best stored state. Returns the
    /// catalog's entries (one read of the manifest serves every lookup, cross-spine too).
    fn stored_states(
        &self,
        p: &ViewParts<'_>,
        spine: &SpineFacts<'_>,
        plan: &mut ReusePlan<'_>,
        stats: &mut Stats,
    ) -> Result<Vec<reuse::Entry>> {
        let Some((cat, version)) = plan.reuse.clone() else {
            return Ok(Vec::new());
        };
        let (view, src) = (p.view, p.source);
        let tschema = p.table.schema();
        for (fp, f) in plan.features.iter_mut().zip(&p.features) {
            fp.kind = match f.kind {
                Kind::Latest => Some(StateKind::Latest),
                Kind::Agg(agg, _) => StateKind::of(
                    agg,
                    f.column
                        .map(|c| tschema.field_with_name(&p.value_cols[c]))
                        .transpose()
                        .ok()
                        .flatten()
                        .map(|f| f.data_type()),
                ),
            };
        }
        plan.spine_key = gate::spine_key(&gate::spine_columns(spine.sbatch))?;
        let stored_all = cat.entries().unwrap_or_else(|e| {
            plan.notes
                .push(format!("  reuse: catalog unreadable ({e}); recomputing"));
            Vec::new()
        });
        let keys: Vec<String> = view
            .join_keys
            .iter()
            .zip(spine.key_types)
            .map(|(k, t)| format!("{k}:{t}"))
            .collect();
        for (i, fp) in plan.features.iter_mut().enumerate() {
            let Some(kind) = fp.kind else { continue };
            let feat = &view.features[p.feature_index[i]];
            let def = reuse::key_of(&[
                &src.name,
                &version.id,
                &keys.join(","),
                &src.timestamp,
                src.created_timestamp.as_deref().unwrap_or(""),
                kind.name(),
                &feat.column,
                feat.filter.as_deref().unwrap_or(""),
                &view.ttl.map(|d| d.to_string()).unwrap_or_default(),
            ]);
            let stored: Vec<reuse::Entry> = stored_all
                .iter()
                .filter(|e| e.def == def && e.spine == plan.spine_key)
                .cloned()
                .collect();
            fp.choice = gate::choose(&fp.want, kind, &stored);
            fp.def = Some(def);
        }
        if plan.features.iter().any(|f| partial(&f.choice)) {
            stats.load(p, &version)?;
        }
        Ok(stored_all)
    }

    /// Cross-spine reuse: a feature still to compute whose window is stored for other spines
    /// takes the rows those spines share with this one (same keys and time) and is computed
    /// only for the rest.
    fn cross_spine(
        &self,
        p: &ViewParts<'_>,
        spine: &SpineFacts<'_>,
        plan: &mut ReusePlan<'_>,
        stored_all: &[reuse::Entry],
        stats: &mut Stats,
    ) -> Result<()> {
        let Some((cat, version)) = plan.reuse.clone() else {
            return Ok(());
        };
        let (tmin, tmax) = spine.span;
        // Candidates first (the manifest only); matching rows costs time in proportion to
        // the spines, so it is skipped when even a full match would read more (the stored
        // states) than computing the features.
        let mut candidates: Vec<(usize, Vec<reuse::Entry>)> = Vec::new();
        for (i, fp) in plan.features.iter().enumerate() {
            let (Choice::Cold, Some(def)) = (&fp.choice, &fp.def) else {
                continue;
            };
            let mut others: Vec<reuse::Entry> = stored_all
                .iter()
                .filter(|e| &e.def == def && e.window == fp.want && e.spine != plan.spine_key)
                .cloned()
                .collect();
            // the most recently used first; a handful is enough
            others.sort_by_key(|e| std::cmp::Reverse(e.used_micros));
            others.truncate(4);
            if !others.is_empty() {
                candidates.push((i, others));
            }
        }
        if !candidates.is_empty() && typed(p, spine) && !self.reuse_always {
            stats.load(p, &version)?;
            // at best, the latest stored spine holds every row: one state read per feature
            let mut best_case = Cost::of(
                None,
                None,
                &candidates.iter().map(|(_, es)| &es[0]).collect::<Vec<_>>(),
            );
            best_case.matched = spine.t.len() as u64;
            let whole = gate::hull(
                candidates
                    .iter()
                    .map(|(i, _)| gate::needed(&p.features[*i].kind, p.view.ttl, tmin, tmax)),
            );
            let mut cold = Cost::of(stats.get(), whole, &[]);
            cold.swept = candidates.len() as u64 * spine.t.len() as u64;
            let model = &gate::TIME_MODEL;
            if best_case.seconds(model) >= cold.seconds(model) {
                plan.notes.push(format!(
                    "  rows of other spines not matched: reading their states (≈ {:.3} s) \
                     takes longer than computing (≈ {:.3} s)",
                    best_case.seconds(model),
                    cold.seconds(model)
                ));
                candidates.clear();
            }
        }
        let mut finder = CrossFinder::new(cat, spine.sbatch)?;
        for (i, others) in candidates {
            plan.features[i].cross = finder.find(others)?;
        }
        Ok(())
    }

    /// Exact matches are always taken: no scan, sort or sweep for them. The cost gate weighs
    /// the rest: recompute every other feature over all spine rows and its whole window, or
    /// start widened and narrowed features from their stored states (scanning only the bands)
    /// and cross-spine features from the rows other spines share (scanning only for the rows
    /// left). What it turns down becomes cold again.
    fn cost_gate(
        &self,
        p: &ViewParts<'_>,
        spine: &SpineFacts<'_>,
        plan: &mut ReusePlan<'_>,
        stats: &mut Stats,
    ) -> Result<()> {
        let has_partial = plan.features.iter().any(|f| partial(&f.choice));
        let has_cross = plan.features.iter().any(|f| f.cross.is_some());
        let (mut use_partial, mut use_cross) = (false, false);
        if has_partial || has_cross {
            if let Some((_, version)) = &plan.reuse {
                stats.load(p, version)?;
            }
            // the rows other spines lack, and their times, found once for every plan
            let unmatched = unmatched_rows(plan.features.iter().map(|f| &f.cross));
            let span = time_span(spine.t, unmatched.iter().copied());
            let rest = (unmatched.len(), span);
            let cost = |pa: bool, cr: bool| plan_cost(p, spine, plan, stats.get(), (pa, cr), rest);
            let cold = cost(false, false);
            let mut best = ((false, false), cold.cost);
            for (pa, cr) in [(true, false), (false, true), (true, true)] {
                if (pa && !has_partial) || (cr && !has_cross) {
                    continue;
                }
                let c = cost(pa, cr).cost;
                let forced = self.reuse_always && pa == has_partial && cr == has_cross;
                let (secs, best_secs) = (
                    c.seconds(&gate::TIME_MODEL),
                    best.1.seconds(&gate::TIME_MODEL),
                );
                if forced || (!self.reuse_always && secs < best_secs) {
                    best = ((pa, cr), c);
                }
            }
            (use_partial, use_cross) = best.0;
            let warm = cost(has_partial, has_cross);
            plan.gate = Some(GateReport {
                cold: cold.cost,
                cold_range: cold.main,
                warm: warm.cost,
                warm_range: warm.main,
                rest_range: warm.rest,
                chosen: best,
                forced: self.reuse_always,
            });
        }
        for fp in &mut plan.features {
            if !use_partial && partial(&fp.choice) {
                fp.choice = Choice::Cold;
            }
            if !use_cross {
                fp.cross = None;
            }
        }
        Ok(())
    }
}

/// Whether a choice starts from a stored state for another window.
fn partial(c: &Choice) -> bool {
    matches!(c, Choice::Widen(..) | Choice::Narrow(..))
}

/// Whether the spine's times can bound the scan (a typed time column and some valid time).
fn typed(p: &ViewParts<'_>, spine: &SpineFacts<'_>) -> bool {
    let (tmin, tmax) = spine.span;
    let time_type = p
        .table
        .schema()
        .field_with_name(&p.source.timestamp)
        .map(|f| f.data_type().clone());
    tmin <= tmax && time_type.is_ok_and(|t| is_typed_time(&t))
}

/// The source's footer statistics, read once, and only when an estimate needs them.
#[derive(Default)]
struct Stats(Option<ScanStats>);

impl Stats {
    fn load(&mut self, p: &ViewParts<'_>, version: &SourceVersion) -> Result<()> {
        if self.0.is_none() {
            self.0 = Some(ScanStats::load(
                &version.files,
                &p.source.timestamp,
                &read_columns(p),
            )?);
        }
        Ok(())
    }

    fn get(&self) -> Option<&ScanStats> {
        self.0.as_ref()
    }
}

/// What a plan reads: its cost, the main pass's range and the second pass's.
struct Estimate {
    cost: Cost,
    main: Range,
    rest: Range,
}

/// The cost of a plan that takes partial windows (`partial_on`) and rows of other spines
/// (`cross_on`) where they were found; `unmatched` counts the rows other spines lack and
/// spans their times.
fn plan_cost(
    p: &ViewParts<'_>,
    spine: &SpineFacts<'_>,
    plan: &ReusePlan<'_>,
    stats: Option<&ScanStats>,
    (partial_on, cross_on): (bool, bool),
    (unmatched, (ut0, ut1)): (usize, (i64, i64)),
) -> Estimate {
    let (tmin, tmax) = spine.span;
    let ttl = p.view.ttl;
    let mut main = Vec::new();
    let mut sub = Vec::new();
    let mut stored: Vec<&reuse::Entry> = Vec::new();
    for (fp, f) in plan.features.iter().zip(&p.features) {
        match (&fp.choice, f.kind) {
            (Choice::Exact(_), _) => {}
            (o, Kind::Agg(a, _)) if partial(o) && partial_on => {
                main.push(Kind::Agg(a, o.band().expect("band")));
                stored.extend(o.entry());
            }
            _ => match (&fp.cross, cross_on) {
                (Some(c), true) => {
                    sub.push(f.kind);
                    stored.extend(c.entries.iter());
                }
                _ => main.push(f.kind),
            },
        }
    }
    let unmatched = if cross_on { unmatched } else { 0 };
    let main_range = gate::hull(main.iter().map(|k| gate::needed(k, ttl, tmin, tmax)));
    let sub_range = if unmatched == 0 {
        None
    } else {
        gate::hull(sub.iter().map(|k| gate::needed(k, ttl, ut0, ut1)))
    };
    // features sharing a state (sum and mean of a column) read it once
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    stored.dedup_by(|a, b| a.id == b.id);
    let typed = typed(p, spine);
    let whole = |r: Range| {
        if typed {
            r
        } else {
            r.map(|_| (None, i64::MAX))
        }
    };
    let mut c = Cost::of(stats, whole(main_range), &stored);
    let s = Cost::of(stats, whole(sub_range), &[]);
    c.scan = c.scan + s.scan;
    let n = spine.t.len() as u64;
    c.swept = main.len() as u64 * n + sub.len() as u64 * unmatched as u64;
    if cross_on && plan.features.iter().any(|f| f.cross.is_some()) {
        c.matched = n;
    }
    Estimate {
        cost: c,
        main: main_range,
        rest: sub_range,
    }
}

/// States are kept only when they fit the catalog's admission (half its budget): a spine
/// too large to store computes plain values and pays nothing for reuse.
fn admit(plan: &mut ReusePlan<'_>, rows: u64) {
    let Some((cat, _)) = &plan.reuse else { return };
    let cold = |f: &FeaturePlan| matches!(f.choice, Choice::Cold) && f.cross.is_none();
    let est: u64 = plan
        .features
        .iter()
        .filter(|f| cold(f))
        .filter_map(|f| f.kind.map(|k| rows * k.row_bytes()))
        .sum();
    if est > cat.budget() / 2 {
        plan.admission = Some(format!(
            "  states not kept: about {} for {rows} rows is over half the reuse budget",
            gate::bytes(est as f64)
        ));
        for f in plan.features.iter_mut().filter(|f| cold(f)) {
            f.kind = None;
        }
    }
}

/// The sweep's work: cold features over all rows (as states where they can be stored) and
/// bands; cross-spine features over the rows left. Features with the same state over the
/// same window (a sum and a mean of a column) are swept once.
fn work_lists(p: &ViewParts<'_>, plan: &mut ReusePlan<'_>) {
    let (work, sub_work) = (&mut plan.work, &mut plan.sub_work);
    for (fp, f) in plan.features.iter_mut().zip(&p.features) {
        let spec = match (&fp.choice, f.kind) {
            (Choice::Exact(_), _) => None,
            (Choice::Cold, _) => Some(FeatureSpec {
                state: fp.kind.is_some(),
                ..f.clone()
            }),
            (o, Kind::Agg(a, _)) => Some(FeatureSpec {
                kind: Kind::Agg(a, o.band().expect("band")),
                state: true,
                ..f.clone()
            }),
            (_, Kind::Latest) => Some(f.clone()),
        };
        let target = if fp.cross.is_some() {
            &mut *sub_work
        } else {
            &mut *work
        };
        fp.slot = spec.map(|mut s| {
            if s.state {
                s.output_type = fp.kind.expect("state kind").data_type(&s.output_type);
            }
            let same = |w: &FeatureSpec| {
                w.state
                    && s.state
                    && kinds_equal(w, &s)
                    && w.column == s.column
                    && w.filter == s.filter
                    && w.output_type == s.output_type
            };
            if let Some(j) = target.iter().position(same) {
                return j;
            }
            s.name = format!("__w{}", target.len());
            target.push(s);
            target.len() - 1
        });
    }
}
