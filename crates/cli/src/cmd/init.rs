//! `quiver init`: a new feature repository, like `feast init`.
//!
//! By default the folder gets the bundled sample repository (the lecture's purchases and
//! profiles, a spine and a feature service), so `validate`, `join`, `materialize` and `serve`
//! work at once; `--empty` writes only a commented `quiver.yaml` skeleton. Nothing that
//! exists is overwritten: a folder that already has a `quiver.yaml` is refused before any
//! file is written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The sample repository, embedded so that the binary alone can create it.
const SAMPLE_YAML: &str = include_str!("../../../../sample-data/quiver.yaml");
const SAMPLE_FILES: &[(&str, &[u8])] = &[
    (
        "data/purchases.csv",
        include_bytes!("../../../../sample-data/data/purchases.csv"),
    ),
    (
        "data/profiles/part-0.parquet",
        include_bytes!("../../../../sample-data/data/profiles/part-0.parquet"),
    ),
    (
        "data/profiles/part-1.parquet",
        include_bytes!("../../../../sample-data/data/profiles/part-1.parquet"),
    ),
    (
        "spine.csv",
        include_bytes!("../../../../sample-data/spine.csv"),
    ),
];

/// The skeleton of `--empty`: every section, commented with its shape (DESIGN §2).
const EMPTY_YAML: &str = r#"project: {project}
# State locations, relative to this file (defaults shown):
# offline_store: .quiver/offline
# online_store: .quiver/online      # or { type: redis, url: "redis://HOST:6379/0" }
# registry: .quiver/registry

entities: {}
#  user:
#    join_keys: [user_id]

sources: {}
#  purchases:
#    path: data/purchases.parquet   # file, folder, glob, CSV or Delta table; omit for a managed table
#    timestamp: purchase_date
#    created_timestamp: ingested_at # optional tie-breaker

feature_views: {}
#  user_purchases:
#    entity: user
#    source: purchases
#    ttl: 365d                      # for latest-value features
#    features:
#      - { name: amt_30d, agg: sum, column: purchase_amt, window: 30d }
#      - { name: last_amt, column: purchase_amt }   # no agg = latest value

feature_services: {}
#  churn_v1: [user_purchases:amt_30d]
"#;

/// What `init` wrote, for the message.
pub struct Created {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub sample: bool,
}

/// Create a repository in `dir` (made if missing) named `project` (default: the folder's
/// name).
pub fn init(dir: &Path, project: Option<&str>, empty: bool) -> Result<Created> {
    let yaml = dir.join("quiver.yaml");
    if yaml.exists() {
        bail!(
            "{} already exists: {} is a Quiver repository; nothing was written",
            yaml.display(),
            dir.display()
        );
    }
    let name = match project {
        Some(p) => p.to_string(),
        None => folder_name(dir)?,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("project name {name:?}: use letters, digits, `_` or `-` (give one with --project)");
    }
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    if empty {
        files.push((
            PathBuf::from("quiver.yaml"),
            EMPTY_YAML.replace("{project}", &name).into_bytes(),
        ));
    } else {
        let text = SAMPLE_YAML
            .lines()
            .map(|l| match l.strip_prefix("project:") {
                Some(_) => format!("project: {name}"),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        files.push((PathBuf::from("quiver.yaml"), text.into_bytes()));
        for (p, bytes) in SAMPLE_FILES {
            files.push((PathBuf::from(p), bytes.to_vec()));
        }
    }
    // Refuse before writing anything, so a refused init leaves the folder as it was.
    for (p, _) in &files {
        let at = dir.join(p);
        if at.exists() {
            bail!(
                "{} already exists; init writes only new files (use --empty, or another folder)",
                at.display()
            );
        }
    }
    let mut written = Vec::new();
    // quiver.yaml last: a folder with one is a repository, so it must be complete first.
    for (p, bytes) in files.iter().rev() {
        let at = dir.join(p);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&at, bytes).with_context(|| format!("cannot write {}", at.display()))?;
        written.push(at);
    }
    written.reverse();
    Ok(Created {
        dir: dir.to_path_buf(),
        files: written,
        sample: !empty,
    })
}

/// The last component of `dir` as a project name (`.` resolved).
fn folder_name(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let name = abs
        .components()
        .rfind(|c| !matches!(c, std::path::Component::CurDir))
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or("")
        .to_string();
    // folder names often carry spaces or dots; keep what a project name allows
    Ok(name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect())
}

/// The next steps, printed after the files.
pub fn next_steps(c: &Created) -> Vec<String> {
    let d = c.dir.display();
    let mut lines = vec![format!("created a Quiver repository in {d}:")];
    lines.extend(c.files.iter().map(|f| format!("  {}", f.display())));
    if c.sample {
        lines.push("next:".into());
        lines.push(format!("  quiver validate --repo {d}"));
        lines.push(format!(
            "  quiver join --repo {d} --spine {} --service churn_v1 --out training.csv",
            c.dir.join("spine.csv").display()
        ));
        lines.push(format!("  quiver apply --repo {d}"));
        lines.push(format!(
            "  quiver materialize --repo {d} --end 2024-02-10T00:00:00Z && quiver serve --repo {d}"
        ));
    } else {
        lines.push(format!(
            "next: describe entities, sources and feature views in {}, then `quiver validate --repo {d}`",
            c.dir.join("quiver.yaml").display()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_become_project_names() {
        assert_eq!(
            folder_name(Path::new("/tmp/my repo.v2")).unwrap(),
            "my_repo_v2"
        );
        assert_eq!(folder_name(Path::new("/tmp/shop/.")).unwrap(), "shop");
    }
}

/// Create a feature repository: the bundled sample (data, spine, a feature service), or
/// with --empty a commented quiver.yaml skeleton.
#[derive(clap::Args)]
pub struct Init {
    /// The folder (made if missing).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The project name (default: the folder's name).
    #[arg(long)]
    project: Option<String>,
    /// Only a quiver.yaml skeleton, no sample data.
    #[arg(long)]
    empty: bool,
}

impl Init {
    /// Create it and print the next steps.
    pub fn run(self) -> Result<std::process::ExitCode> {
        let created = init(&self.dir, self.project.as_deref(), self.empty)?;
        for line in next_steps(&created) {
            println!("{line}");
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}
