//! The reuse planner (DESIGN §4 "Reuse"): before any event is read, decide for each
//! requested feature of a view whether it comes from a stored state (exact, widened, narrowed,
//! rows of other spines) or is computed, with the cost gate's estimates and choice. The
//! decision is a value, [`ReusePlan`]; the engine then executes it, and `--explain` prints it
//! through its `Display` (as DataFusion's `DisplayAs` does for physical plans).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use quiver_core::semantics::Window;
use quiver_core::time::is_typed_time;

use super::SourceVersion;
use super::cross::{Cross, CrossFinder, time_span, unmatched_rows};
use super::tiles::{self, Grid, Tiling};
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
    /// Features merged from day tiles, when the gate chose them.
    pub tiles: Option<TilePlan>,
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
    /// Merged from day tiles: its tiles' column in the tile plan's `work`, and how its
    /// window splits.
    pub tiles: Option<(usize, Tiling)>,
}

/// Features computed from day tiles ([`tiles`]): the grid of (key, tile end) rows, the
/// one-day states swept over the rows no stored grid holds, and the stored tiles.
pub(super) struct TilePlan {
    pub grid: Arc<Grid>,
    /// The grid's identity in the catalog (as any spine's).
    pub key: String,
    /// One-day states, one per distinct state (a sum and a mean of a column share one).
    pub work: Vec<FeatureSpec>,
    /// Per state in `work`: its definition key.
    pub defs: Vec<String>,
    /// Per state in `work`: the grid rows stored grids hold.
    pub cross: Vec<Option<Cross>>,
    /// Grid rows some state still computes, ascending.
    pub unmatched: Vec<u32>,
}

impl TilePlan {
    /// Whether some tile comes from the catalog.
    pub fn stored(&self) -> bool {
        self.cross.iter().any(|c| c.is_some())
    }

    /// The grid's tile ends.
    pub fn ends(&self) -> &Int64Array {
        let b = &self.grid.sbatch;
        b.column(b.num_columns() - 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("grid times are i64")
    }
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
    /// The day tiles' pass's range, for the grid rows no stored grid holds.
    tile_range: Range,
    /// Chosen: which of partial windows, rows of other spines and day tiles, and its cost.
    chosen: (Uses, Cost),
    forced: bool,
}

/// Which kinds of reuse a plan takes where they were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Uses {
    partial: bool,
    cross: bool,
    tiles: bool,
}

/// Computing from day tiles when none are stored yet costs a little more than computing
/// directly (the grid's states are merged, and stored); it is chosen when it costs at most
/// this share more, for the joins after it that find the tiles.
const TILE_INVESTMENT: f64 = 0.04;

/// A plan of partial windows or rows of other spines is taken over recomputing only when the
/// model predicts it at least this much faster: below that the two are within the model's
/// error, and recomputing stores the same states for later joins. (At 15 % the W1 widening,
/// predicted 14 % faster, was recomputed; with stored states mapped rather than read it
/// measured 14 % faster over 15 rounds, so the margin cost what it was meant to guard.)
const MIN_SAVING: f64 = 0.05;

