//! The feature repository file, `quiver.yaml` (DESIGN §2).
//!
//! Loading happens in two steps: the YAML is read into [`file`](mod@file) structs that reject unknown
//! fields (so a typo never passes silently), then every field is checked and resolved into a
//! [`Repo`]. Every mistake names the file and the field's path, e.g.
//! `feature_views.user_purchases.features[2].window`, and says what would be valid — before
//! any data is read. Checks that need a source's schema live with the engine that reads it.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::semantics::{Agg, Closed, Window};
use crate::{Duration, Error, Result};

/// The raw shape of `quiver.yaml`: field names are the contract.
pub mod file {
    use std::fmt;
    use std::marker::PhantomData;

    use indexmap::IndexMap;
    use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

    /// The whole of `quiver.yaml` as written, before any check.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RepoFile {
        /// The project's name; must not be empty.
        pub project: String,
        /// Folder of the offline store, relative to the repository; default `.quiver/offline`.
        pub offline_store: Option<String>,
        /// The online store: a folder (sled), relative to the repository, default
        /// `.quiver/online`; or `{ type: sled | redis | redis-cluster, ... }`.
        pub online_store: Option<OnlineStoreDef>,
        /// Folder of the registry, relative to the repository; default `.quiver/registry`.
        pub registry: Option<String>,
        /// The entities, by name.
        #[serde(default, deserialize_with = "unique")]
        pub entities: IndexMap<String, EntityDef>,
        /// The event sources, by name.
        #[serde(default, deserialize_with = "unique")]
        pub sources: IndexMap<String, SourceDef>,
        /// The feature views, by name.
        #[serde(default, deserialize_with = "unique")]
        pub feature_views: IndexMap<String, ViewDef>,
        /// The feature services, by name: each a list of `view:feature` references.
        #[serde(default, deserialize_with = "unique")]
        pub feature_services: IndexMap<String, Vec<String>>,
        /// How to reach object storage named by `s3://` paths.
        #[serde(default)]
        pub storage: StorageDef,
        /// Where joins run.
        #[serde(default)]
        pub engine: EngineDef,
    }

    /// The `engine:` section.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EngineDef {
        /// A Ballista scheduler that runs joins, `df://HOST:PORT`.
        pub cluster: Option<String>,
        /// Where a cluster's executors read staged spines: a folder they share or an
        /// `s3://` prefix; default `staging` in the offline store.
        pub staging: Option<String>,
    }

    /// The `online_store:` field: a folder, or a map naming the backend.
    #[derive(Debug)]
    pub enum OnlineStoreDef {
        /// A folder of the embedded sled store.
        Path(String),
        /// `{ type: ..., ... }`.
        Typed(TypedOnlineStore),
    }

    /// `online_store: { type: ..., ... }`. Which fields apply depends on `type`; the check
    /// after parsing names a field given for the wrong type.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TypedOnlineStore {
        /// `sled` (embedded, the default), `redis` or `redis-cluster`.
        #[serde(rename = "type")]
        pub kind: String,
        /// sled: the store's folder.
        pub path: Option<String>,
        /// redis: `redis://HOST:PORT/DB` (or `rediss://` for TLS), without a password.
        pub url: Option<String>,
        /// redis-cluster: `redis://HOST:PORT` of some of the cluster's nodes.
        pub nodes: Option<Vec<String>>,
        /// redis, redis-cluster: the prefix of every key; default `quiver:PROJECT`.
        pub key_prefix: Option<String>,
    }

    impl<'de> Deserialize<'de> for OnlineStoreDef {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OnlineStoreDef;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a folder, or a map with `type: sled | redis | redis-cluster`")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(OnlineStoreDef::Path(v.to_string()))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    TypedOnlineStore::deserialize(de::value::MapAccessDeserializer::new(map))
                        .map(OnlineStoreDef::Typed)
                }
            }
            d.deserialize_any(V)
        }
    }

    /// The `storage:` section.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StorageDef {
        /// S3 and S3-compatible stores.
        pub s3: Option<S3Def>,
    }

    /// The `storage.s3:` section: where and how, never who (credentials come from the
    /// environment or the shared credentials file, so they are never written here).
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct S3Def {
        /// Endpoint URL of an S3-compatible store, e.g. `http://127.0.0.1:9000`.
        pub endpoint: Option<String>,
        /// Region; default `AWS_REGION`, else `us-east-1`.
        pub region: Option<String>,
        /// Address buckets as `endpoint/bucket` (true) or `bucket.endpoint` (false).
        pub path_style: Option<bool>,
        /// Allow plain HTTP endpoints (local test servers).
        pub allow_http: Option<bool>,
    }

    /// A map whose keys must be distinct. YAML allows a key twice and serde's maps keep the
    /// last value, so a second `user_profile:` would silently replace the first; struct
    /// fields already refuse duplicates, this does the same for named entries.
    fn unique<'de, D, V>(d: D) -> Result<IndexMap<String, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        struct Unique<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
            type Value = IndexMap<String, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = IndexMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key `{key}` (each name may appear once)"
                        )));
                    }
                    let value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Unique(PhantomData))
    }

    /// An entity: what feature values are keyed by (a user, a product).
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EntityDef {
        /// The key columns that identify one entity, in order; at least one, none twice.
        pub join_keys: Vec<String>,
        /// Free text for readers; Quiver does not use it.
        pub description: Option<String>,
    }

    /// A source of timestamped events.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SourceDef {
        /// A Parquet file, folder or glob, or a CSV file, relative to the repository; absent: the
        /// table Quiver manages for the source (filled by pushes).
        pub path: Option<String>,
        /// The event-time column: when each row's event happened.
        pub timestamp: String,
        /// A column of when each row was recorded; it breaks ties between events at the same time.
        pub created_timestamp: Option<String>,
        /// Hide rows recorded after the lookup time from it (so a backfill does not leak); needs
        /// `created_timestamp`.
        #[serde(default)]
        pub filter_created: bool,
        /// Free text for readers; Quiver does not use it.
        pub description: Option<String>,
    }

    /// A feature view: features of one entity computed from one source.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ViewDef {
        /// The entity the features are keyed by (a name under `entities`).
        pub entity: String,
        /// The source the features are computed from (a name under `sources`).
        pub source: String,
        /// How long a latest value stays valid after its event, as a duration such as `7d`; absent:
        /// for ever.
        pub ttl: Option<String>,
        /// The view's features, in order; at least one.
        pub features: Vec<FeatureDef>,
        /// Free text for readers; Quiver does not use it.
        pub description: Option<String>,
    }

    /// One feature as written: a window aggregate when `agg` is set, else the latest value of a
    /// column.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FeatureDef {
        /// The feature's name, unique in its view; it may not contain `:` or `__`.
        pub name: String,
        /// The aggregate function (`count`, `sum`, …); absent: a latest-value feature.
        pub agg: Option<String>,
        /// The source column read; default: the feature's name (`*` counts rows, with
        /// `agg: count`).
        pub column: Option<String>,
        /// The window length, such as `30d`; absent: a lifetime window. Aggregates only.
        pub window: Option<String>,
        /// How far before the lookup time the window ends, such as `1d`; default 0. Aggregates
        /// only.
        pub offset: Option<String>,
        /// Which window ends are included: `right` (default), `left`, `both` or `neither`.
        /// Aggregates only.
        pub closed: Option<String>,
        /// A SQL boolean expression over source columns selecting the events the aggregate sees.
        /// Aggregates only.
        pub filter: Option<String>,
        /// Free text for readers; Quiver does not use it.
        pub description: Option<String>,
    }
}

