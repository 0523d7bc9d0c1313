//! Object storage: sources, managed tables, reuse states and outputs at `s3://` URLs.
//!
//! A location stays a `Path` everywhere in Quiver; one written `s3://bucket/key` is an object
//! URL (see `quiver_core::config::object_scheme`), and this module is the one place that
//! tells the two apart and talks to the store behind a URL. Stores are built once per bucket
//! from the standard AWS environment variables, the shared credentials file, and the
//! `storage:` section of `quiver.yaml` (which never holds credentials). Every HTTP request of
//! every store runs on one I/O runtime of this module, so a store outlives whichever runtime
//! first used it, and the synchronous helpers here can wait on it from anywhere.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::client::SpawnedReqwestConnector;
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use quiver_core::config::Storage;
use url::Url;

use crate::error::{Error, ObjectFault, Result};

/// The settings stores are built from, and the stores built so far (by `scheme://bucket`).
struct Stores {
    settings: Storage,
    built: HashMap<String, Arc<dyn ObjectStore>>,
}

static STORES: LazyLock<Mutex<Stores>> = LazyLock::new(|| {
    Mutex::new(Stores {
        settings: Storage::default(),
        built: HashMap::new(),
    })
});

/// Bytes received from object storage by this process (ranged reads included).
static READ_BYTES: AtomicU64 = AtomicU64::new(0);

/// The runtime every object-store request runs on: two threads, alive for the process.
static IO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quiver-io")
        .enable_all()
        .build()
        .expect("the object-store I/O runtime starts")
});

/// Use `settings` (a repository's `storage:` section) for the stores built from now on. A
/// repository that says nothing about storage leaves the settings as they are: a process
/// serving several repositories reaches object storage one way.
pub fn configure(settings: &Storage) {
    if *settings == Storage::default() {
        return;
    }
    let mut s = STORES.lock().unwrap_or_else(|p| p.into_inner());
    if s.settings != *settings {
        s.settings = settings.clone();
        s.built.clear();
    }
}

/// The object URL a location names, or `None` for a local path.
pub fn url_of(path: &Path) -> Option<Url> {
    let text = path.to_str()?;
    quiver_core::config::object_scheme(text)?;
    Url::parse(text).ok()
}

/// Whether a location is an object URL.
pub fn is_remote(path: &Path) -> bool {
    url_of(path).is_some()
}

/// Bytes read from object storage by this process so far.
pub fn read_bytes() -> u64 {
    READ_BYTES.load(Ordering::Relaxed)
}

/// Run `fut` on the I/O runtime and wait for it; callable from synchronous code and from
/// inside another runtime (the calling thread blocks, the I/O runtime's threads do the work).
pub fn block<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    IO.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("the object-store I/O runtime runs its tasks")
}

/// The store holding `url`'s bucket.
pub fn store(url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let bucket = url.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err(fault(url, "names no bucket"));
    }
    let id = format!("{}://{bucket}", url.scheme());
    let mut s = STORES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(store) = s.built.get(&id) {
        return Ok(store.clone());
    }
    let store: Arc<dyn ObjectStore> = Arc::new(Counted(Arc::new(s3(bucket, &s.settings)?)));
    s.built.insert(id, store.clone());
    Ok(store)
}

fn s3(bucket: &str, settings: &Storage) -> Result<object_store::aws::AmazonS3> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_http_connector(SpawnedReqwestConnector::new(IO.handle().clone()));
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        && let Some((key, secret, token)) = shared_credentials()
    {
        b = b.with_access_key_id(key).with_secret_access_key(secret);
        if let Some(t) = token {
            b = b.with_token(t);
        }
    }
    if let Some(e) = &settings.s3_endpoint {
        b = b.with_endpoint(e.trim_end_matches('/'));
    }
    if let Some(r) = &settings.s3_region {
        b = b.with_region(r);
    } else if std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        b = b.with_region("us-east-1");
    }
    if let Some(p) = settings.s3_path_style {
        b = b.with_virtual_hosted_style_request(!p);
    }
    if let Some(h) = settings.s3_allow_http {
        b = b.with_allow_http(h);
    }
    // The builder's messages name settings, never their values.
    b.build()
        .map_err(|e| Error::Source(format!("s3://{bucket}: cannot set up the S3 client: {e}")))
}

