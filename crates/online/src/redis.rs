//! The shared store, on a Redis server or a Redis Cluster (`docs/adr/0007-shared-online-store.md`).
//!
//! Layout, under the key prefix `P` (`quiver:PROJECT` by default) and, per source, a hash tag
//! `T` (a hash of the source's name, so a Redis Cluster keeps all of a source's keys in one
//! slot while different sources spread over the masters):
//!
//! - `P:{T}:fv:VIEW` — a hash: field = encoded entity key, value = the stored row;
//! - `P:{T}:watermarks` — a hash: field = view, value = the watermark (decimal microseconds);
//! - `P:{T}:pushed` — a list of the batches pushed for the online store alone, oldest first;
//! - `P:{T}:pushes` — how many pushes the source has taken (the version pushes check);
//! - `P:format` — the layout version.
//!
//! Every write is one command (`HSET` of a view's rows, or of a watermark) or one Lua script
//! over keys of one slot (a push; rows with their watermark), which Redis runs atomically: a
//! reader (one `HMGET`) sees all of a write or none of it, and a client killed mid-call
//! leaves the write either applied or not (a command Redis has not read whole is never run).
//! A lookup is one `HMGET` per view.

use std::collections::HashMap;
use std::time::Duration;

use quiver_core::config::OnlineStoreConfig;
use quiver_core::store::{OnlineStore, PushLog, ViewRows};
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value};

use crate::{Error, Result};

/// The layout version of the keys this build writes, checked on open.
pub const REDIS_FORMAT: &str = "1";

/// How long a read may take before it counts as the server being unavailable: lookups must
/// fail promptly while Redis is down, not hang.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write may take (a materialization chunk of thousands of rows).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows per write call a materialization uses: Redis runs one command at a time, so a chunk
/// delays concurrent lookups by the time it takes — about 1 ms per thousand rows of 20
/// features as one `HSET` (SLOWLOG of the load benchmark: 2 000-row writes median 2 ms,
/// longest 10 ms; 5 000-row ones median 4–5 ms, longest 26–32 ms). Larger chunks materialize
/// a little faster (5 000: 252–278 k rows/s in 2 runs, 2 000: 200–255 k, median 238 k, in 5
/// runs on 2 cores) but stall lookups longer; serving comes first.
const WRITE_CHUNK: usize = 2_000;
/// Password and user of the Redis server, from the environment only.
const PASSWORD_ENV: &str = "QUIVER_REDIS_PASSWORD";
const USERNAME_ENV: &str = "QUIVER_REDIS_USERNAME";

/// Which source each feature view computes from: keys that change together (a push writes
/// every view of its source and the source's log) share the source's hash slot.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// View name → source name. A view not listed is its own group.
    pub source_of: HashMap<String, String>,
}

impl Layout {
    /// The layout of a repository's views.
    pub fn of_repo(repo: &quiver_core::Repo) -> Layout {
        Layout {
            source_of: repo
                .views
                .values()
                .map(|v| (v.name.clone(), v.source.clone()))
                .collect(),
        }
    }
}

/// A connection to one server (reconnecting by itself) or to a cluster.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Write rows of one view and its watermark. KEYS: view hash, watermarks hash.
/// ARGV: view, watermark, then key, value, key, value, ...
const WRITE: &str = r"
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
";

/// Store a push if the source's push count is still the one it was computed against.
/// KEYS: count, log, then one hash per view. ARGV: expected count, "1" to log + batch (or
/// "0" + ""), then per view its row count and key, value, ...
const PUSH: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], count + 1)
if ARGV[2] == '1' then redis.call('RPUSH', KEYS[2], ARGV[3]) end
local at = 4
for v = 3, #KEYS do
  local last = at + 2 * tonumber(ARGV[at])
  at = at + 1
  while at <= last do
    local j = math.min(at + 999, last)
    redis.call('HSET', KEYS[v], unpack(ARGV, at, j))
    at = j + 1
  end
end
return 1
";

