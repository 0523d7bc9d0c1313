//! Building a training set: the one implementation behind `quiver join` and the gRPC
//! `TrainingService`. A spine given as a file name is joined against the sources as they are
//! (the engine's reuse catalog applies); a recorded spine dataset, pinned source versions, time
//! travel or registration go through the [`Catalog`], which records what was read.

use std::path::{Path, PathBuf};

use quiver_core::{FeatureRef, Repo};
use quiver_offline::{Engine, EngineOptions, JoinRequest, source};

use crate::catalog::{Catalog, Pins, Rows};
use crate::{Error, Result};
use quiver_offline::table::Columns;

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A Parquet or CSV file, or a recorded dataset `NAME[@VERSION]`.
    pub spine: String,
    /// The features to join onto the spine.
    pub features: Vec<FeatureRef>,
    /// The spine's time column; default `event_timestamp`, else its only timestamp column.
    pub spine_timestamp: Option<String>,
    /// Name every feature column `view__feature`.
    pub full_names: bool,
    /// Output file, Parquet or CSV by extension; written only when the join succeeds.
    pub out: Option<PathBuf>,
    /// Whether an existing output file is replaced (else the build fails, writing nothing).
    pub overwrite: bool,
    /// Record the result as the next version of this dataset, with its lineage.
    pub register: Option<String>,
    /// SOURCE@VERSION pins.
    pub pins: Vec<String>,
    /// Time travel: read every source as it was at this instant (microseconds).
    pub as_of: Option<i64>,
    /// Run the join on this Ballista cluster (`df://HOST:PORT`) instead of in this process;
    /// default `engine.cluster` of `quiver.yaml`.
    pub cluster: Option<String>,
}

/// What was built.
#[derive(Debug, Clone, Default)]
pub struct Built {
    /// Rows of the training set.
    pub rows: usize,
    /// Columns of the training set: the spine's and the features'.
    pub columns: usize,
    /// The plan, as `--explain` prints it.
    pub plan: Vec<String>,
    /// `NAME@VERSION (hash …)` when registered.
    pub registered: Option<String>,
}

/// Whether a spine argument names a file or folder (else it is a dataset `NAME[@VER]`).
pub fn looks_like_path(s: &str) -> bool {
    let p = Path::new(s);
    p.exists()
        || s.contains(['/', '\\'])
        || matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref(),
            Some("csv" | "parquet" | "pq")
        )
}

/// Check a request before any row is read: features requested, an output or a registration,
/// an output that is a file in an existing folder, a spine file that exists.
pub fn check(req: &Request) -> Result<()> {
    if req.features.is_empty() {
        return Err(Error::Invalid("no features requested".into()));
    }
    if req.out.is_none() && req.register.is_none() {
        return Err(Error::Invalid(
            "give an output file, a dataset name to register, or both".into(),
        ));
    }
    // An object URL has no folder to check: the upload says what failed, and nothing
    // appears unless it completes.
    if let Some(out) = req
        .out
        .as_ref()
        .filter(|o| !quiver_offline::objects::is_remote(o))
    {
        if out.is_dir() {
            return Err(Error::Invalid(format!(
                "out {} is a folder; give a .parquet or .csv file",
                out.display()
            )));
        }
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(d) = dir
            && !d.is_dir()
        {
            return Err(Error::Invalid(format!(
                "out {}: folder {} does not exist",
                out.display(),
                d.display()
            )));
        }
    }
    check_spine(req)
}

fn check_spine(req: &Request) -> Result<()> {
    if req.spine.is_empty() {
        return Err(Error::Invalid("spine: empty".into()));
    }
    // An object URL is checked when it is read (the error names the URL and what failed).
    let remote = quiver_offline::objects::is_remote(Path::new(&req.spine));
    if looks_like_path(&req.spine) && !remote && !Path::new(&req.spine).exists() {
        return Err(Error::NotFound(format!(
            "spine: {}: no such file or folder",
            req.spine
        )));
    }
    Ok(())
}

/// The plan [`build`] would follow for `req`, without running it (`quiver explain`): per view
/// the reuse choices, the cost gate, the pruning and the physical plan — against the pinned or
/// time-travelled versions and a recorded spine too. Reads the spine and the sources' footers,
/// no event; stores, logs and registers nothing (`out` and `register` are not used). Returns
/// the plan and the shape (rows, columns) the training set would have.
pub async fn explain(
    repo: Repo,
    mut opts: EngineOptions,
    req: &Request,
) -> Result<(Vec<String>, usize, usize)> {
    if req.features.is_empty() {
        return Err(Error::Invalid("no features requested".into()));
    }
    check_spine(req)?;
    opts.plan_only = true;
    let opts = on_cluster(&repo, opts, req)?;
    let req = Request {
        register: None,
        ..req.clone()
    };
    if recorded(&req) {
        // Opening the catalog would create an empty registry: explain writes nothing.
        if !repo.registry.exists() {
            return Err(Error::NotFound(format!(
                "no version is recorded yet (no registry at {})",
                repo.registry.display()
            )));
        }
        let (batch, plan, _) = versioned(repo, opts, &req, None).await?;
        return Ok((plan, batch.num_rows(), batch.num_columns()));
    }
    let engine = Engine::new(repo, opts)?;
    let o = engine
        .join_file_table(Path::new(&req.spine), &join_request(&req))
        .await?;
    Ok((o.explain, o.batch.num_rows(), o.batch.num_columns()))
}