/// Credentials of the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
/// `~/.aws/credentials`), profile `AWS_PROFILE` or `default`, as other AWS tools read them.
fn shared_credentials() -> Option<(String, String, Option<String>)> {
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")))?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let text = std::fs::read_to_string(file).ok()?;
    parse_credentials(&text, &profile)
}

fn parse_credentials(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let (mut section, mut values) = (String::new(), HashMap::new());
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
        } else if section == profile
            && let Some((k, v)) = line.split_once('=')
        {
            values.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((
        values.remove("aws_access_key_id")?,
        values.remove("aws_secret_access_key")?,
        values.remove("aws_session_token"),
    ))
}

/// The key of `url` inside its bucket.
pub fn key(url: &Url) -> Result<Key> {
    let path = percent_encoding::percent_decode_str(url.path().trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    Key::parse(path.trim_end_matches('/')).map_err(|e| fault(url, &format!("bad key: {e}")))
}

/// `url` joined with a key of its store, as a location.
fn location_of(url: &Url, key: &Key) -> PathBuf {
    PathBuf::from(format!(
        "{}://{}/{key}",
        url.scheme(),
        url.host_str().unwrap_or_default()
    ))
}

fn fault(url: &Url, what: &str) -> Error {
    failure(url, what, ObjectFault::Failed)
}

fn failure(url: &Url, what: &str, fault: ObjectFault) -> Error {
    Error::Object {
        url: url.to_string(),
        message: what.to_string(),
        fault,
    }
}

/// An object-store error as a message naming `url` and what failed.
pub(crate) fn object_error(url: &Url, e: object_store::Error) -> Error {
    use ObjectFault::*;
    let text = e.to_string();
    let (what, kind) = match &e {
        _ if text.contains("NoSuchBucket") => ("the bucket does not exist".to_string(), Missing),
        object_store::Error::NotFound { .. } => ("object not found".to_string(), Missing),
        object_store::Error::PermissionDenied { .. } => (format!("access denied: {text}"), Denied),
        object_store::Error::Unauthenticated { .. } => (
            format!("not authenticated (check AWS_ACCESS_KEY_ID and the secret): {text}"),
            Denied,
        ),
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            ("already exists".to_string(), Failed)
        }
        _ => (text, Failed),
    };
    failure(url, &what, kind)
}

/// The object a URL names, if it exists.
pub fn head(url: &Url) -> Result<Option<ObjectMeta>> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    block(async move {
        match store.head(&key).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_error(&u, e)),
        }
    })
}

/// Every object under `url` taken as a folder, sorted by key, as locations with their sizes.
pub fn list(url: &Url) -> Result<Vec<(PathBuf, ObjectMeta)>> {
    let (store, prefix, u) = (store(url)?, key(url)?, url.clone());
    let metas: Vec<ObjectMeta> = block(async move {
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| object_error(&u, e))
    })?;
    let mut out: Vec<_> = metas
        .into_iter()
        .map(|m| (location_of(url, &m.location), m))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The whole object at `url`.
pub fn get(url: &Url) -> Result<Bytes> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    block(async move {
        let r = store.get(&key).await.map_err(|e| object_error(&u, e))?;
        r.bytes().await.map_err(|e| object_error(&u, e))
    })
}

/// The whole object at `url`, or `None` when there is none (the bucket must exist).
pub fn get_opt(url: &Url) -> Result<Option<Bytes>> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    block(async move {
        match store.get(&key).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| object_error(&u, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_error(&u, e)),
        }
    })
}

/// Create the object at `url` unless it exists (a conditional put: of two writers, one
/// creates it); `false` when it existed.
pub fn create(url: &Url, bytes: Bytes) -> Result<bool> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    block(async move {
        match store
            .put_opts(
                &key,
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(object_error(&u, e)),
        }
    })
}