/// The log and the count of a source, read together. KEYS: count, log.
const PUSHED: &str = r"
return {redis.call('GET', KEYS[1]) or '0', redis.call('LRANGE', KEYS[2], 0, -1)}
";

/// Delete a view's values and watermark together. KEYS: view hash, watermarks hash. ARGV: view.
const CLEAR: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// The shared online store.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    /// The server addresses, for messages.
    name: String,
    layout: Layout,
    scripts: Scripts,
}

struct Scripts {
    write: redis::Script,
    push: redis::Script,
    pushed: redis::Script,
    clear: redis::Script,
}

/// The hash tag of a group of keys: 16 hex digits of a hash of the source's name (names
/// may hold braces, which would cut a tag short).
fn tag(group: &str) -> String {
    let h = quiver_core::hash::hash_bytes(group.as_bytes()).to_string();
    h[..16.min(h.len())].to_string()
}

impl RedisStore {
    /// Connect to the server or cluster `config` names and check the layout version there.
    pub async fn open(config: &OnlineStoreConfig, layout: Layout) -> Result<RedisStore> {
        let name = config.describe();
        let bad = |message: String| Error::Redis {
            store: name.clone(),
            message,
        };
        let password = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
        let username = std::env::var(USERNAME_ENV).ok().filter(|u| !u.is_empty());
        let (conn, prefix) = match config {
            OnlineStoreConfig::Redis { url, key_prefix } => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| bad(format!("not a Redis URL: {}", describe(&e))))?;
                let mut settings = info.redis_settings().clone();
                if let Some(p) = &password {
                    settings = settings.set_password(p);
                }
                if let Some(u) = &username {
                    settings = settings.set_username(u);
                }
                info = info.set_redis_settings(settings);
                let client = redis::Client::open(info).map_err(|e| bad(describe(&e)))?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(WRITE_TIMEOUT))
                    // Reconnect in the background with short waits: lookups fail fast while
                    // the server is down and succeed again as soon as it is back.
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let conn = tokio::time::timeout(
                    READ_TIMEOUT * 2,
                    redis::aio::ConnectionManager::new_with_config(client, cfg),
                )
                .await
                .map_err(|_| unavailable(&name, "connecting timed out"))?
                .map_err(|e| classify(&name, e))?;
                (Conn::Single(conn), key_prefix.clone())
            }
            OnlineStoreConfig::RedisCluster { nodes, key_prefix } => {
                let mut b =
                    redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                        .connection_timeout(Duration::from_secs(1))
                        .response_timeout(WRITE_TIMEOUT)
                        .retries(2);
                if let Some(p) = &password {
                    b = b.password(p);
                }
                if let Some(u) = &username {
                    b = b.username(u);
                }
                let client = b.build().map_err(|e| bad(describe(&e)))?;
                let conn = tokio::time::timeout(READ_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| unavailable(&name, "connecting timed out"))?
                    .map_err(|e| classify(&name, e))?;
                (Conn::Cluster(conn), key_prefix.clone())
            }
            OnlineStoreConfig::Sled { path } => {
                return Err(bad(format!(
                    "{} is a sled folder, not a Redis store",
                    path.display()
                )));
            }
        };
        let store = RedisStore {
            conn,
            prefix,
            name,
            layout,
            scripts: Scripts {
                write: redis::Script::new(WRITE),
                push: redis::Script::new(PUSH),
                pushed: redis::Script::new(PUSHED),
                clear: redis::Script::new(CLEAR),
            },
        };
        store.check_format().await?;
        Ok(store)
    }

    /// The key prefix of this store's keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn check_format(&self) -> Result<()> {
        let key = format!("{}:format", self.prefix);
        let set: bool = self
            .run(
                redis::cmd("SET").arg(&key).arg(REDIS_FORMAT).arg("NX"),
                READ_TIMEOUT,
            )
            .await
            .map(|v: Option<String>| v.is_some())?;
        if set {
            return Ok(());
        }
        let found: Option<String> = self.run(redis::cmd("GET").arg(&key), READ_TIMEOUT).await?;
        match found {
            Some(f) if f == REDIS_FORMAT => Ok(()),
            other => Err(Error::Format {
                store: self.name.clone(),
                found: other.unwrap_or_default(),
                expected: REDIS_FORMAT.to_string(),
                remedy: "delete the keys under the prefix (or choose another key_prefix) and materialize again",
            }),
        }
    }

    fn group_of<'a>(&'a self, view: &'a str) -> &'a str {
        self.layout.source_of.get(view).map_or(view, String::as_str)
    }

    fn group_key(&self, group: &str, what: &str) -> String {
        format!("{}:{{{}}}:{what}", self.prefix, tag(group))
    }

    fn view_key(&self, view: &str) -> String {
        self.group_key(self.group_of(view), &format!("fv:{view}"))
    }

    fn watermarks_key(&self, view: &str) -> String {
        self.group_key(self.group_of(view), "watermarks")
    }

    /// Run a command with a bound on its time: a server that does not answer is unavailable.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd, limit: Duration) -> Result<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(limit, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| classify(&self.name, e)),
            Err(_) => Err(unavailable(&self.name, "no answer in time")),
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: redis::ScriptInvocation<'_>,
        limit: Duration,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(limit, call.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| classify(&self.name, e)),
            Err(_) => Err(unavailable(&self.name, "no answer in time")),
        }
    }
}