/// `opts` with the cluster that runs the join, if any: the request's, else `engine.cluster`
/// of `quiver.yaml`. Planning, reuse, registration and lineage stay here; only each view's
/// physical plan runs there.
fn on_cluster(repo: &Repo, mut opts: EngineOptions, req: &Request) -> Result<EngineOptions> {
    if let Some(url) = req.cluster.as_ref().or(repo.cluster.as_ref()) {
        let cluster = quiver_cluster::Cluster::new(url, repo.staging.clone(), repo.storage.clone())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        opts.runner = Some(std::sync::Arc::new(cluster));
    }
    Ok(opts)
}

fn join_request(req: &Request) -> JoinRequest {
    JoinRequest {
        features: req.features.clone(),
        spine_timestamp: req.spine_timestamp.clone(),
        full_names: req.full_names,
    }
}

/// Whether `req` goes through the [`Catalog`] (and so the registry): a recorded spine,
/// pinned versions, time travel or registration.
pub fn recorded(req: &Request) -> bool {
    req.register.is_some()
        || !req.pins.is_empty()
        || req.as_of.is_some()
        || !looks_like_path(&req.spine)
}

/// Build the training set of `req`, reporting progress through `progress`.
pub async fn build(
    repo: Repo,
    opts: EngineOptions,
    req: &Request,
    progress: impl Fn(String),
) -> Result<Built> {
    check(req)?;
    let opts = on_cluster(&repo, opts, req)?;
    progress(format!(
        "joining {} feature(s) onto {}",
        req.features.len(),
        req.spine
    ));
    if recorded(req) {
        let (batch, plan, registered) = versioned(repo, opts, req, None).await?;
        if let Some(out) = &req.out {
            progress(format!("writing {}", out.display()));
            write_out(req, out, &batch)?;
        }
        return Ok(Built {
            rows: batch.num_rows(),
            columns: batch.num_columns(),
            plan,
            registered,
        });
    }
    // The engine lives until the output is written: it stores the join's feature states
    // behind it, and dropping it waits for them.
    let engine = Engine::new(repo, opts)?;
    // The features stay in the sweep's pieces and are gathered as they are written.
    let o = engine
        .join_file_table(Path::new(&req.spine), &join_request(req))
        .await?;
    let read = reads(&o);
    let mut plan = o.explain;
    plan.push(read);
    if let Some(out) = &req.out {
        progress(format!("writing {}", out.display()));
        let started = std::time::Instant::now();
        let written = write_out(req, out, &o.batch);
        quiver_offline::profile::stage(format_args!(
            "written in {:.3} s",
            started.elapsed().as_secs_f64()
        ));
        written?;
    }
    // The states stored behind the join may take at most this long past the output.
    if !engine.settle_pending(STORE_BOUND) {
        plan.push(format!(
            "feature states not stored: storing them took longer than {:.1} s past the output",
            STORE_BOUND.as_secs_f64()
        ));
    }
    Ok(Built {
        rows: o.batch.num_rows(),
        columns: o.batch.num_columns(),
        plan,
        registered: None,
    })
}

/// A spine a client sent with its request (over Arrow Flight) rather than named.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Its rows, as recorded ([`crate::catalog::recordable`]).
    pub rows: Rows,
    /// The spine dataset it is recorded as when the training set is registered.
    pub name: String,
    /// Who sent it, recorded with it: the transport and the client's address.
    pub from: String,
}

/// A training set built for a client that streams it (Arrow Flight): its columns, gathered
/// slice by slice as they are sent, and what was done to build it.
pub struct Streamed {
    /// The training set: the spine's columns, then the features.
    pub table: Box<dyn Columns + Send>,
    /// Its shape, plan and registration.
    pub built: Built,
}

/// Whether a streamed build goes through the [`Catalog`]: as [`recorded`], but an uploaded
/// spine is not a dataset to resolve.
pub fn streamed_recorded(req: &Request, uploaded: bool) -> bool {
    req.register.is_some()
        || !req.pins.is_empty()
        || req.as_of.is_some()
        || (!uploaded && !looks_like_path(&req.spine))
}

