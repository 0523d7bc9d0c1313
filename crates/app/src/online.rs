//! `materialize` (offline engine → online store) and `get` (online lookups).
//!
//! A view is materialized by computing, through the offline join, every feature of the view for
//! every entity of its source as of the end time, plus the time of the entity's latest event.
//! The online path therefore returns exactly what `quiver join` returns for a spine row
//! (entity, end). Latest-value features are stored without their ttl and the ttl is applied at
//! lookup time, so a value that ages past it reads as EXPIRED. Window aggregates move as time
//! passes: each entity's row also holds the join's values at every later instant where one of
//! its events leaves (or, with an offset, enters) a window, so a lookup at any time after the
//! materialization returns what the join returns for that time (docs/adr/0003).

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::TableProvider;
use quiver_core::store::{
    FeatureRow, KeyValue, OnlineStore, Scalar, encode_entity_key, entity_keys,
};
use quiver_core::{Feature, FeatureKind, FeatureRef, Repo, Result as CoreResult};
use quiver_offline::{Engine, EngineOptions, JoinRequest};

/// Chunk writes of a materialization in flight at once.
const WRITES_IN_FLIGHT: usize = 4;

/// Write one chunk of a view's rows; how many.
async fn write_chunk(
    store: &dyn OnlineStore,
    view: &str,
    chunk: &[(Vec<u8>, Vec<u8>)],
) -> CoreResult<usize> {
    store.write(view, chunk, None).await.map(|_| chunk.len())
}

/// The hidden feature that carries the latest event time of each entity.
const EVENT_TIME: &str = "__event_time";
const AS_OF: &str = "__as_of";

/// Rows written for one view.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// The view materialized.
    pub view: String,
    /// Rows written to the online store.
    pub rows: usize,
    /// Wall-clock seconds it took.
    pub seconds: f64,
}

fn err(msg: String) -> quiver_offline::Error {
    quiver_offline::Error::Core(quiver_core::Error::Request(msg))
}

/// Which entities a materialization writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    /// Every entity with an event at or before the end time.
    #[default]
    All,
    /// Entities with an event at or after this time (and at or before the end).
    Since(i64),
    /// Continue from each view's stored watermark: the entities whose values can have changed
    /// since it — an event after `watermark − reach`, where `reach` is the view's longest
    /// window plus offset (a view without one: after the watermark). A view never
    /// materialized is done in full.
    Incremental,
}

/// How far back from a time an event can still change a view's values at that time.
fn reach(view: &quiver_core::FeatureView) -> i64 {
    view.features
        .iter()
        .filter_map(|f| match f.kind {
            FeatureKind::Aggregate { window, .. } => window.reach(),
            FeatureKind::Latest => None,
        })
        .max()
        .unwrap_or(0)
}

/// Compute every feature of `views` (all views when empty) as of `end` for the entities
/// `range` selects and write them to the online store, moving each view's watermark to `end`.
pub async fn materialize(
    repo: &Repo,
    store: &dyn OnlineStore,
    views: &[String],
    end: i64,
    opts: EngineOptions,
    progress: impl FnMut(&str, usize),
) -> crate::Result<Vec<Materialized>> {
    materialize_range(repo, store, views, Range::All, end, opts, progress).await
}