fn unavailable(store: &str, message: &str) -> Error {
    Error::Unavailable {
        store: store.to_string(),
        message: message.to_string(),
    }
}

/// A Redis error without anything the connection settings hold (the crate's messages name
/// the server's reply or the I/O failure, not credentials).
fn describe(e: &RedisError) -> String {
    e.to_string()
}

/// Down, restarting, failing over or unreachable is "unavailable" (retry later); anything
/// else is an error of the request or the server's configuration.
fn classify(store: &str, e: RedisError) -> Error {
    let down = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
            ) | ErrorKind::ClusterConnectionNotFound
        );
    if down {
        unavailable(store, &describe(&e))
    } else {
        Error::Redis {
            store: store.to_string(),
            message: describe(&e),
        }
    }
}

/// The arguments of rows: key, value, key, value, ...
fn pairs<'a>(inv: &mut redis::ScriptInvocation<'a>, rows: &'a [(Vec<u8>, Vec<u8>)]) {
    for (k, v) in rows {
        inv.arg(k.as_slice()).arg(v.as_slice());
    }
}

#[async_trait::async_trait]
impl OnlineStore for RedisStore {
    async fn write(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        watermark: Option<i64>,
    ) -> quiver_core::Result<()> {
        match (rows.is_empty(), watermark) {
            (true, None) => Ok(()),
            // One command is atomic by itself, and a native `HSET` costs Redis about half
            // what the script's copies into and out of Lua do (benches/README.md): rows
            // alone, a materialization's chunks, go this way.
            (false, None) => {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(self.view_key(view));
                for (k, v) in rows {
                    cmd.arg(k.as_slice()).arg(v.as_slice());
                }
                let _: i64 = self.run(&cmd, WRITE_TIMEOUT).await?;
                Ok(())
            }
            (true, Some(w)) => {
                let _: i64 = self
                    .run(
                        redis::cmd("HSET")
                            .arg(self.watermarks_key(view))
                            .arg(view)
                            .arg(w.to_string()),
                        WRITE_TIMEOUT,
                    )
                    .await?;
                Ok(())
            }
            // Rows and the watermark together: two keys, one script.
            (false, Some(w)) => {
                let mut inv = self.scripts.write.prepare_invoke();
                inv.key(self.view_key(view))
                    .key(self.watermarks_key(view))
                    .arg(view)
                    .arg(w.to_string());
                pairs(&mut inv, rows);
                let _: i64 = self.invoke(inv, WRITE_TIMEOUT).await?;
                Ok(())
            }
        }
    }