/// A validated feature repository.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The folder holding `quiver.yaml`; relative paths are resolved against it.
    pub dir: PathBuf,
    /// The repository file, as given (used in messages).
    pub file: PathBuf,
    /// The project's name.
    pub project: String,
    /// Folder of the offline store, resolved against `dir`.
    pub offline_store: PathBuf,
    /// The online store (`online_store:`; default the sled folder `.quiver/online`).
    pub online_store: OnlineStoreConfig,
    /// Folder of the registry, resolved against `dir`.
    pub registry: PathBuf,
    /// The join key columns of each entity, by entity name.
    pub entities: IndexMap<String, Vec<String>>,
    /// The sources, by name.
    pub sources: IndexMap<String, Source>,
    /// The feature views, by name, in file order.
    pub views: IndexMap<String, FeatureView>,
    /// The features of each feature service, by service name, in the order listed.
    pub services: IndexMap<String, Vec<FeatureRef>>,
    /// How object storage is reached (`storage:` in `quiver.yaml`).
    pub storage: Storage,
    /// A Ballista scheduler that runs joins (`engine.cluster`, `df://HOST:PORT`).
    pub cluster: Option<String>,
    /// Where a cluster's executors read staged spines (`engine.staging`, resolved).
    pub staging: PathBuf,
}

/// Which online store a repository uses, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineStoreConfig {
    /// The embedded store in a folder (resolved against the repository): one process at a
    /// time opens it.
    Sled {
        /// The store's folder.
        path: PathBuf,
    },
    /// One Redis server, shared by every process that serves or materializes.
    Redis {
        /// `redis://HOST:PORT/DB` or `rediss://...`, with no password in it: the password
        /// comes from `QUIVER_REDIS_PASSWORD` (and the user from `QUIVER_REDIS_USERNAME`).
        url: String,
        /// The prefix of every key (`quiver:PROJECT` unless given), so projects can share a
        /// server.
        key_prefix: String,
    },
    /// A Redis Cluster, reached through any of `nodes`.
    RedisCluster {
        /// `redis://HOST:PORT` of some of the cluster's nodes.
        nodes: Vec<String>,
        /// As for [`OnlineStoreConfig::Redis`].
        key_prefix: String,
    },
}