/// [`materialize`] for the entities `range` selects.
pub async fn materialize_range(
    repo: &Repo,
    store: &dyn OnlineStore,
    views: &[String],
    range: Range,
    end: i64,
    opts: EngineOptions,
    mut progress: impl FnMut(&str, usize),
) -> crate::Result<Vec<Materialized>> {
    let names: Vec<String> = if views.is_empty() {
        repo.views.keys().cloned().collect()
    } else {
        // A view named twice is materialized once.
        let mut seen = std::collections::HashSet::new();
        views.iter().filter(|v| seen.insert(*v)).cloned().collect()
    };
    for v in &names {
        if !repo.views.contains_key(v) {
            let known: Vec<&str> = repo.views.keys().map(|s| s.as_str()).collect();
            return Err(crate::Error::NotFound(format!(
                "unknown feature view `{v}`; views: {}",
                known.join(", ")
            )));
        }
    }
    // Later lookups see the events known at `end`, not events the store was never told of.
    // Rows pushed for the online store alone count as the source's.
    let engine = Engine::new(serving_repo(repo), opts)?;
    let (engine, _) = with_pushed(engine, store, None).await?;
    let engine = engine.known_at(end).await?;
    let mut done = Vec::new();
    for view in names {
        let started = Instant::now();
        let start = match range {
            Range::All => None,
            Range::Since(t) => Some(t),
            Range::Incremental => store
                .watermark(&view)
                .await?
                // Inclusive: a window closed at its start still held an event exactly `reach`
                // before the watermark.
                .map(|w| w.saturating_sub(reach(&repo.views[&view]))),
        };
        let entities = engine.entities_between(&view, start, end).await?;
        quiver_offline::profile::stage(format_args!(
            "materialize {view}: {} entities",
            entities.num_rows()
        ));
        let mut written = 0;
        // Each group of entities is written as it is computed; the watermark moves after the
        // last (a crash before it leaves the old watermark, and the next run redoes the work).
        let mut groups = compute_rows(&engine, &view, entities, end).await?;
        while let Some(mut rows) = groups.next().await? {
            use futures::StreamExt;
            store.order_for_write(&mut rows);
            // A few chunks in flight: a networked store then encodes, sends and applies at
            // once (each chunk stays one atomic write; chunks hold distinct entities).
            let mut chunks = rows.chunks(store.write_chunk().max(1));
            let mut in_flight = futures::stream::FuturesOrdered::new();
            loop {
                while in_flight.len() < WRITES_IN_FLIGHT {
                    let Some(chunk) = chunks.next() else { break };
                    in_flight.push_back(write_chunk(store, &view, chunk));
                }
                let Some(n) = in_flight.next().await else {
                    break;
                };
                written += n?;
                progress(&view, written);
            }
        }
        store.write(&view, &[], Some(end)).await?;
        quiver_offline::profile::stage(format_args!("materialize {view}: {written} rows written"));
        done.push(Materialized {
            view,
            rows: written,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(done)
}

/// The repository as the online path computes it: ttl removed (it is applied when values are
/// read, so the latest event is stored whatever its age) and the latest event time added as a
/// hidden last feature of every view.
fn serving_repo(repo: &Repo) -> Repo {
    let mut inner = repo.clone();
    for v in inner.views.values_mut() {
        v.ttl = None;
        let ts = repo.sources[&v.source].timestamp.clone();
        v.features.push(Feature {
            name: EVENT_TIME.into(),
            kind: FeatureKind::Latest,
            column: ts,
            filter: None,
        });
    }
    inner
}

/// The stored rows (encoded key, encoded [`FeatureRow`]) of `entities` (a batch of the view's
/// key columns) as of `end`, computed by the offline join of a [`serving_repo`] engine: one
/// spine row per entity at `end`, and one at each instant after it where a window of the view
/// changes for that entity ([`step_times`]); the latter become the row's steps.
async fn compute_rows<'a>(
    engine: &'a Engine,
    view: &'a str,
    entities: RecordBatch,
    end: i64,
) -> quiver_offline::Result<RowGroups<'a>> {
    let steps = step_times(engine, view, &entities, end).await?;
    Ok(RowGroups {
        engine,
        view,
        entities,
        steps,
        end,
        from: 0,
    })
}

/// The groups of stored rows [`compute_rows`] computes, one join at a time.
struct RowGroups<'a> {
    engine: &'a Engine,
    view: &'a str,
    entities: RecordBatch,
    steps: Vec<Vec<i64>>,
    end: i64,
    from: usize,
}

