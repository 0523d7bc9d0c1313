//! Where a request that arrives over the network may read and write files: inside the
//! repository's folder and the folders the operator named (`quiver serve --data-root DIR`),
//! nowhere else, and never over an existing file unless the request says so. The command
//! line, run by the user on their own machine, does not go through this.
//!
//! Every check is made before any file is opened: a path is first judged as written
//! (`..` resolved lexically, relative to the repository), so nothing outside the roots is
//! even looked at, then again with symbolic links resolved, so a link inside a root cannot
//! lead out of it.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// The folders requests may use.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// The repository's folder, absolute and canonical: relative paths start here.
    base: PathBuf,
    /// Canonical roots, the repository's folder first.
    roots: Vec<PathBuf>,
}

impl Confinement {
    /// The repository's folder and `extra` roots (each must be an existing folder).
    pub fn new(repo_dir: &Path, extra: &[PathBuf]) -> Result<Self> {
        let canon = |p: &Path, what: &str| {
            std::fs::canonicalize(p)
                .map_err(|e| Error::Invalid(format!("{what} {}: {e}", p.display())))
        };
        let base = canon(repo_dir, "repository")?;
        let mut roots = vec![base.clone()];
        for r in extra {
            let c = canon(r, "--data-root")?;
            if !c.is_dir() {
                return Err(Error::Invalid(format!(
                    "--data-root {}: not a folder",
                    r.display()
                )));
            }
            roots.push(c);
        }
        Ok(Confinement { base, roots })
    }

    /// The roots, for messages.
    fn rule(&self) -> String {
        let names: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        format!(
            "requests may only use files inside the repository and the server's data roots (quiver serve --data-root): {}",
            names.join(", ")
        )
    }

    fn inside(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    /// `p` made absolute against the repository, with `.` and `..` resolved as written.
    fn lexical(&self, field: &str, p: &str) -> Result<PathBuf> {
        if p.is_empty() {
            return Err(Error::Invalid(format!("{field}: empty path")));
        }
        if p.contains('\0') {
            return Err(Error::Invalid(format!(
                "{field}: a path cannot contain a NUL byte"
            )));
        }
        let mut out = PathBuf::new();
        for c in self.base.join(p).components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        Ok(out)
    }

    fn denied(&self, field: &str, p: &str) -> Error {
        Error::PermissionDenied(format!(
            "{field}: {} is outside the allowed folders; {}",
            shown(p),
            self.rule()
        ))
    }

    /// A file or folder a request reads, as an absolute canonical path.
    pub fn read(&self, field: &str, p: &str) -> Result<PathBuf> {
        let lexical = self.lexical(field, p)?;
        if !self.inside(&lexical) {
            return Err(self.denied(field, p));
        }
        let real = std::fs::canonicalize(&lexical).map_err(|_| {
            Error::NotFound(format!("{field}: {}: no such file or folder", shown(p)))
        })?;
        if !self.inside(&real) {
            return Err(self.denied(field, p));
        }
        Ok(real)
    }

    /// A file a request writes, as an absolute path in a canonical folder. An existing file
    /// is refused unless `overwrite`; a folder or a symbolic link always is.
    pub fn write(&self, field: &str, p: &str, overwrite: bool) -> Result<PathBuf> {
        let lexical = self.lexical(field, p)?;
        if !self.inside(&lexical) {
            return Err(self.denied(field, p));
        }
        let (Some(dir), Some(name)) = (lexical.parent(), lexical.file_name()) else {
            return Err(Error::Invalid(format!(
                "{field}: {} names no file",
                shown(p)
            )));
        };
        let dir = std::fs::canonicalize(dir).map_err(|_| {
            Error::Invalid(format!("{field}: {}: its folder does not exist", shown(p)))
        })?;
        if !self.inside(&dir) {
            return Err(self.denied(field, p));
        }
        let target = dir.join(name);
        match std::fs::symlink_metadata(&target) {
            Err(_) => {}
            Ok(m) if m.is_file() && overwrite => {}
            Ok(m) if m.is_file() => {
                return Err(Error::Invalid(format!(
                    "{field}: {} exists; a request replaces a file only when it sets `overwrite`",
                    shown(p)
                )));
            }
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{field}: {} exists and is not a regular file",
                    shown(p)
                )));
            }
        }
        Ok(target)
    }
}

/// A path from a request as it goes into a message: at most 200 characters of it.
fn shown(p: &str) -> String {
    crate::error::truncated(p, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Confinement) {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(repo.join("spine.csv"), "a\n").unwrap();
        std::fs::write(dir.path().join("outside.csv"), "secret\n").unwrap();
        let c = Confinement::new(&repo, &[dir.path().join("data")]).unwrap();
        (dir, c)
    }

    #[test]
    fn reads_inside_only() {
        let (dir, c) = setup();
        assert!(c.read("spine", "spine.csv").is_ok());
        assert!(c.read("spine", "sub/../spine.csv").is_ok());
        for bad in [
            "../outside.csv",
            "/etc/passwd",
            dir.path().join("outside.csv").to_str().unwrap(),
        ] {
            assert!(
                matches!(c.read("spine", bad), Err(Error::PermissionDenied(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            c.read("spine", "missing.csv"),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn a_link_does_not_lead_out() {
        let (dir, c) = setup();
        let link = dir.path().join("repo/link.csv");
        std::os::unix::fs::symlink(dir.path().join("outside.csv"), &link).unwrap();
        assert!(matches!(
            c.read("spine", "link.csv"),
            Err(Error::PermissionDenied(_))
        ));
        let dlink = dir.path().join("repo/out");
        std::os::unix::fs::symlink(dir.path(), &dlink).unwrap();
        assert!(matches!(
            c.write("out", "out/x.parquet", false),
            Err(Error::PermissionDenied(_))
        ));
    }

    #[test]
    fn writes_new_files_inside_only() {
        let (dir, c) = setup();
        let p = c.write("out", "sub/t.parquet", false).unwrap();
        assert_eq!(
            p,
            std::fs::canonicalize(dir.path().join("repo/sub"))
                .unwrap()
                .join("t.parquet")
        );
        let data = dir.path().join("data/t.parquet");
        assert!(c.write("out", data.to_str().unwrap(), false).is_ok());
        assert!(matches!(
            c.write("out", "spine.csv", false),
            Err(Error::Invalid(m)) if m.contains("overwrite")
        ));
        assert!(c.write("out", "spine.csv", true).is_ok());
        assert!(matches!(
            c.write("out", "sub", true),
            Err(Error::Invalid(_))
        ));
        for bad in ["../../x.parquet", "/etc/quiver.parquet", "../outside.csv"] {
            assert!(
                matches!(c.write("out", bad, true), Err(Error::PermissionDenied(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            c.write("out", "nofolder/x.parquet", false),
            Err(Error::Invalid(_))
        ));
    }
}
