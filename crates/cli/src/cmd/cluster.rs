//! `scheduler` and `executor`: the processes of a Ballista cluster that runs Quiver's joins
//! (`quiver join --cluster df://HOST:PORT`). Each prints the address it listens on as its
//! first line, then serves until it is stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use quiver_cluster::ExecutorOptions;

/// Start a Ballista scheduler with Quiver's plan codec.
#[derive(clap::Args)]
pub struct Scheduler {
    /// Address to listen on; port 0 picks a free one (printed).
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: SocketAddr,
}

impl Scheduler {
    /// Serve until stopped.
    pub async fn run(self, _repo: &Path) -> Result<ExitCode> {
        let listener = tokio::net::TcpListener::bind(self.bind)
            .await
            .with_context(|| format!("scheduler: cannot listen on {}", self.bind))?;
        let handle = quiver_cluster::scheduler(listener).await?;
        println!("scheduler listening on df://{}", handle.addr);
        tokio::select! {
            r = handle.wait() => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Start a Ballista executor with Quiver's plan codec: it registers with the scheduler, runs
/// the tasks it is given and serves their shuffle output over Arrow Flight. It reads
/// `s3://` with its own credentials (the standard AWS variables or credentials file) and the
/// endpoint each job's repository names.
#[derive(clap::Args)]
pub struct Executor {
    /// The scheduler, df://HOST:PORT or HOST:PORT.
    #[arg(long)]
    scheduler: String,
    /// Address of its Flight service; port 0 picks a free one (printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Host name the other processes reach it by (default: the bound address).
    #[arg(long)]
    external_host: Option<String>,
    /// Tasks run at once (default: the number of cores).
    #[arg(long)]
    concurrent_tasks: Option<usize>,
    /// Folder for shuffle files (default: a temporary folder removed at exit).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

impl Executor {
    /// Serve until stopped.
    pub async fn run(self, _repo: &Path) -> Result<ExitCode> {
        let scheduler = self
            .scheduler
            .strip_prefix("df://")
            .unwrap_or(&self.scheduler)
            .to_string();
        let mut opts = ExecutorOptions::new(scheduler);
        opts.bind = self.bind;
        opts.external_host = self.external_host;
        opts.work_dir = self.work_dir;
        opts.connect_timeout = Duration::from_secs(30);
        if let Some(n) = self.concurrent_tasks {
            opts.concurrent_tasks = n.max(1);
        }
        let handle = quiver_cluster::executor(opts).await?;
        println!("executor {} listening on {}", handle.id, handle.addr);
        tokio::select! {
            r = handle.wait() => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    }
}