impl RowGroups<'_> {
    /// The next group's rows, `None` after the last.
    async fn next(&mut self) -> quiver_offline::Result<Option<Vec<(Vec<u8>, Vec<u8>)>>> {
        let (n, from) = (self.entities.num_rows(), self.from);
        if from >= n {
            return Ok(None);
        }
        // Entities are joined in groups of at most JOIN_ROWS spine rows (an entity's steps
        // stay together), so memory is bounded by a group, not by every entity's steps at
        // once.
        let (mut to, mut size) = (from, 0);
        while to < n && (to == from || size + 1 + self.steps[to].len() <= JOIN_ROWS) {
            size += 1 + self.steps[to].len();
            to += 1;
        }
        self.from = to;
        let group = self.entities.slice(from, to - from);
        compute_group(
            self.engine,
            self.view,
            group,
            &self.steps[from..to],
            self.end,
        )
        .await
        .map(Some)
    }
}

/// Spine rows per join of [`compute_rows`].
const JOIN_ROWS: usize = 2_000_000;

/// [`compute_rows`] for one group of entities and their step times.
async fn compute_group(
    engine: &Engine,
    view: &str,
    entities: RecordBatch,
    steps: &[Vec<i64>],
    end: i64,
) -> quiver_offline::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use datafusion::arrow::array::{ArrayRef, UInt32Array};
    let def = &engine.repo().views[view];
    let n = entities.num_rows();
    let mut at: Vec<u32> = (0..n as u32).collect();
    let mut times = vec![end; n];
    for (i, ts) in steps.iter().enumerate() {
        at.extend(std::iter::repeat_n(i as u32, ts.len()));
        times.extend_from_slice(ts);
    }
    let at = UInt32Array::from(at);
    let mut cols = entities
        .columns()
        .iter()
        .map(|c| datafusion::arrow::compute::take(c, &at, None))
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    let mut fields: Vec<_> = entities
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    cols.push(Arc::new(
        datafusion::arrow::array::TimestampMicrosecondArray::from(times).with_timezone("UTC"),
    ));
    fields.push(datafusion::arrow::datatypes::Field::new(
        AS_OF,
        datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        ),
        false,
    ));
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let spine = RecordBatch::try_new(schema.clone(), cols)?;
    let features: Vec<FeatureRef> = def
        .features
        .iter()
        .map(|f| FeatureRef {
            view: view.to_string(),
            feature: f.name.clone(),
        })
        .collect();
    let req = JoinRequest {
        features,
        spine_timestamp: Some(AS_OF.into()),
        full_names: true,
    };
    let out = engine.join(schema, vec![spine], &req).await?.batch;
    quiver_offline::profile::stage(format_args!("materialize {view}: features computed"));
    let k = def.join_keys.len();
    let key_cols: Vec<&dyn datafusion::arrow::array::Array> =
        (0..k).map(|i| out.column(i).as_ref()).collect();
    let keys = entity_keys(&key_cols, &def.join_keys)?;
    let first = k + 1;
    let m = def.features.len();
    // A feature's values of rows `from..from + len`, the hidden event time last.
    let slice = |from: usize, len: usize| -> quiver_offline::Result<Vec<Vec<Scalar>>> {
        let mut cols = Vec::with_capacity(m);
        for (j, f) in def.features.iter().enumerate() {
            cols.push(Scalar::column(
                out.column(first + j).slice(from, len).as_ref(),
                &f.name,
            )?);
        }
        Ok(cols)
    };
    let base_cols = slice(0, n)?;
    let (values, times) = base_cols.split_at(m - 1);
    let times = &times[0];
    let mut rows = Vec::with_capacity(n);
    let mut next = n;
    for (i, key) in keys.into_iter().take(n).enumerate() {
        let first_step = next;
        next += steps[i].len();
        let Some(key) = key else { continue };
        // converted an entity at a time: all steps' values at once would be many times
        // the joined batch
        let step_cols = match steps[i].len() {
            0 => Vec::new(),
            k => slice(first_step, k)?,
        };
        let event_time = match &times[i] {
            Scalar::Time(t) => Some(*t),
            // a CSV source's times are text, read as the join reads them
            Scalar::Str(s) => quiver_core::time::parse_instant(s),
            _ => None,
        };
        let base: Vec<Scalar> = values.iter().map(|c| c[i].clone()).collect();
        // per feature, only the instants where it really moves are kept
        let mut kept: Vec<Vec<(i64, Scalar)>> = match steps[i].len() {
            0 => Vec::new(),
            _ => vec![Vec::new(); base.len()],
        };
        for (f, list) in kept.iter_mut().enumerate() {
            let mut prev = &base[f];
            for (j, &t) in steps[i].iter().enumerate() {
                let v = &step_cols[f][j];
                if !same_value(prev, v) {
                    list.push((t, v.clone()));
                    prev = v;
                }
            }
        }
        let row = FeatureRow {
            as_of: end,
            event_time,
            values: base,
            steps: kept,
        };
        rows.push((encode_entity_key(&key), row.encode()));
    }
    Ok(rows)
}