/// Tiles are not considered when their grid would hold more than this many tiles per spine
/// row (sparse keys: each row needs tiles no other row shares).
const MAX_GRID_RATIO: usize = 8;

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cold, best) = (&self.cold, &self.chosen.1);
        let saves = cold.seconds(&gate::TIME_MODEL) - best.seconds(&gate::TIME_MODEL);
        let what = match self.chosen.0 {
            u if u == Uses::default() => format!(
                "recompute (reuse would not be {:.0} % faster)",
                MIN_SAVING * 100.0
            ),
            _ if self.forced => "reuse (forced)".to_string(),
            Uses {
                partial: false,
                cross: false,
                tiles: true,
            } if saves <= 0.0 => format!(
                "compute from day tiles, kept for later joins (≈ {:.3} s more now)",
                -saves
            ),
            u => format!(
                "reuse{}{}{} (saves ≈ {saves:.3} s, {} and {} rows)",
                if u.partial { ", partial windows" } else { "" },
                if u.cross {
                    ", rows of other spines"
                } else {
                    ""
                },
                if u.tiles { ", day tiles" } else { "" },
                gate::bytes(cold.bytes().saturating_sub(best.bytes()) as f64),
                cold.rows().saturating_sub(best.rows())
            ),
        };
        let and = |r: Range, what: &str| match r {
            Some(_) => format!(" and {} {what}", gate::range_text(r)),
            None => String::new(),
        };
        write!(
            f,
            "  cost gate: recompute reads {} {}; reuse reads {}{}{} {} -> {what}",
            gate::range_text(self.cold_range),
            cold.text(),
            gate::range_text(self.warm_range),
            and(self.rest_range, "for the rows left"),
            and(self.tile_range, "for the day tiles"),
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
            let how = match (&fp.cross, fp.tiles, &self.tiles) {
                (_, Some((slot, w)), Some(tp)) => {
                    let stored = tp.cross[slot].as_ref().map_or(0, |c| c.matched);
                    format!(
                        "{}: merged from {} day tiles each (a grid of {} tiles, {stored} stored, \
                         the rest computed)",
                        fp.want,
                        w.days,
                        tp.grid.rows()
                    )
                }
                (Some(c), _, _) => format!(
                    "{}: {} of {} rows from {} other spine(s), the rest computed",
                    fp.want,
                    c.matched,
                    c.len,
                    c.entries.len()
                ),
                (None, _, _) => fp.choice.describe(&fp.want),
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
                    tiles: None,
                })
                .collect(),
            work: Vec::new(),
            sub_work: Vec::new(),
            unmatched: Vec::new(),
            tiles: None,
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
        self.tile_plan(p, spine, &mut plan, &stored_all, &mut stats)?;
        profile::stage(format_args!("view {}: tiles planned", view.name));
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
            let others = recent(stored_all, |e| {
                &e.def == def && e.window == fp.want && e.spine != plan.spine_key
            });
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

    /// Day tiles: features whose windows are whole days, for a spine whose times share a
    /// time of day, can be merged from one-day states over a grid of (key, tile end) rows;
    /// the grid's rows that stored grids hold are found here, as a spine's rows are in other
    /// spines. Whether the tiles are used is the cost gate's choice.
    fn tile_plan(
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
        if !typed(p, spine) || tiles::phase(spine.t).is_none() {
            return Ok(());
        }
        let candidates: Vec<(usize, Tiling)> = plan
            .features
            .iter()
            .zip(&p.features)
            .enumerate()
            .filter_map(|(i, (fp, f))| match (f.kind, fp.kind, &fp.choice) {
                (_, _, Choice::Exact(_)) | (_, Some(StateKind::Latest) | None, _) => None,
                (Kind::Agg(_, w), Some(_), _) => tiles::split(&w).map(|t| (i, t)),
                _ => None,
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let n = spine.t.len();
        // With no tile stored, tiles can only be an investment, and one that merges at least
        // once per row and state: when even that passes the investment bound, the grid (a
        // sort of the spine's keys and an index of days × keys) is not built.
        let stored_any = candidates.iter().any(|&(i, _)| {
            let (def, w) = (&plan.features[i].def, plan.features[i].want);
            stored_all
                .iter()
                .any(|e| Some(&e.def) == def.as_ref() && e.window == tiles::tile_window(w.closed))
        });
        if !stored_any && !self.reuse_always {
            stats.load(p, &version)?;
            let (tmin, tmax) = spine.span;
            let kinds = candidates.iter().map(|&(i, _)| &p.features[i].kind);
            let mut cold = Cost::of(
                stats.get(),
                gate::hull(kinds.map(|k| gate::needed(k, p.view.ttl, tmin, tmax))),
                &[],
            );
            cold.swept = (candidates.len() * n) as u64;
            let least = (candidates.len() * n) as f64 * gate::TIME_MODEL.merged_row;
            if least > cold.seconds(&gate::TIME_MODEL) * TILE_INVESTMENT {
                plan.notes.push(format!(
                    "  day tiles: not kept (merging them would cost over {:.0} % of computing \
                     the features, ≈ {least:.3} s or more)",
                    TILE_INVESTMENT * 100.0
                ));
                return Ok(());
            }
        }
        let tilings: Vec<Tiling> = candidates.iter().map(|(_, t)| *t).collect();
        let Some(grid) = Grid::build(spine.sbatch, &tilings, n.saturating_mul(MAX_GRID_RATIO))?
        else {
            plan.notes.push(format!(
                "  day tiles: not used (their grid would hold over {MAX_GRID_RATIO} tiles per spine row)"
            ));
            return Ok(());
        };
        profile::stage(format_args!(
            "view {}: tile grid of {} rows",
            p.view.name,
            grid.rows()
        ));
        let (mut work, mut defs): (Vec<FeatureSpec>, Vec<String>) = (Vec::new(), Vec::new());
        for &(i, tiling) in &candidates {
            let (fp, f) = (&plan.features[i], &p.features[i]);
            let (Kind::Agg(agg, w), Some(kind), Some(def)) = (f.kind, fp.kind, &fp.def) else {
                continue;
            };
            let spec = FeatureSpec {
                kind: Kind::Agg(agg, tiles::tile_window(w.closed)),
                state: true,
                output_type: kind.data_type(&f.output_type),
                ..f.clone()
            };
            let slot = match work.iter().position(|w| same_state(w, &spec)) {
                Some(j) => j,
                None => {
                    work.push(FeatureSpec {
                        name: format!("__d{}", work.len()),
                        ..spec
                    });
                    defs.push(def.clone());
                    work.len() - 1
                }
            };
            plan.features[i].tiles = Some((slot, tiling));
        }
        let mut finder = CrossFinder::new(cat, &grid.sbatch)?;
        let mut cross = Vec::with_capacity(work.len());
        for (w, def) in work.iter().zip(&defs) {
            let window = gate::window_of(&w.kind);
            let stored = recent(stored_all, |e| &e.def == def && e.window == window);
            cross.push(match stored.is_empty() {
                true => None,
                false => finder.find(stored)?,
            });
        }
        profile::stage(format_args!("view {}: stored tiles found", p.view.name));
        let unmatched = if cross.iter().any(|c| c.is_none()) {
            (0..grid.rows() as u32).collect()
        } else {
            unmatched_rows(&cross)
        };
        plan.tiles = Some(TilePlan {
            key: gate::spine_key(&gate::spine_columns(&grid.sbatch))?,
            grid: Arc::new(grid),
            work,
            defs,
            cross,
            unmatched,
        });
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
        let has_tiles = plan.tiles.is_some();
        let mut chosen = Uses::default();
        if has_partial || has_cross || has_tiles {
            if let Some((_, version)) = &plan.reuse {
                stats.load(p, version)?;
            }
            // the rows other spines lack, and their times, found once for every plan
            let unmatched = unmatched_rows(plan.features.iter().map(|f| &f.cross));
            let span = time_span(spine.t, unmatched.iter().copied());
            let rest = (unmatched.len(), span);
            let cost = |u: Uses| plan_cost(p, spine, plan, stats.get(), u, rest);
            let secs = |c: &Cost| c.seconds(&gate::TIME_MODEL);
            let cold = cost(Uses::default());
            let all = Uses {
                partial: has_partial,
                cross: has_cross,
                tiles: has_tiles,
            };
            // every plan the found reuse allows, each kind on or off
            let plans: Vec<(Uses, Cost)> = (0..8u8)
                .map(|b| Uses {
                    partial: b & 1 != 0,
                    cross: b & 2 != 0,
                    tiles: b & 4 != 0,
                })
                .filter(|u| (!u.partial || has_partial) && (!u.cross || has_cross))
                .filter(|u| !u.tiles || has_tiles)
                .map(|u| (u, cost(u).cost))
                .collect();
            let fastest = |tiles: bool| {
                let best = plans
                    .iter()
                    .filter(|(u, _)| u.tiles == tiles)
                    .min_by(|a, b| secs(&a.1).total_cmp(&secs(&b.1)))
                    .copied();
                match best {
                    Some((u, c))
                        if !tiles
                            && u != Uses::default()
                            && secs(&c) > secs(&cold.cost) * (1.0 - MIN_SAVING) =>
                    {
                        Some((Uses::default(), cold.cost))
                    }
                    other => other,
                }
            };
            let best = if self.reuse_always {
                plans.iter().find(|(u, _)| *u == all).copied()
            } else {
                match (fastest(false), fastest(true)) {
                    // with no tile stored yet, tiles are an investment in later joins
                    (Some(plain), Some(tiled))
                        if secs(&tiled.1) < secs(&plain.1)
                            || (!plan.tiles.as_ref().is_some_and(|t| t.stored())
                                && secs(&tiled.1) <= secs(&plain.1) * (1.0 + TILE_INVESTMENT)) =>
                    {
                        Some(tiled)
                    }
                    (plain, _) => plain,
                }
            };
            let best = best.unwrap_or((Uses::default(), cold.cost));
            chosen = best.0;
            let warm = cost(all);
            plan.gate = Some(GateReport {
                cold: cold.cost,
                cold_range: cold.main,
                warm: warm.cost,
                warm_range: warm.main,
                rest_range: warm.rest,
                tile_range: warm.tiles,
                chosen: best,
                forced: self.reuse_always,
            });
        }
        if !chosen.tiles {
            plan.tiles = None;
        }
        for fp in &mut plan.features {
            if !chosen.tiles {
                fp.tiles = None;
            }
            if fp.tiles.is_some() {
                // merged from tiles: nothing else is read for it
                fp.choice = Choice::Cold;
                fp.cross = None;
            }
            if !chosen.partial && partial(&fp.choice) {
                fp.choice = Choice::Cold;
            }
            if !chosen.cross {
                fp.cross = None;
            }
        }
        Ok(())
    }
}

/// The stored entries `keep` accepts, the most recently used first; a handful is enough.
fn recent(stored_all: &[reuse::Entry], keep: impl Fn(&reuse::Entry) -> bool) -> Vec<reuse::Entry> {
    let mut found: Vec<reuse::Entry> = stored_all.iter().filter(|e| keep(e)).cloned().collect();
    found.sort_by_key(|e| std::cmp::Reverse(e.used_micros));
    found.truncate(4);
    found
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

/// What a plan reads: its cost, the main pass's range, the second pass's and the tiles'.
struct Estimate {
    cost: Cost,
    main: Range,
    rest: Range,
    tiles: Range,
}

/// The cost of a plan that takes partial windows (`partial_on`) and rows of other spines
/// (`cross_on`) where they were found; `unmatched` counts the rows other spines lack and
/// spans their times.
fn plan_cost(
    p: &ViewParts<'_>,
    spine: &SpineFacts<'_>,
    plan: &ReusePlan<'_>,
    stats: Option<&ScanStats>,
    uses: Uses,
    (unmatched, (ut0, ut1)): (usize, (i64, i64)),
) -> Estimate {
    let (partial_on, cross_on) = (uses.partial, uses.cross);
    let tiles = plan.tiles.as_ref().filter(|_| uses.tiles);
    let (tmin, tmax) = spine.span;
    let ttl = p.view.ttl;
    let mut main = Vec::new();
    let mut sub = Vec::new();
    let mut stored: Vec<&reuse::Entry> = Vec::new();
    // the states merged from tiles, each distinct state and window once
    let mut merges: Vec<(usize, Tiling)> = Vec::new();
    // features merging a stored state with a band, once per spine row
    let mut partial_merges = 0u64;
    for (fp, f) in plan.features.iter().zip(&p.features) {
        match (&fp.choice, f.kind) {
            (Choice::Exact(_), _) => {}
            _ if fp.tiles.is_some() && tiles.is_some() => merges.extend(fp.tiles),
            (o, Kind::Agg(a, _)) if partial(o) && partial_on => {
                main.push(Kind::Agg(a, o.band().expect("band")));
                stored.extend(o.entry());
                partial_merges += 1;
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
    let typed = typed(p, spine);
    let whole = |r: Range| {
        if typed {
            r
        } else {
            r.map(|_| (None, i64::MAX))
        }
    };
    let n = spine.t.len() as u64;
    // the grid's rows no stored grid holds are swept over their own range
    let (mut tile_range, mut tile_stored) = (None, Vec::new());
    if let Some(tp) = tiles {
        let (g0, g1) = time_span(tp.ends(), tp.unmatched.iter().copied());
        if !tp.unmatched.is_empty() {
            tile_range = gate::hull(tp.work.iter().map(|w| gate::needed(&w.kind, ttl, g0, g1)));
        }
        tile_stored.extend(tp.cross.iter().flatten().flat_map(|c| c.entries.iter()));
    }
    stored.extend(tile_stored.iter().copied());
    // features sharing a state (sum and mean of a column) read it once
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    stored.dedup_by(|a, b| a.id == b.id);
    let mut c = Cost::of(stats, whole(main_range), &stored);
    for r in [sub_range, tile_range] {
        c.scan = c.scan + Cost::of(stats, whole(r), &[]).scan;
    }
    c.swept = main.len() as u64 * n + sub.len() as u64 * unmatched as u64;
    if cross_on && plan.features.iter().any(|f| f.cross.is_some()) {
        c.matched = n;
    }
    c.merged = partial_merges * n;
    if let Some(tp) = tiles {
        c.swept += tp.work.len() as u64 * tp.unmatched.len() as u64;
        if tp.stored() {
            c.matched += tp.grid.rows() as u64;
        }
        merges.sort_by_key(|(s, w)| (*s, w.days, w.shift));
        merges.dedup();
        // merged by blocks: about two merges per grid cell, and one per spine row
        c.merged += merges.len() as u64 * (2 * tp.grid.cells() as u64 + n);
    }
    Estimate {
        cost: c,
        main: main_range,
        rest: sub_range,
        tiles: tile_range,
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
    // and the tiles computed, about as large per row as the states they merge into
    let tiles: u64 = plan.tiles.as_ref().map_or(0, |tp| {
        let per_row: u64 = plan
            .features
            .iter()
            .filter(|f| f.tiles.is_some())
            .filter_map(|f| f.kind.map(|k| k.row_bytes()))
            .max()
            .unwrap_or(0);
        tp.unmatched.len() as u64 * tp.work.len() as u64 * per_row
    });
    let est = est + tiles;
    if est > cat.budget() / 2 {
        plan.admission = Some(format!(
            "  states not kept: about {} for {rows} rows is over half the reuse budget",
            gate::bytes(est as f64)
        ));
        plan.tiles = None;
        for f in plan.features.iter_mut().filter(|f| cold(f)) {
            f.kind = None;
            f.tiles = None;
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
            _ if fp.tiles.is_some() => None,
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
            if let Some(j) = target.iter().position(|w| same_state(w, &s)) {
                return j;
            }
            s.name = format!("__w{}", target.len());
            target.push(s);
            target.len() - 1
        });
    }
}

/// Whether two swept states are one: the same state kind over the same window, column and
/// filter (a sum and a mean of a column).
fn same_state(a: &FeatureSpec, b: &FeatureSpec) -> bool {
    a.state
        && b.state
        && kinds_equal(a, b)
        && a.column == b.column
        && a.filter == b.filter
        && a.output_type == b.output_type
}
