//! The audit log: one JSON line per write, appended and flushed as it happens — pushes,
//! materializations, ingests, registrations, aliases, training sets and token changes, from
//! every transport and the command line. A line holds the time, the caller's token name
//! (never the token), the transport, the method, its target and the outcome.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// An append-only audit log file.
pub struct Audit {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

/// Where a server's transports record their writes: the log, or nowhere (`Default`).
#[derive(Clone, Default)]
pub struct Auditor(Option<Arc<Audit>>);

impl Auditor {
    /// Record into `log`.
    pub fn to(log: Arc<Audit>) -> Auditor {
        Auditor(Some(log))
    }

    /// Append `e` with `outcome`, when there is a log.
    pub fn record<T>(&self, e: &Entry<'_>, outcome: &Result<T>) {
        if let Some(log) = &self.0 {
            log.record(e, outcome);
        }
    }

    /// Append `e` as failed with a transport's `code` and `message`, when there is a log.
    pub fn record_failure(&self, e: &Entry<'_>, code: &str, message: &str) {
        if let Some(log) = &self.0 {
            log.record_failure(e, code, message);
        }
    }
}

/// One audited write.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The caller's token name (`-` without authentication, `cli` for the command line).
    pub who: &'a str,
    /// `grpc`, `flight`, `http` or `cli`.
    pub transport: &'a str,
    /// The method or command (`quiver.v1.OnlineService/Push`, `tokens create`).
    pub method: &'a str,
    /// What it wrote to: a view, a dataset, a model, a token's name.
    pub target: &'a str,
}

impl Audit {
    /// The log at `path`, created if missing (its folder too).
    pub fn open(path: &Path) -> Result<Audit> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Invalid(format!("audit log {}: {e}", path.display())))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Invalid(format!("audit log {}: {e}", path.display())))?;
        Ok(Audit {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `e` with `outcome`: `Ok` or the error's kind and message. A log that cannot be
    /// written is reported on stderr, never to the caller (their write already happened).
    pub fn record<T>(&self, e: &Entry<'_>, outcome: &Result<T>) {
        match outcome {
            Ok(_) => self.write(e, None),
            Err(err) => self.write(e, Some((&format!("{:?}", err.kind()), &err.to_string()))),
        }
    }

    /// Append `e` as failed with a transport's `code` and `message`.
    pub fn record_failure(&self, e: &Entry<'_>, code: &str, message: &str) {
        self.write(e, Some((code, message)));
    }

    fn write(&self, e: &Entry<'_>, failure: Option<(&str, &str)>) {
        let mut line = serde_json::json!({
            "time": quiver_core::time::format_instant(quiver_core::time::now_micros()),
            "token": e.who,
            "transport": e.transport,
            "method": e.method,
            "target": e.target,
            "outcome": if failure.is_none() { "ok" } else { "error" },
        });
        if let Some((code, message)) = failure {
            line["error"] = serde_json::json!(code);
            line["message"] = serde_json::json!(crate::truncated(message, 512));
        }
        let mut text = line.to_string();
        text.push('\n');
        // One write of the whole line to a file opened for appending: lines from concurrent
        // writers and processes do not interleave.
        let written = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit lock"))
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(err) = written {
            eprintln!("quiver: audit log {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_is_one_json_line_with_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let log = Audit::open(&dir.path().join("a/audit.log")).unwrap();
        let e = Entry {
            who: "svc-a",
            transport: "grpc",
            method: "Push",
            target: "user_purchases",
        };
        log.record(&e, &Ok(()));
        log.record::<()>(&e, &Err(Error::NotFound("view `x`".into())));
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["token"], "svc-a");
        assert_eq!(lines[0]["outcome"], "ok");
        assert_eq!(lines[1]["outcome"], "error");
        assert_eq!(lines[1]["error"], "NotFound");
        assert!(lines[1]["message"].as_str().unwrap().contains("view `x`"));
    }
}