/// Equal values, floats compared bit for bit (a window moving from 0.0 to −0.0 is a step).
fn same_value(a: &Scalar, b: &Scalar) -> bool {
    match (a, b) {
        (Scalar::Float(x), Scalar::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// For each entity (row of `entities`), the instants after `end`, ascending, at which one of
/// the view's windows gains or loses one of the entity's events (`Window::presence`): between
/// two of them every window aggregate of the entity is constant. Only events within the
/// view's longest reach of `end` can still move (a lifetime window reaches back its offset).
async fn step_times(
    engine: &Engine,
    view: &str,
    entities: &RecordBatch,
    end: i64,
) -> quiver_offline::Result<Vec<Vec<i64>>> {
    let def = &engine.repo().views[view];
    let n = entities.num_rows();
    let windows: Vec<quiver_core::semantics::Window> = def
        .features
        .iter()
        .filter_map(|f| match f.kind {
            FeatureKind::Aggregate { window, .. } => Some(window),
            FeatureKind::Latest => None,
        })
        .collect();
    let mut out = vec![Vec::new(); n];
    if windows.is_empty() || n == 0 {
        return Ok(out);
    }
    let back = windows
        .iter()
        .map(|w| w.reach().unwrap_or(w.offset.micros()))
        .max()
        .unwrap_or(0);
    let events = engine
        .events_between(view, end.saturating_sub(back).saturating_sub(1), end)
        .await?;
    let k = def.join_keys.len();
    let index: std::collections::HashMap<Vec<u8>, usize> = {
        let cols: Vec<&dyn datafusion::arrow::array::Array> =
            entities.columns().iter().map(|c| c.as_ref()).collect();
        entity_keys(&cols, &def.join_keys)?
            .into_iter()
            .enumerate()
            .filter_map(|(i, key)| key.map(|key| (encode_entity_key(&key), i)))
            .collect()
    };
    let cols: Vec<&dyn datafusion::arrow::array::Array> =
        events.columns()[..k].iter().map(|c| c.as_ref()).collect();
    let keys = entity_keys(&cols, &def.join_keys)?;
    let t = events
        .column(k)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .ok_or_else(|| err("event times are not microseconds".into()))?;
    for (r, key) in keys.iter().enumerate() {
        let (Some(key), true) = (key, datafusion::arrow::array::Array::is_valid(t, r)) else {
            continue;
        };
        let Some(&i) = index.get(&encode_entity_key(key)) else {
            continue;
        };
        for w in &windows {
            let (enter, leave) = w.presence(t.value(r));
            out[i].extend(std::iter::once(enter).chain(leave).filter(|&s| s > end));
        }
    }
    for s in &mut out {
        s.sort_unstable();
        s.dedup();
    }
    Ok(out)
}

/// A pushed row must name its entity in every view of the source and have an event time:
/// a row without them would be stored and counted, yet no lookup could ever see it.
fn refuse_null_keys(
    repo: &Repo,
    source: &str,
    view: &str,
    rows: &RecordBatch,
) -> quiver_offline::Result<()> {
    let src = &repo.sources[source];
    let mut columns: Vec<&str> = vec![src.timestamp.as_str()];
    for v in repo.views.values().filter(|v| v.source == source) {
        columns.extend(v.join_keys.iter().map(|k| k.as_str()));
    }
    for c in columns {
        let a = rows.column(rows.schema().index_of(c)?);
        if a.null_count() > 0
            && let Some(i) = (0..a.len()).find(|&i| a.is_null(i))
        {
            return Err(quiver_offline::Error::Core(quiver_core::Error::Request(
                format!(
                    "push to `{view}`: row {i}: `{c}` is null; every pushed row needs its join keys and event time"
                ),
            )));
        }
    }
    Ok(())
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Rows pushed.
    pub rows: usize,
    /// Entities written for the view pushed to.
    pub entities: usize,
}

/// Push rows of a view's source (every source column, in any order; types of the same
/// class are cast) to the online store: in every view of that source, each pushed entity's
/// values are computed again as of `now` by the offline join over the source, the rows pushed
/// before for the online store alone, and these rows — the same rules as any other path.
/// Unless `appended` (the rows were appended to the source's table already), the rows are
/// kept with the source's earlier online-only pushes, in the same write as the values, so
/// later pushes and materializations count them too (docs/adr/0003).
/// `Pushed::entities` counts the entities written for `view`.
pub async fn push(
    repo: &Repo,
    store: &dyn OnlineStore,
    view: &str,
    rows: RecordBatch,
    appended: bool,
    now: i64,
    opts: EngineOptions,
) -> crate::Result<Pushed> {
    quiver_offline::objects::configure(&repo.storage);
    let def = repo.views.get(view).ok_or_else(|| {
        quiver_offline::Error::Core(quiver_core::Error::Request(format!(
            "unknown feature view `{view}`"
        )))
    })?;
    // Another process sharing the store may store a push to the same source while this one
    // is computed; the store then refuses this one (its count moved) and it is computed
    // again over the new state, a bounded number of times.
    let mut attempt = 1;
    loop {
        match push_once(repo, store, view, &def.source, &rows, appended, now, &opts).await {
            Err(e) if is_conflict(&e) && attempt < PUSH_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

/// Times a push is computed before a conflict is reported.
const PUSH_ATTEMPTS: usize = 20;

fn is_conflict(e: &crate::Error) -> bool {
    matches!(
        e,
        crate::Error::Core(quiver_core::Error::Conflict(_))
            | crate::Error::Offline(quiver_offline::Error::Core(quiver_core::Error::Conflict(_)))
    )
}

#[allow(clippy::too_many_arguments)]
async fn push_once(
    repo: &Repo,
    store: &dyn OnlineStore,
    view: &str,
    source: &str,
    rows: &RecordBatch,
    appended: bool,
    now: i64,
    opts: &EngineOptions,
) -> crate::Result<Pushed> {
    let ctx = quiver_offline::session(opts)?;
    let table =
        quiver_offline::source::source_table(&ctx, &repo.offline_store, &repo.sources[source])
            .await?;
    let rows = quiver_offline::delta::conform(&table.schema(), rows, &format!("push to `{view}`"))?;
    refuse_null_keys(repo, source, view, &rows)?;
    let n = rows.num_rows();
    let new = (!appended).then(|| rows.clone());
    let engine = Engine::new(serving_repo(repo), opts.clone())?;
    let (engine, after) = with_pushed(engine, store, Some((source, table, new.as_ref()))).await?;
    let engine = engine.known_at(now).await?;
    // Every view of the source takes the rows (they are the source's), each for the entities
    // the rows name under its own keys.
    let mut writes = Vec::new();
    let mut entities_written = 0;
    for (name, v) in repo.views.iter().filter(|(_, v)| v.source == source) {
        let keys: Vec<usize> = v
            .join_keys
            .iter()
            .map(|k| rows.schema().index_of(k))
            .collect::<Result<_, _>>()?;
        let key_batch = rows.project(&keys)?;
        let mem =
            datafusion::datasource::MemTable::try_new(key_batch.schema(), vec![vec![key_batch]])?;
        let distinct = ctx.read_table(Arc::new(mem))?.distinct()?;
        let schema = Arc::new(distinct.schema().as_arrow().clone());
        let entities =
            datafusion::arrow::compute::concat_batches(&schema, &distinct.collect().await?)?;
        let mut out = Vec::new();
        let mut groups = compute_rows(&engine, name, entities, now).await?;
        while let Some(rows) = groups.next().await? {
            out.extend(rows);
        }
        if name == view {
            entities_written = out.len();
        }
        writes.push((name.clone(), out));
    }
    let logged = new.as_ref().map(encode_batch).transpose()?;
    store
        .push(source, logged.as_deref(), &writes, after)
        .await?;
    Ok(Pushed {
        rows: n,
        entities: entities_written,
    })
}

/// The engine with the rows pushed to each source for the online store alone
/// ([`OnlineStore::pushed`]) read after the source's own rows, in the order they came. A push
/// being computed gives its source, the source's table it has read already, and its rows
/// unless they were appended to that table.
async fn with_pushed(
    engine: Engine,
    store: &dyn OnlineStore,
    pushing: Option<(&str, Arc<dyn TableProvider>, Option<&RecordBatch>)>,
) -> quiver_offline::Result<(Engine, u64)> {
    let repo = engine.repo().clone();
    let sources: std::collections::BTreeSet<&str> =
        repo.views.values().map(|v| v.source.as_str()).collect();
    let mut engine = engine;
    let mut after = 0;
    for name in sources {
        let src = &repo.sources[name];
        let log = store.pushed(name).await?;
        let (read, new) = match &pushing {
            Some((s, table, new)) if *s == name => {
                after = log.pushes;
                (Some(table.clone()), *new)
            }
            _ => (None, None),
        };
        let logged = log.batches;
        if logged.is_empty() && new.is_none() {
            continue;
        }
        let ctx = engine.context().clone();
        let table = match read {
            Some(t) => t,
            None => quiver_offline::source::source_table(&ctx, &repo.offline_store, src).await?,
        };
        let schema = table.schema();
        let mut batches = Vec::with_capacity(logged.len() + 1);
        for (i, bytes) in logged.iter().enumerate() {
            let what = format!("online store: push {} of source `{name}`", i + 1);
            let batch = decode_batch(bytes).map_err(|e| err(format!("{what}: {e}")))?;
            batches.push(quiver_offline::delta::conform(&schema, &batch, &what)?);
        }
        batches.extend(new.cloned());
        // One batch: a partition's rows keep their order, so ties follow arrival.
        let pushed = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        let mem = datafusion::datasource::MemTable::try_new(schema, vec![vec![pushed]])?;
        let union = ctx
            .read_table(table)?
            .union(ctx.read_table(Arc::new(mem))?)?;
        engine = engine.with_source_table(name, union.into_view());
    }
    Ok((engine, after))
}

/// A pushed batch as the online store keeps it (Arrow IPC stream).
fn encode_batch(batch: &RecordBatch) -> quiver_offline::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn decode_batch(bytes: &[u8]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    datafusion::arrow::compute::concat_batches(&schema, &batches)
}

/// Per-value status of an online lookup, as Feast reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A value is stored (for a latest-value feature, one within the ttl).
    Present,
    /// Nothing stored for the entity, or only events after the lookup time.
    NotFound,
    /// A latest-value feature whose latest event is older than the view's ttl at lookup time.
    Expired,
}

impl Status {
    /// The status as Feast spells it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Present => "PRESENT",
            Status::NotFound => "NOT_FOUND",
            Status::Expired => "EXPIRED",
        }
    }
}

/// One feature of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The feature's value; null unless present (a count of an unknown entity is 0).
    pub value: Scalar,
    /// Whether the value was found, missing or expired.
    pub status: Status,
    /// The latest event time of the entity in the view, when there is one.
    pub event_time: Option<i64>,
    /// When the view was materialized for this entity.
    pub as_of: Option<i64>,
}

/// An entity given as `key=value` pairs; integers parse as integers, anything else is a string.
pub fn parse_entity(text: &str) -> crate::Result<Vec<(String, KeyValue)>> {
    text.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                quiver_core::Error::Request(format!(
                    "--entity {text:?}: write key=value[,key=value]"
                ))
            })?;
            let v = v.trim();
            let kv = v
                .parse::<i64>()
                .map(KeyValue::Int)
                .unwrap_or_else(|_| KeyValue::Str(v.to_string()));
            Ok((k.trim().to_string(), kv))
        })
        .collect()
}