    async fn get(&self, view: &str, entity: &[u8]) -> quiver_core::Result<Option<Vec<u8>>> {
        Ok(self
            .run(
                redis::cmd("HGET").arg(self.view_key(view)).arg(entity),
                READ_TIMEOUT,
            )
            .await?)
    }

    async fn get_many(
        &self,
        view: &str,
        entities: &[Vec<u8>],
    ) -> quiver_core::Result<Vec<Option<Vec<u8>>>> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.view_key(view));
        for e in entities {
            cmd.arg(e.as_slice());
        }
        Ok(self.run(&cmd, READ_TIMEOUT).await?)
    }

    async fn watermark(&self, view: &str) -> quiver_core::Result<Option<i64>> {
        let v: Option<String> = self
            .run(
                redis::cmd("HGET").arg(self.watermarks_key(view)).arg(view),
                READ_TIMEOUT,
            )
            .await?;
        v.map(|s| {
            s.parse::<i64>().map_err(|_| {
                quiver_core::Error::Store(format!(
                    "online store {}: the watermark of view `{view}` is `{s}`, not a number",
                    self.name
                ))
            })
        })
        .transpose()
    }

    async fn clear(&self, view: &str) -> quiver_core::Result<()> {
        let mut inv = self.scripts.clear.prepare_invoke();
        inv.key(self.view_key(view))
            .key(self.watermarks_key(view))
            .arg(view);
        let _: i64 = self.invoke(inv, WRITE_TIMEOUT).await?;
        Ok(())
    }

    async fn size_bytes(&self) -> quiver_core::Result<Option<u64>> {
        // A cluster's memory is spread over its masters; `INFO` answers for one node.
        if matches!(self.conn, Conn::Cluster(_)) {
            return Ok(None);
        }
        let info: String = self
            .run(redis::cmd("INFO").arg("memory"), READ_TIMEOUT)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok()))
    }

    async fn entities(&self, view: &str) -> quiver_core::Result<Option<u64>> {
        let n: u64 = self
            .run(redis::cmd("HLEN").arg(self.view_key(view)), READ_TIMEOUT)
            .await?;
        Ok(Some(n))
    }

    async fn pushed(&self, source: &str) -> quiver_core::Result<PushLog> {
        let mut inv = self.scripts.pushed.prepare_invoke();
        inv.key(self.group_key(source, "pushes"))
            .key(self.group_key(source, "pushed"));
        let (count, batches): (String, Vec<Vec<u8>>) = self.invoke(inv, READ_TIMEOUT).await?;
        let pushes = count.parse().map_err(|_| {
            quiver_core::Error::Store(format!(
                "online store {}: the push count of source `{source}` is `{count}`, not a number",
                self.name
            ))
        })?;
        Ok(PushLog { batches, pushes })
    }

    async fn push(
        &self,
        source: &str,
        batch: Option<&[u8]>,
        views: &[ViewRows],
        after: u64,
    ) -> quiver_core::Result<()> {
        for (view, _) in views {
            if self.group_of(view) != source {
                return Err(quiver_core::Error::Store(format!(
                    "online store {}: view `{view}` is not computed from source `{source}`",
                    self.name
                )));
            }
        }
        let mut inv = self.scripts.push.prepare_invoke();
        inv.key(self.group_key(source, "pushes"))
            .key(self.group_key(source, "pushed"));
        for (view, _) in views {
            inv.key(self.view_key(view));
        }
        inv.arg(after.to_string());
        match batch {
            Some(b) => inv.arg("1").arg(b),
            None => inv.arg("0").arg(""),
        };
        for (_, rows) in views {
            inv.arg(rows.len());
            pairs(&mut inv, rows);
        }
        let stored: i64 = self.invoke(inv, WRITE_TIMEOUT).await?;
        if stored == 0 {
            return Err(Error::Conflict {
                store: self.name.clone(),
                pushed_to: source.to_string(),
            }
            .into());
        }
        Ok(())
    }

    fn write_chunk(&self) -> usize {
        WRITE_CHUNK
    }
}
