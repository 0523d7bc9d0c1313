//! `tokens`: the bearer tokens a server accepts (DESIGN §12). A token is printed once, when
//! made; the registry keeps only a salted hash of it. A running server picks up changes within
//! a second.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use quiver_app::auth::{self, Role};
use quiver_core::Repo;
use quiver_registry::Registry;

use crate::table::print_table;

/// Make, list and revoke tokens.
#[derive(clap::Subcommand)]
pub enum Tokens {
    /// Make a token and print it (once: it is not stored).
    Create {
        /// Who or what it is for (`svc-a`): unique among tokens in use, shown in the audit log.
        #[arg(long)]
        name: String,
        /// reader (lookups, reading datasets and models), writer (and pushes, materializations,
        /// training sets) or admin (and registry writes).
        #[arg(long)]
        role: String,
    },
    /// Every token: name, role, when made and revoked (never the token).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke the token in use named NAME.
    Revoke { name: String },
}

impl Tokens {
    /// What an audit log line says this did: (method, target).
    pub fn audited(&self) -> Option<(&'static str, String)> {
        match self {
            Tokens::Create { name, .. } => Some(("tokens create", name.clone())),
            Tokens::Revoke { name } => Some(("tokens revoke", name.clone())),
            Tokens::List { .. } => None,
        }
    }

    /// Run the subcommand.
    pub fn run(self, repo: &Path) -> Result<ExitCode> {
        let repo = Repo::load(repo)?;
        let registry = Registry::open(&repo.registry)?;
        match self {
            Tokens::Create { name, role } => {
                let role = Role::parse(&role)?;
                let (token, _) = auth::create(&registry, &name, role)?;
                eprintln!(
                    "token `{name}` ({}): shown once, keep it secret; send it as `authorization: Bearer <token>`",
                    role.name()
                );
                println!("{token}");
            }
            Tokens::List { json } => {
                let all = registry.tokens()?;
                let when = |t: i64| quiver_core::time::format_instant(t);
                if json {
                    let v: Vec<serde_json::Value> = all
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "name": t.name,
                                "role": t.role,
                                "created": when(t.created_micros),
                                "revoked": t.revoked_micros.map(when),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let mut rows = vec![vec![
                        "name".to_string(),
                        "role".into(),
                        "created".into(),
                        "revoked".into(),
                    ]];
                    for t in &all {
                        rows.push(vec![
                            t.name.clone(),
                            t.role.clone(),
                            when(t.created_micros),
                            t.revoked_micros.map(when).unwrap_or_else(|| "-".into()),
                        ]);
                    }
                    print_table(rows);
                }
            }
            Tokens::Revoke { name } => {
                registry.revoke_token(&name, quiver_core::time::now_micros())?;
                println!("token `{name}` revoked");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