/// Look features up for entities at time `at` (microseconds): one point read per (view,
/// entity). Returns, per entity, one value per requested feature in request order.
pub async fn get(
    repo: &Repo,
    store: &dyn OnlineStore,
    refs: &[FeatureRef],
    entities: &[Vec<(String, KeyValue)>],
    at: i64,
) -> crate::Result<Vec<Vec<Value>>> {
    let mut out = vec![Vec::with_capacity(refs.len()); entities.len()];
    let mut views: Vec<&str> = Vec::new();
    for r in refs {
        if !views.contains(&r.view.as_str()) {
            views.push(&r.view);
        }
    }
    // Every view's keys first (a bad entity fails before any read), then the views' reads at
    // once: a shared store answers each over the network, and they need not wait in turn.
    let mut keyed = Vec::with_capacity(views.len());
    for view in views {
        let def = repo
            .views
            .get(view)
            .ok_or_else(|| quiver_core::Error::Request(format!("unknown feature view `{view}`")))?;
        let keys = entities
            .iter()
            .map(|e| {
                let vals = def
                    .join_keys
                    .iter()
                    .map(|k| {
                        e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).ok_or_else(|| {
                            quiver_core::Error::Request(format!(
                                "entity {} has no `{k}`, a join key of `{}` (needed by view `{view}`)",
                                e.iter().map(|(n, v)| format!("{n}={v:?}")).collect::<Vec<_>>().join(","),
                                def.entity
                            ))
                        })
                    })
                    .collect::<CoreResult<Vec<_>>>()?;
                Ok(encode_entity_key(&vals))
            })
            .collect::<CoreResult<Vec<_>>>()?;
        keyed.push((view, keys));
    }
    let got =
        futures::future::try_join_all(keyed.iter().map(|(view, keys)| store.get_many(view, keys)))
            .await?;
    let mut rows: std::collections::HashMap<&str, Vec<Option<FeatureRow>>> = Default::default();
    for ((view, _), got) in keyed.iter().zip(got) {
        let decoded = got
            .into_iter()
            .map(|b| b.map(|b| FeatureRow::decode_at(&b, at)).transpose())
            .collect::<CoreResult<Vec<_>>>()?;
        rows.insert(view, decoded);
    }
    for r in refs {
        let (def, feature) = repo
            .feature(r)
            .ok_or_else(|| quiver_core::Error::Request(format!("unknown feature `{r}`")))?;
        let idx = def
            .features
            .iter()
            .position(|f| f.name == feature.name)
            .unwrap_or(0);
        for (e, row) in rows[r.view.as_str()].iter().enumerate() {
            let v = match row {
                // An entity without events has empty windows: counts are 0, as offline.
                None => {
                    let value = match feature.kind {
                        FeatureKind::Aggregate { agg, .. } if agg.empty_is_zero() => Scalar::Int(0),
                        _ => Scalar::Null,
                    };
                    Value {
                        value,
                        status: Status::NotFound,
                        event_time: None,
                        as_of: None,
                    }
                }
                Some(row) => {
                    let value = row.values.get(idx).cloned().ok_or_else(|| {
                        quiver_core::Error::Request(format!(
                            "the stored values of view `{}` predate its current definition; run `quiver materialize {}`",
                            r.view, r.view
                        ))
                    })?;
                    let status = match feature.kind {
                        FeatureKind::Aggregate { .. } => Status::Present,
                        FeatureKind::Latest => match (row.event_time, def.ttl) {
                            // nothing yet, or only events after the lookup time
                            (None, _) => Status::NotFound,
                            (Some(t), _) if t > at => Status::NotFound,
                            (Some(t), Some(ttl)) if t < at.saturating_sub(ttl.micros()) => {
                                Status::Expired
                            }
                            _ => Status::Present,
                        },
                    };
                    let value = if status == Status::Present {
                        value
                    } else {
                        Scalar::Null
                    };
                    Value {
                        value,
                        status,
                        event_time: row.event_time,
                        as_of: Some(row.as_of),
                    }
                }
            };
            out[e].push(v);
        }
    }
    Ok(out)
}