impl OnlineStoreConfig {
    /// The folder of a sled store, `None` for the shared stores.
    pub fn sled_path(&self) -> Option<&Path> {
        match self {
            OnlineStoreConfig::Sled { path } => Some(path),
            _ => None,
        }
    }

    /// Where the store is, for messages: a folder or the server addresses (never a password,
    /// which is refused in `quiver.yaml` anyway).
    pub fn describe(&self) -> String {
        match self {
            OnlineStoreConfig::Sled { path } => path.display().to_string(),
            OnlineStoreConfig::Redis { url, .. } => url.clone(),
            OnlineStoreConfig::RedisCluster { nodes, .. } => nodes.join(","),
        }
    }
}

/// Settings of object storage from `quiver.yaml`; each unset one falls back to the standard
/// environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...).
/// Credentials are deliberately not here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Storage {
    /// `storage.s3.endpoint`.
    pub s3_endpoint: Option<String>,
    /// `storage.s3.region`.
    pub s3_region: Option<String>,
    /// `storage.s3.path_style`.
    pub s3_path_style: Option<bool>,
    /// `storage.s3.allow_http`.
    pub s3_allow_http: Option<bool>,
}

/// The URL scheme of a location written `scheme://...`, if it is one Quiver reads through
/// object storage (`s3`, `s3a`). `file://` is not among them: it is resolved to a local path.
pub fn object_scheme(location: &str) -> Option<&str> {
    let (scheme, _) = location.split_once("://")?;
    matches!(scheme, "s3" | "s3a").then_some(scheme)
}

/// A location from `quiver.yaml` or the command line as a path: an object URL is kept as
/// written (`s3://bucket/key` — no local folder is prefixed), `file:///x` becomes `/x`, and
/// anything else is resolved against `dir`.
pub fn resolve_location(dir: &Path, location: &str) -> PathBuf {
    if object_scheme(location).is_some() {
        PathBuf::from(location)
    } else if let Some(local) = location.strip_prefix("file://") {
        PathBuf::from(local)
    } else {
        dir.join(location)
    }
}

/// A validated event source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// The source's name in `quiver.yaml`.
    pub name: String,
    /// Resolved against the repo folder; `None` = the table Quiver manages for this source.
    pub path: Option<PathBuf>,
    /// The event-time column.
    pub timestamp: String,
    /// The column of when each row was recorded, if the source has one; it breaks ties at equal
    /// event times.
    pub created_timestamp: Option<String>,
    /// Whether rows recorded after a lookup time are hidden from it (needs `created_timestamp`).
    pub filter_created: bool,
}

/// A validated feature view: features of one entity computed from one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FeatureView {
    /// The view's name in `quiver.yaml`.
    pub name: String,
    /// The name of the entity the view's values are keyed by.
    pub entity: String,
    /// The entity's join key columns, in order, copied here so a view is self-contained.
    pub join_keys: Vec<String>,
    /// The name of the source the features are computed from.
    pub source: String,
    /// How long a latest value stays valid after its event; none: for ever.
    pub ttl: Option<Duration>,
    /// The features, in definition order (the order of the values stored online).
    pub features: Vec<Feature>,
}

/// One feature of a feature view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Feature {
    /// The feature's name, unique in its view.
    pub name: String,
    /// How the value is computed: a window aggregate or the latest value.
    pub kind: FeatureKind,
    /// The source column, or `*` for `count` of rows.
    pub column: String,
    /// SQL boolean expression over source columns selecting the events an aggregate sees.
    pub filter: Option<String>,
}

/// How a feature's value is computed from its source's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// An aggregate of the column over the events in a window before the lookup time.
    Aggregate {
        /// The aggregate function.
        agg: Agg,
        /// The window of events it aggregates.
        window: Window,
    },
    /// The column's value in the latest event within the view's ttl.
    Latest,
}

/// `view:feature`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FeatureRef {
    /// The feature view's name.
    pub view: String,
    /// The feature's name within the view.
    pub feature: String,
}

impl std::fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