/// Bytes `range` of the object at `url`.
pub fn get_range(url: &Url, range: std::ops::Range<u64>) -> Result<Bytes> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    block(async move {
        store
            .get_range(&key, range)
            .await
            .map_err(|e| object_error(&u, e))
    })
}

/// Write `bytes` to `url`; with `create_only`, fail if the object exists (a conditional put,
/// so two writers cannot both create it).
pub fn put(url: &Url, bytes: Bytes, create_only: bool) -> Result<()> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    let mode = if create_only {
        PutMode::Create
    } else {
        PutMode::Overwrite
    };
    block(async move {
        store
            .put_opts(&key, PutPayload::from(bytes), PutOptions::from(mode))
            .await
            .map(|_| ())
            .map_err(|e| object_error(&u, e))
    })
}

/// Upload a local file to `url` in parts; the object appears whole when the upload completes,
/// or not at all.
pub fn upload(file: &Path, url: &Url) -> Result<()> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    let local = file.to_path_buf();
    block(async move {
        use tokio::io::AsyncReadExt;
        const PART: usize = 16 << 20;
        let io = |source| Error::Io {
            path: local.clone(),
            source,
        };
        let mut f = tokio::fs::File::open(&local).await.map_err(io)?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(
            store
                .put_multipart(&key)
                .await
                .map_err(|e| object_error(&u, e))?,
            PART,
        );
        let mut buf = vec![0u8; PART];
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]);
        }
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| object_error(&u, e))
    })
}

/// Delete the object at `url` (a missing one is not an error).
pub fn delete(url: &Url) -> Result<()> {
    let (store, key, u) = (store(url)?, key(url)?, url.clone());
    block(async move {
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_error(&u, e)),
        }
    })
}

/// DataFusion's registry of stores, answering every `s3://` bucket from this module and
/// everything else (local files) as DataFusion would.
#[derive(Debug, Default)]
pub struct Registry {
    local: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for Registry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.local.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.local.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if quiver_core::config::object_scheme(url.as_str()).is_some() {
            return store(url).map_err(datafusion::error::DataFusionError::from);
        }
        self.local.get_store(url)
    }
}

/// A store that counts the bytes read through it (`read_bytes`).
#[derive(Debug)]
struct Counted(Arc<dyn ObjectStore>);

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Key,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Key,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Key,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let head = options.head;
        let r = self.0.get_opts(location, options).await?;
        if !head {
            READ_BYTES.fetch_add(r.range.end - r.range.start, Ordering::Relaxed);
        }
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Key,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let r = self.0.get_ranges(location, ranges).await?;
        let n: usize = r.iter().map(Bytes::len).sum();
        READ_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Key>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Key>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Key>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Key>,
        offset: &Key,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Key>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Key,
        to: &Key,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        assert!(is_remote(Path::new("s3://bucket/events/")));
        assert!(is_remote(Path::new("s3a://bucket/x.parquet")));
        assert!(!is_remote(Path::new("/data/s3/events")));
        assert!(!is_remote(Path::new("data/s3:/x")));
        let u = url_of(Path::new("s3://b/a%20b/x.parquet")).unwrap();
        assert_eq!(key(&u).unwrap().as_ref(), "a b/x.parquet");
        assert_eq!(
            key(&Url::parse("s3://b/dir/").unwrap()).unwrap().as_ref(),
            "dir"
        );
        assert_eq!(
            location_of(&u, &Key::from("a/y.parquet")),
            PathBuf::from("s3://b/a/y.parquet")
        );
    }

    #[test]
    fn shared_credentials_file() {
        let text = "[other]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    # comment\n[default]\naws_access_key_id=K\naws_secret_access_key = S\n\
                    aws_session_token = T\n";
        assert_eq!(
            parse_credentials(text, "default"),
            Some(("K".into(), "S".into(), Some("T".into())))
        );
        assert_eq!(
            parse_credentials(text, "other"),
            Some(("A".into(), "B".into(), None))
        );
        assert_eq!(parse_credentials(text, "missing"), None);
    }
}
