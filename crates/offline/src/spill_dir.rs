//! Where a process spills: one folder per process under `<temp>/quiver-spill/`, holding a
//! lock file the process keeps locked while it lives. DataFusion's own spill files (its
//! `DiskManager`) and the join's bucket files go there. A process killed with kill -9 leaves
//! its folder behind; the next process to spill finds every folder whose lock is free and
//! removes it, so nothing accumulates in the temp folder.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{Error, Result};

/// This process's spill folder and the lock file it holds (the handle keeps the lock).
static DIR: OnceLock<std::result::Result<(PathBuf, std::fs::File), String>> = OnceLock::new();

/// The parent of every process's spill folder.
pub fn root() -> PathBuf {
    std::env::temp_dir().join("quiver-spill")
}

/// This process's spill folder, made (and the leftovers of dead processes removed) on first
/// use.
pub fn dir() -> Result<&'static Path> {
    DIR.get_or_init(|| make(&root()).map_err(|e| e.to_string()))
        .as_ref()
        .map(|(p, _)| p.as_path())
        .map_err(|e| Error::Internal(format!("spill folder under {}: {e}", root().display())))
}

fn make(root: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(root)?;
    remove_abandoned(root);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = root.join(format!("{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir(&dir)?;
    let lock = std::fs::File::create(dir.join("lock"))?;
    lock.lock()?;
    Ok((dir, lock))
}

/// Remove the folders of processes that no longer run: their lock files are not locked.
/// A folder whose lock cannot be opened (another user's, or half made) is left alone.
pub fn remove_abandoned(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(lock) = std::fs::File::open(dir.join("lock")) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18.3: a killed run's spill folder is removed by the next run; a live one's is
    /// kept.
    #[test]
    fn abandoned_folders_are_removed_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let (live, _held) = make(root.path()).unwrap();
        std::fs::write(live.join("spill.arrow"), b"x").unwrap();
        // A folder whose process died: its lock file exists but nobody holds it.
        let dead = root.path().join("999999-0000abcd");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("lock"), b"").unwrap();
        std::fs::create_dir(dead.join(".tmpXYZ")).unwrap();
        std::fs::write(dead.join(".tmpXYZ/part"), vec![0u8; 1024]).unwrap();
        let (_other, _held2) = make(root.path()).unwrap();
        assert!(!dead.exists(), "the abandoned folder was kept");
        assert!(
            live.join("spill.arrow").exists(),
            "a live folder was removed"
        );
    }
}