impl Repo {
    /// Load `quiver.yaml` from a folder or a file path.
    pub fn load(path: impl AsRef<Path>) -> Result<Repo> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            path.join("quiver.yaml")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            file: file.clone(),
            source,
        })?;
        Repo::parse(&text, &file)
    }

    /// Parse and validate the text of a repository file located at `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Repo> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: file::RepoFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            Error::config(
                file,
                if path == "." {
                    "(top level)".to_string()
                } else {
                    path
                },
                inner,
            )
        })?;
        let dir = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        resolve(raw, file, dir)
    }

    /// Resolve `view:feature` references (DESIGN §1), naming the first one that does not exist.
    pub fn resolve_refs<S: AsRef<str>>(&self, refs: &[S]) -> Result<Vec<FeatureRef>> {
        let mut out: Vec<FeatureRef> = Vec::new();
        for r in refs {
            let r = r.as_ref().trim();
            let fr = self.resolve_ref(r)?;
            if out.contains(&fr) {
                return Err(Error::DuplicateFeature {
                    reference: r.to_string(),
                });
            }
            out.push(fr);
        }
        if out.is_empty() {
            return Err(Error::NoFeatures);
        }
        Ok(out)
    }

    fn resolve_ref(&self, r: &str) -> Result<FeatureRef> {
        let Some((view, feature)) = r.split_once(':') else {
            return Err(Error::BadReference {
                reference: r.to_string(),
            });
        };
        let v = self.views.get(view).ok_or_else(|| Error::UnknownView {
            view: view.to_string(),
            reference: r.to_string(),
            known: join_names(self.views.keys()),
        })?;
        if !v.features.iter().any(|f| f.name == feature) {
            return Err(Error::UnknownFeature {
                view: view.to_string(),
                feature: feature.to_string(),
                known: join_names(v.features.iter().map(|f| &f.name)),
            });
        }
        Ok(FeatureRef {
            view: view.into(),
            feature: feature.into(),
        })
    }

    /// The features of a feature service.
    pub fn service(&self, name: &str) -> Result<Vec<FeatureRef>> {
        self.services
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownService {
                name: name.to_string(),
                known: join_names(self.services.keys()),
            })
    }

    /// The view and the definition of a feature reference; `None` when the repository has no such
    /// feature.
    pub fn feature(&self, r: &FeatureRef) -> Option<(&FeatureView, &Feature)> {
        let v = self.views.get(&r.view)?;
        Some((v, v.features.iter().find(|f| f.name == r.feature)?))
    }

    /// The error for a field of this repository's file, for checks made by other crates
    /// (for example against a source's schema).
    pub fn field_error(&self, path: impl Into<String>, message: impl Into<String>) -> Error {
        Error::config(&self.file, path, message)
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(|s| s.as_str()).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// Checks a cluster address: `df://HOST:PORT`.
pub fn check_cluster(address: &str) -> std::result::Result<(), String> {
    let ok = address.strip_prefix("df://").is_some_and(|a| {
        a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{address}` is not a cluster address: expected df://HOST:PORT"
        ))
    }
}

/// Check a Redis URL of `quiver.yaml`: `redis://` or `rediss://`, a host, and no password
/// (it would sit in a file that is committed and copied; it comes from the environment).
fn check_redis_url(url: &str) -> std::result::Result<(), String> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(format!(
            "`{url}` is not a Redis URL: expected redis://HOST:PORT/DB or rediss://..."
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(
            "a password does not belong in quiver.yaml: remove it from the URL and \
             set QUIVER_REDIS_PASSWORD in the environment"
                .into(),
        );
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    Ok(())
}

fn online_store(
    def: Option<&file::OnlineStoreDef>,
    project: &str,
    dir: &Path,
    file: &Path,
) -> Result<OnlineStoreConfig> {
    use file::OnlineStoreDef as D;
    let err = |field: &str, m: String| Error::config(file, format!("online_store.{field}"), m);
    let t = match def {
        None => {
            return Ok(OnlineStoreConfig::Sled {
                path: dir.join(".quiver/online"),
            });
        }
        Some(D::Path(p)) => return Ok(OnlineStoreConfig::Sled { path: dir.join(p) }),
        Some(D::Typed(t)) => t,
    };
    // A field of another backend is a mistake worth naming, not ignoring.
    let refuse = |given: bool, field: &str| -> Result<()> {
        if given {
            Err(err(field, format!("does not apply to `type: {}`", t.kind)))
        } else {
            Ok(())
        }
    };
    let prefix = || {
        let p = t
            .key_prefix
            .clone()
            .unwrap_or_else(|| format!("quiver:{project}"));
        if p.is_empty() || p.contains(['{', '}']) {
            return Err(err(
                "key_prefix",
                format!(
                    "`{p}` must be non-empty and hold no braces (they pick Redis Cluster hash slots)"
                ),
            ));
        }
        Ok(p)
    };
    match t.kind.as_str() {
        "sled" => {
            refuse(t.url.is_some(), "url")?;
            refuse(t.nodes.is_some(), "nodes")?;
            refuse(t.key_prefix.is_some(), "key_prefix")?;
            Ok(OnlineStoreConfig::Sled {
                path: dir.join(t.path.as_deref().unwrap_or(".quiver/online")),
            })
        }
        "redis" => {
            refuse(t.path.is_some(), "path")?;
            refuse(t.nodes.is_some(), "nodes")?;
            let url = t
                .url
                .clone()
                .ok_or_else(|| err("url", "is required for `type: redis`".into()))?;
            check_redis_url(&url).map_err(|m| err("url", m))?;
            Ok(OnlineStoreConfig::Redis {
                url,
                key_prefix: prefix()?,
            })
        }
        "redis-cluster" => {
            refuse(t.path.is_some(), "path")?;
            refuse(t.url.is_some(), "url")?;
            let nodes = t.nodes.clone().unwrap_or_default();
            if nodes.is_empty() {
                return Err(err(
                    "nodes",
                    "needs at least one redis://HOST:PORT of the cluster".into(),
                ));
            }
            for (i, n) in nodes.iter().enumerate() {
                check_redis_url(n).map_err(|m| err(&format!("nodes[{i}]"), m))?;
            }
            Ok(OnlineStoreConfig::RedisCluster {
                nodes,
                key_prefix: prefix()?,
            })
        }
        other => Err(err(
            "type",
            format!("unknown online store type `{other}`; types: sled, redis, redis-cluster"),
        )),
    }
}

fn storage(def: &file::StorageDef, file: &Path) -> Result<Storage> {
    let Some(s3) = &def.s3 else {
        return Ok(Storage::default());
    };
    if let Some(e) = &s3.endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err(Error::config(
            file,
            "storage.s3.endpoint",
            format!("`{e}` is not an http:// or https:// URL"),
        ));
    }
    Ok(Storage {
        s3_endpoint: s3.endpoint.clone(),
        s3_region: s3.region.clone(),
        s3_path_style: s3.path_style,
        s3_allow_http: s3.allow_http,
    })
}

fn resolve(raw: file::RepoFile, file: &Path, dir: PathBuf) -> Result<Repo> {
    let err = |path: String, msg: String| Error::config(file, path, msg);
    if raw.project.trim().is_empty() {
        return Err(err("project".into(), "must not be empty".into()));
    }
    let mut entities = IndexMap::new();
    for (name, e) in &raw.entities {
        let p = format!("entities.{name}.join_keys");
        if e.join_keys.is_empty() {
            return Err(err(p, "needs at least one key column".into()));
        }
        for (i, k) in e.join_keys.iter().enumerate() {
            if e.join_keys[..i].contains(k) {
                return Err(err(
                    format!("{p}[{i}]"),
                    format!("key `{k}` is listed twice"),
                ));
            }
        }
        entities.insert(name.clone(), e.join_keys.clone());
    }
    let mut sources = IndexMap::new();
    for (name, s) in &raw.sources {
        if s.filter_created && s.created_timestamp.is_none() {
            return Err(err(
                format!("sources.{name}.filter_created"),
                "needs `created_timestamp` to be set on the source".into(),
            ));
        }
        if s.timestamp.trim().is_empty() {
            return Err(err(
                format!("sources.{name}.timestamp"),
                "must name a column".into(),
            ));
        }
        sources.insert(
            name.clone(),
            Source {
                name: name.clone(),
                path: s.path.as_deref().map(|p| resolve_location(&dir, p)),
                timestamp: s.timestamp.clone(),
                created_timestamp: s.created_timestamp.clone(),
                filter_created: s.filter_created,
            },
        );
    }
    let mut views = IndexMap::new();
    for (vname, v) in &raw.feature_views {
        let vp = format!("feature_views.{vname}");
        let join_keys = entities.get(&v.entity).cloned().ok_or_else(|| {
            err(
                format!("{vp}.entity"),
                format!(
                    "unknown entity `{}`; entities: {}",
                    v.entity,
                    join_names(entities.keys())
                ),
            )
        })?;
        if !sources.contains_key(&v.source) {
            return Err(err(
                format!("{vp}.source"),
                format!(
                    "unknown source `{}`; sources: {}",
                    v.source,
                    join_names(sources.keys())
                ),
            ));
        }
        let ttl = parse_duration(&v.ttl, || format!("{vp}.ttl"), file)?;
        if v.features.is_empty() {
            return Err(err(
                format!("{vp}.features"),
                "needs at least one feature".into(),
            ));
        }
        let mut features: Vec<Feature> = Vec::new();
        for (i, f) in v.features.iter().enumerate() {
            let fp = format!("{vp}.features[{i}]");
            features.push(resolve_feature(f, &fp, file)?);
            if features[..i].iter().any(|g| g.name == f.name) {
                return Err(err(
                    format!("{fp}.name"),
                    format!("feature `{}` is defined twice in view `{vname}`", f.name),
                ));
            }
        }
        views.insert(
            vname.clone(),
            FeatureView {
                name: vname.clone(),
                entity: v.entity.clone(),
                join_keys,
                source: v.source.clone(),
                ttl,
                features,
            },
        );
    }
    let mut repo = Repo {
        offline_store: resolve_location(
            &dir,
            raw.offline_store.as_deref().unwrap_or(".quiver/offline"),
        ),
        online_store: online_store(raw.online_store.as_ref(), &raw.project, &dir, file)?,
        registry: dir.join(raw.registry.as_deref().unwrap_or(".quiver/registry")),
        dir,
        file: file.to_path_buf(),
        project: raw.project.clone(),
        entities,
        sources,
        views,
        services: IndexMap::new(),
        storage: storage(&raw.storage, file)?,
        cluster: None,
        staging: PathBuf::new(),
    };
    if let Some(c) = &raw.engine.cluster {
        check_cluster(c).map_err(|m| err("engine.cluster".into(), m))?;
        repo.cluster = Some(c.clone());
    }
    repo.staging = match &raw.engine.staging {
        Some(s) => resolve_location(&repo.dir, s),
        None => repo.offline_store.join("staging"),
    };
    for (sname, refs) in &raw.feature_services {
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let fr = repo
                .resolve_ref(r)
                .map_err(|e| err(format!("feature_services.{sname}[{i}]"), e.to_string()))?;
            if out.contains(&fr) {
                return Err(err(
                    format!("feature_services.{sname}[{i}]"),
                    format!("`{r}` is listed twice"),
                ));
            }
            out.push(fr);
        }
        if out.is_empty() {
            return Err(err(
                format!("feature_services.{sname}"),
                "lists no features".into(),
            ));
        }
        repo.services.insert(sname.clone(), out);
    }
    Ok(repo)
}

fn parse_duration(
    text: &Option<String>,
    path: impl Fn() -> String,
    file: &Path,
) -> Result<Option<Duration>> {
    text.as_ref()
        .map(|t| Duration::parse(t).map_err(|m| Error::config(file, path(), m)))
        .transpose()
}

fn resolve_feature(f: &file::FeatureDef, fp: &str, file: &Path) -> Result<Feature> {
    let err = |field: &str, msg: String| Error::config(file, format!("{fp}.{field}"), msg);
    if f.name.trim().is_empty() {
        return Err(err("name", "must not be empty".into()));
    }
    if f.name.contains(':') || f.name.contains("__") {
        return Err(err(
            "name",
            format!("`{}`: a feature name may not contain `:` or `__`", f.name),
        ));
    }
    let column = f.column.clone().unwrap_or_else(|| f.name.clone());
    let Some(agg_text) = &f.agg else {
        for (field, set) in [
            ("window", f.window.is_some()),
            ("offset", f.offset.is_some()),
            ("closed", f.closed.is_some()),
            ("filter", f.filter.is_some()),
        ] {
            if set {
                return Err(err(
                    field,
                    format!(
                        "a latest-value feature (no `agg`) takes no `{field}`; use `agg: last` for the latest non-null value in a window"
                    ),
                ));
            }
        }
        if column == "*" {
            return Err(err("column", "`*` is only valid with `agg: count`".into()));
        }
        return Ok(Feature {
            name: f.name.clone(),
            kind: FeatureKind::Latest,
            column,
            filter: None,
        });
    };
    let agg = Agg::parse(agg_text).ok_or_else(|| {
        err(
            "agg",
            format!("unknown aggregate `{agg_text}`; valid: {}", Agg::NAMES),
        )
    })?;
    if column == "*" && agg != Agg::Count {
        return Err(err(
            "column",
            format!("`*` is only valid with `agg: count`, not `{agg}`"),
        ));
    }
    let length = parse_duration(&f.window, || format!("{fp}.window"), file)?;
    if length == Some(Duration::ZERO) {
        return Err(err(
            "window",
            "must be longer than 0; omit it for a lifetime window".into(),
        ));
    }
    let offset = parse_duration(&f.offset, || format!("{fp}.offset"), file)?.unwrap_or_default();
    let closed = match &f.closed {
        None => Closed::Right,
        Some(c) => Closed::parse(c).ok_or_else(|| {
            err(
                "closed",
                format!("unknown closure `{c}`; valid: {}", Closed::NAMES),
            )
        })?,
    };
    if let Some(filter) = &f.filter
        && filter.trim().is_empty()
    {
        return Err(err(
            "filter",
            "must be a SQL boolean expression, not empty".into(),
        ));
    }
    Ok(Feature {
        name: f.name.clone(),
        kind: FeatureKind::Aggregate {
            agg,
            window: Window {
                length,
                offset,
                closed,
            },
        },
        column,
        filter: f.filter.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
project: retail
entities:
  user: { join_keys: [user_id] }
sources:
  purchases: { path: data/purchases.parquet, timestamp: purchase_date, created_timestamp: ingested_at }
  profiles: { path: data/profiles/, timestamp: updated_at }
feature_views:
  user_purchases:
    entity: user
    source: purchases
    features:
      - { name: amt_30d, agg: sum, column: purchase_amt, window: 30d }
      - { name: amt_lifetime, agg: sum, column: purchase_amt }
      - { name: clothing_7d, agg: count, column: "*", window: 7d, filter: "category = 'clothing'" }
      - { name: max_1h_ago, agg: max, column: purchase_amt, window: 1d, offset: 1h, closed: both }
  user_profile:
    entity: user
    source: profiles
    ttl: 365d
    features:
      - { name: age }
      - { name: home_country, column: country }
feature_services:
  churn_v1: [user_purchases:amt_30d, user_profile:age]
"#;

    fn parse(text: &str) -> Result<Repo> {
        Repo::parse(text, Path::new("repo/quiver.yaml"))
    }

    fn error_of(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        parse(&GOOD.replacen(from, to, 1)).unwrap_err().to_string()
    }

    #[test]
    fn design_example_parses() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.dir, Path::new("repo"));
        let v = &r.views["user_purchases"];
        assert_eq!(v.join_keys, ["user_id"]);
        assert_eq!(
            v.features[3].kind,
            FeatureKind::Aggregate {
                agg: Agg::Max,
                window: Window {
                    length: Some(Duration::parse("1d").unwrap()),
                    offset: Duration::parse("1h").unwrap(),
                    closed: Closed::Both
                }
            }
        );
        assert_eq!(r.views["user_profile"].features[1].column, "country");
        assert_eq!(
            r.views["user_profile"].ttl,
            Some(Duration::parse("365d").unwrap())
        );
        assert_eq!(r.services["churn_v1"].len(), 2);
        assert_eq!(
            r.sources["profiles"].path,
            Some(PathBuf::from("repo/data/profiles/"))
        );
    }

    #[test]
    fn bad_duration_names_field_path() {
        let e = error_of("window: 7d", "window: 7x");
        assert!(e.starts_with("repo/quiver.yaml: feature_views.user_purchases.features[2].window: bad duration \"7x\""), "{e}");
        assert!(e.contains("us, ms, s, m, h, d, w"), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = error_of("window: 30d", "windw: 30d");
        assert!(
            e.contains("feature_views.user_purchases.features[0]"),
            "{e}"
        );
        assert!(e.contains("unknown field `windw`"), "{e}");
        assert!(e.contains("window"), "{e}");
    }

    #[test]
    fn unknown_references() {
        let e = error_of("source: purchases", "source: purchase");
        assert!(e.contains("feature_views.user_purchases.source: unknown source `purchase`; sources: purchases, profiles"), "{e}");
        let e = error_of(
            "entity: user\n    source: profiles",
            "entity: usr\n    source: profiles",
        );
        assert!(
            e.contains("feature_views.user_profile.entity: unknown entity `usr`"),
            "{e}"
        );
        let e = error_of("user_profile:age]", "user_profile:agee]");
        assert!(
            e.contains(
                "feature_services.churn_v1[1]: feature view `user_profile` has no feature `agee`"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_agg_and_closed() {
        let e = error_of(
            "agg: sum, column: purchase_amt, window: 30d",
            "agg: total, column: purchase_amt, window: 30d",
        );
        assert!(
            e.contains("features[0].agg: unknown aggregate `total`; valid: count, sum"),
            "{e}"
        );
        let e = error_of("closed: both", "closed: open");
        assert!(
            e.contains(
                "features[3].closed: unknown closure `open`; valid: right, left, both, neither"
            ),
            "{e}"
        );
        let e = error_of(
            "agg: sum, column: purchase_amt }",
            "agg: sum, column: \"*\" }",
        );
        assert!(
            e.contains("features[1].column: `*` is only valid with `agg: count`"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_feature_names() {
        let e = error_of("name: amt_lifetime", "name: amt_30d");
        assert!(
            e.contains("features[1].name: feature `amt_30d` is defined twice"),
            "{e}"
        );
    }

    /// Issue 18.4: a key given twice in a nested map was accepted, the last one winning.
    #[test]
    fn nested_duplicate_keys_are_errors() {
        // A second `user_profile:` under `feature_views:`.
        let e = error_of(
            "feature_services:",
            "  user_profile:\n    entity: user\n    source: purchases\n    features: [{ name: purchase_amt }]\nfeature_services:",
        );
        assert!(e.contains("feature_views"), "{e}");
        assert!(e.contains("duplicate key `user_profile`"), "{e}");
        // A second `purchases:` under `sources:`.
        let e = error_of(
            "  profiles: {",
            "  purchases: { path: other.parquet, timestamp: t }\n  profiles: {",
        );
        assert!(e.contains("sources"), "{e}");
        assert!(e.contains("duplicate key `purchases`"), "{e}");
        for (from, to, key) in [
            (
                "  user: { join_keys: [user_id] }",
                "  user: { join_keys: [user_id] }\n  user: { join_keys: [uid] }",
                "user",
            ),
            (
                "  churn_v1: [",
                "  churn_v1: [user_profile:age]\n  churn_v1: [",
                "churn_v1",
            ),
        ] {
            let e = error_of(from, to);
            assert!(e.contains(&format!("duplicate key `{key}`")), "{e}");
        }
    }

    #[test]
    fn latest_value_rejects_window() {
        let e = error_of("{ name: age }", "{ name: age, window: 1d }");
        assert!(
            e.contains("user_profile.features[0].window: a latest-value feature"),
            "{e}"
        );
    }

    #[test]
    fn online_stores_parse_and_mistakes_are_named() {
        let with = |extra: &str| parse(&format!("{GOOD}\nonline_store: {extra}\n"));
        assert_eq!(
            parse(GOOD).unwrap().online_store,
            OnlineStoreConfig::Sled {
                path: Path::new("repo/.quiver/online").into()
            }
        );
        assert_eq!(
            with("stores/online").unwrap().online_store,
            OnlineStoreConfig::Sled {
                path: Path::new("repo/stores/online").into()
            }
        );
        assert_eq!(
            with("{ type: redis, url: \"redis://10.0.0.5:6379/2\" }")
                .unwrap()
                .online_store,
            OnlineStoreConfig::Redis {
                url: "redis://10.0.0.5:6379/2".into(),
                key_prefix: "quiver:retail".into()
            }
        );
        assert_eq!(
            with("{ type: redis-cluster, nodes: [\"redis://a:7000\", \"redis://b:7000\"], key_prefix: fs }")
                .unwrap()
                .online_store,
            OnlineStoreConfig::RedisCluster {
                nodes: vec!["redis://a:7000".into(), "redis://b:7000".into()],
                key_prefix: "fs".into()
            }
        );
        let e = |extra: &str| with(extra).unwrap_err().to_string();
        let m = e("{ type: redis, url: \"redis://:hunter2@host:6379\" }");
        assert!(
            m.contains("online_store.url: a password does not belong in quiver.yaml")
                && m.contains("QUIVER_REDIS_PASSWORD")
                && !m.contains("hunter2"),
            "{m}"
        );
        let m = e("{ type: redis }");
        assert!(m.contains("online_store.url: is required"), "{m}");
        let m = e("{ type: redis, url: \"http://x\" }");
        assert!(m.contains("not a Redis URL"), "{m}");
        let m = e("{ type: redis, url: \"redis://x\", nodes: [\"redis://y\"] }");
        assert!(
            m.contains("online_store.nodes: does not apply to `type: redis`"),
            "{m}"
        );
        let m = e("{ type: redis-cluster, nodes: [] }");
        assert!(m.contains("online_store.nodes: needs at least one"), "{m}");
        let m = e("{ type: memcached }");
        assert!(
            m.contains("unknown online store type `memcached`; types: sled, redis, redis-cluster"),
            "{m}"
        );
        let m = e("{ type: redis, url: \"redis://x\", key_prefix: \"a{b}\" }");
        assert!(m.contains("online_store.key_prefix"), "{m}");
        let m = e("{ type: redis, uri: \"redis://x\" }");
        assert!(m.contains("unknown field `uri`"), "{m}");
    }

    #[test]
    fn missing_required_field() {
        let e = error_of("timestamp: updated_at", "stamp: updated_at");
        assert!(e.contains("sources.profiles"), "{e}");
    }

    #[test]
    fn filter_created_needs_created_timestamp() {
        let e = error_of(
            "timestamp: updated_at",
            "timestamp: updated_at, filter_created: true",
        );
        assert!(
            e.contains("sources.profiles.filter_created: needs `created_timestamp`"),
            "{e}"
        );
    }

    #[test]
    fn refs_resolve_and_fail_clearly() {
        let r = parse(GOOD).unwrap();
        assert_eq!(
            r.resolve_refs(&["user_profile:age"]).unwrap()[0].feature,
            "age"
        );
        let e = r.resolve_refs(&["nope:age"]).unwrap_err().to_string();
        assert!(e.contains("unknown feature view `nope`"), "{e}");
        let e = r
            .resolve_refs(&["user_profile:age", "user_profile:age"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("requested twice"), "{e}");
        let e = r.service("churn").unwrap_err().to_string();
        assert!(
            e.contains("unknown feature service `churn`; services: churn_v1"),
            "{e}"
        );
    }
}