/// Build the training set of `req` in memory for a client to stream, on `uploaded` when the
/// client sent its spine (else on `req.spine`). Writes no file (`out` is not used); registers
/// when asked, as [`build`] does.
pub async fn build_streamed(
    repo: Repo,
    opts: EngineOptions,
    req: &Request,
    uploaded: Option<Uploaded>,
) -> Result<Streamed> {
    if req.features.is_empty() {
        return Err(Error::Invalid("features: none requested".into()));
    }
    if uploaded.is_none() {
        check_spine(req)?;
    }
    let opts = on_cluster(&repo, opts, req)?;
    if streamed_recorded(req, uploaded.is_some()) {
        let (batch, plan, registered) = versioned(repo, opts, req, uploaded.as_ref()).await?;
        return Ok(Streamed {
            built: Built {
                rows: batch.num_rows(),
                columns: batch.num_columns(),
                plan,
                registered,
            },
            table: Box::new(batch),
        });
    }
    let engine = Engine::new(repo, opts)?;
    let o = match uploaded {
        Some(u) => {
            engine
                .join_table(u.rows.schema, u.rows.batches, &join_request(req))
                .await?
        }
        None => {
            engine
                .join_file_table(Path::new(&req.spine), &join_request(req))
                .await?
        }
    };
    // Dropping the engine waits for the feature states it stores behind the join: off the
    // async threads, while the client reads.
    tokio::task::spawn_blocking(move || drop(engine));
    let read = reads(&o);
    let mut plan = o.explain;
    plan.push(read);
    Ok(Streamed {
        built: Built {
            rows: o.batch.num_rows(),
            columns: o.batch.num_columns(),
            plan,
            registered: None,
        },
        table: Box::new(o.batch),
    })
}

/// The plan's last line: what the join read and reused.
fn reads<T>(o: &quiver_offline::JoinOutput<T>) -> String {
    format!(
        "read {} from sources and {} of stored states; {} feature(s) reused",
        quiver_offline::gate::bytes(o.bytes_scanned as f64),
        quiver_offline::gate::bytes(o.stored_bytes_read as f64),
        o.reused
    )
}

/// How long a join waits, after its output is written, for its feature states to be stored.
const STORE_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

fn write_out<C: quiver_offline::table::Columns + ?Sized>(
    req: &Request,
    out: &Path,
    data: &C,
) -> Result<()> {
    Ok(match req.overwrite {
        true => source::write_table(out, data),
        false => source::write_new_table(out, data),
    }?)
}

/// A join against recorded source versions (pinned, as of a time, or the latest), optionally
/// registered as a training-set version with its lineage.
async fn versioned(
    repo: Repo,
    opts: EngineOptions,
    req: &Request,
    uploaded: Option<&Uploaded>,
) -> Result<(
    datafusion::arrow::array::RecordBatch,
    Vec<String>,
    Option<String>,
)> {
    let cat = Catalog::open(repo, opts)?;
    // All of the join's records (source versions, definitions, spine, training set) or none.
    cat.registry.begin();
    let done = versioned_in(&cat, req, uploaded).await;
    match done {
        Ok(_) => cat.registry.commit(),
        Err(_) => cat.registry.rollback()?,
    }
    done
}

async fn versioned_in(
    cat: &Catalog,
    req: &Request,
    uploaded: Option<&Uploaded>,
) -> Result<(
    datafusion::arrow::array::RecordBatch,
    Vec<String>,
    Option<String>,
)> {
    let mut p = Pins::default();
    for pin in &req.pins {
        let (name, v) = quiver_registry::parse_ref(pin)?;
        let Some(v) = v else {
            return Err(Error::Invalid(format!(
                "source version {pin:?}: write SOURCE@VERSION"
            )));
        };
        p.versions.insert(name, v);
    }
    p.as_of = req.as_of;
    let spine = req.spine.as_str();
    // A spine file is recorded (when the training set is registered) only after the join
    // succeeded: a failed operation writes nothing to the registry.
    let (spine_table, spine_v) = match (uploaded, looks_like_path(spine)) {
        (Some(u), _) => (u.rows.clone(), None),
        (None, true) => (cat.read_file(Path::new(spine)).await?, None),
        (None, false) => {
            let v = cat.spine_version(spine).await?;
            (cat.read(&v).await?, Some(v))
        }
    };
    let (batch, mut record, engine_plan) = cat
        .join_explained(
            &spine_table,
            &req.features,
            req.spine_timestamp.clone(),
            req.full_names,
            &p,
        )
        .await?;
    let mut plan = vec![format!(
        "sources: {}",
        record
            .sources
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    plan.extend(engine_plan);
    let registered = match &req.register {
        Some(name) => {
            let sv = match (spine_v, uploaded) {
                (Some(v), _) => v,
                (None, Some(u)) => {
                    cat.write_dataset(
                        &u.name,
                        quiver_registry::DatasetKind::Spine,
                        &spine_table,
                        quiver_registry::Operation::Upload {
                            from: u.from.clone(),
                        },
                    )
                    .await?
                }
                (None, None) => {
                    let file = Path::new(spine);
                    cat.add_table(file, &crate::catalog::spine_name(file), &spine_table)
                        .await?
                }
            };
            record.spine = sv.reference();
            let t = Rows {
                schema: batch.schema(),
                batches: vec![batch.clone()],
            };
            let v = cat
                .write_dataset(
                    name,
                    quiver_registry::DatasetKind::Training,
                    &t,
                    quiver_registry::Operation::Join(record),
                )
                .await?;
            Some(format!("{} (hash {})", v.reference(), v.hash))
        }
        None => None,
    };
    Ok((batch, plan, registered))
}
