//! The task store suite: one set of cases, run against `MemoryTaskStore`, `RedisTaskStore` on a
//! single server and (feature `redis-cluster`) on a 3-master Redis Cluster, each started by
//! the test; plus the manager over Redis (a task's whole life, its Redis commands).

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_affinity::tasks::{TaskRecord, TaskStatus, TaskStore};
use serde_json::json;

/// An id no other case (or concurrently running test) uses.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Direct access to what a Redis-backed store wrote.
trait Raw {
    /// `HGET key field`.
    fn hget(&self, key: &str, field: &str) -> Option<String>;
    /// `HSET key field value`.
    fn hset(&self, key: &str, field: &str, value: &str);
    /// `PTTL key`.
    fn pttl(&self, key: &str) -> i64;
}

/// A store under test.
trait Backend {
    type Store: TaskStore + Clone;
    /// A store; every call returns a store on the same data.
    fn store(&self) -> Self::Store;
    /// Raw access (Redis only).
    fn raw(&self) -> Option<&dyn Raw>;
}

/// How long a case waits for a record to expire by the clock.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

fn record(id: &str, ttl_ms: u64) -> TaskRecord {
    TaskRecord::new(id, "n1", 1_700_000_000_000, ttl_ms)
}

mod cases {
    use super::*;

    pub(crate) async fn create_is_set_if_absent<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("create");
        let first = record(&id, 60_000);
        assert!(store.create(&first).await.unwrap());
        let mut second = record(&id, 60_000);
        second.node = "n2".into();
        assert!(!store.create(&second).await.unwrap(), "ids are unique");
        assert_eq!(store.get(&id).await.unwrap().unwrap().node, "n1");
    }

    pub(crate) async fn concurrent_creates_have_one_winner<B: Backend>(backend: &B) {
        let id = unique("race");
        let mut handles = Vec::new();
        for n in 0..8 {
            let store = backend.store();
            let mut r = record(&id, 60_000);
            r.node = format!("n{n}");
            handles.push(tokio::spawn(async move { store.create(&r).await.unwrap() }));
        }
        let mut wins = 0;
        for h in handles {
            wins += usize::from(h.await.unwrap());
        }
        assert_eq!(wins, 1);
    }

    pub(crate) async fn get_of_unknown_id_is_none<B: Backend>(backend: &B) {
        let store = backend.store();
        assert_eq!(store.get(&unique("unknown")).await.unwrap(), None);
        // Ids with key syntax in them are just other ids.
        for odd in ["a}b", "{x}", "*", "a b"] {
            assert_eq!(store.get(odd).await.unwrap(), None, "{odd}");
        }
    }

    pub(crate) async fn records_round_trip<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("full");
        let mut r = record(&id, 60_000);
        r.status = TaskStatus::InputRequired;
        r.status_message = Some("waiting ✓".into());
        r.poll_interval_ms = Some(250);
        r.input_requests.insert(
            "k".into(),
            json!({"method": "elicitation/create", "params": {"message": "?"}}),
        );
        r.principal = Some("0123abcd".into());
        r.lease_until_ms = 1_700_000_010_000;
        assert!(store.create(&r).await.unwrap());
        assert_eq!(store.get(&id).await.unwrap(), Some(r.clone()));
        let mut done = r.clone();
        done.status = TaskStatus::Failed;
        done.input_requests.clear();
        done.error = Some(json!({"code": -32603, "message": "x"}));
        done.version = 2;
        assert!(store.replace(&done, 1).await.unwrap());
        assert_eq!(store.get(&id).await.unwrap(), Some(done));
    }

    pub(crate) async fn replace_compares_the_version<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("cas");
        let mut r = record(&id, 60_000);
        assert!(!store.replace(&r, 1).await.unwrap(), "nothing to replace");
        assert!(store.create(&r).await.unwrap());
        r.version = 2;
        r.status = TaskStatus::Completed;
        assert!(!store.replace(&r, 5).await.unwrap(), "wrong version");
        assert_eq!(store.get(&id).await.unwrap().unwrap().version, 1);
        assert!(store.replace(&r, 1).await.unwrap());
        assert!(
            !store.replace(&r, 1).await.unwrap(),
            "the same version again"
        );
        let stored = store.get(&id).await.unwrap().unwrap();
        assert_eq!((stored.version, stored.status), (2, TaskStatus::Completed));
    }

    pub(crate) async fn concurrent_replaces_have_one_winner<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("cas-race");
        assert!(store.create(&record(&id, 60_000)).await.unwrap());
        let mut handles = Vec::new();
        for n in 0..8 {
            let store = backend.store();
            let mut r = record(&id, 60_000);
            r.version = 2;
            r.node = format!("n{n}");
            handles.push(tokio::spawn(
                async move { store.replace(&r, 1).await.unwrap() },
            ));
        }
        let mut wins = 0;
        for h in handles {
            wins += usize::from(h.await.unwrap());
        }
        assert_eq!(wins, 1);
    }

    pub(crate) async fn records_expire_after_their_ttl<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("ttl");
        assert!(store.create(&record(&id, 300)).await.unwrap());
        assert!(store.get(&id).await.unwrap().is_some());
        let deadline = tokio::time::Instant::now() + EXPIRY_DEADLINE;
        while store.get(&id).await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "not expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Expired: the id may be created again; a replace finds nothing.
        let mut r = record(&id, 60_000);
        assert!(!store.replace(&r, 1).await.unwrap());
        assert!(store.create(&r).await.unwrap());
        r.version = 2;
        assert!(store.replace(&r, 1).await.unwrap());
    }

    pub(crate) async fn ping_answers<B: Backend>(backend: &B) {
        backend.store().ping().await.expect("ping");
    }

    // --- Redis only -----------------------------------------------------------------------

    pub(crate) async fn the_record_is_one_hash_with_its_ttl<B: Backend>(backend: &B) {
        let raw = backend.raw().expect("redis");
        let store = backend.store();
        let id = unique("layout");
        let mut r = record(&id, 60_000);
        assert!(store.create(&r).await.unwrap());
        let key = format!("mcp:task:{{{id}}}");
        assert_eq!(raw.hget(&key, "v").as_deref(), Some("1"));
        let json: serde_json::Value = serde_json::from_str(&raw.hget(&key, "r").unwrap()).unwrap();
        assert_eq!(json["id"], id);
        assert_eq!(json["status"], "working");
        let pttl = raw.pttl(&key);
        assert!((59_000..=60_000).contains(&pttl), "{pttl}");
        // A replace restarts the expiry with the record's ttl.
        r.version = 2;
        r.ttl_ms = 120_000;
        assert!(store.replace(&r, 1).await.unwrap());
        let pttl = raw.pttl(&key);
        assert!((119_000..=120_000).contains(&pttl), "{pttl}");
        assert_eq!(raw.hget(&key, "v").as_deref(), Some("2"));
    }

    pub(crate) async fn invalid_records_are_reported_not_trusted<B: Backend>(backend: &B) {
        let raw = backend.raw().expect("redis");
        let store = backend.store();
        let id = unique("junk");
        let key = format!("mcp:task:{{{id}}}");
        raw.hset(&key, "r", "{not json");
        let err = store.get(&id).await.unwrap_err();
        assert!(err.is_invalid_record(), "{err}");
    }
}

/// Runs `$m!` with the names of all shared cases.
macro_rules! all_cases {
    ($m:ident) => {
        $m!(
            create_is_set_if_absent,
            concurrent_creates_have_one_winner,
            get_of_unknown_id_is_none,
            records_round_trip,
            replace_compares_the_version,
            concurrent_replaces_have_one_winner,
            records_expire_after_their_ttl,
            ping_answers,
        );
    };
}

/// The cases that need raw access to what Redis holds.
macro_rules! redis_cases {
    ($m:ident) => {
        $m!(
            the_record_is_one_hash_with_its_ttl,
            invalid_records_are_reported_not_trusted
        );
    };
}

macro_rules! test_per_case {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let backend = backend();
                cases::$case(&backend).await;
            }
        )*
    };
}

mod memory {
    use super::*;
    use mcp_affinity::tasks::MemoryTaskStore;

    struct Memory(MemoryTaskStore);

    impl Backend for Memory {
        type Store = MemoryTaskStore;
        fn store(&self) -> MemoryTaskStore {
            self.0.clone()
        }
        fn raw(&self) -> Option<&dyn Raw> {
            None
        }
    }

    fn backend() -> Memory {
        Memory(MemoryTaskStore::new())
    }

    all_cases!(test_per_case);
}

#[cfg(feature = "redis")]
impl Raw for redis_support::RedisServer {
    fn hget(&self, key: &str, field: &str) -> Option<String> {
        self.cmd(&["HGET", key, field])
    }
    fn hset(&self, key: &str, field: &str, value: &str) {
        let _: i64 = self.cmd(&["HSET", key, field, value]);
    }
    fn pttl(&self, key: &str) -> i64 {
        self.cmd(&["PTTL", key])
    }
}

#[cfg(feature = "redis")]
mod redis_single {
    use super::*;
    use crate::redis_support::RedisServer;
    use mcp_affinity::tasks::{RedisTaskStore, TaskManager};

    struct Single(RedisServer);

    impl Backend for Single {
        type Store = RedisTaskStore;
        fn store(&self) -> RedisTaskStore {
            RedisTaskStore::builder(self.0.url())
                .build_lazy()
                .expect("store")
        }
        fn raw(&self) -> Option<&dyn Raw> {
            Some(&self.0)
        }
    }

    fn backend() -> Single {
        Single(RedisServer::start())
    }

    all_cases!(test_per_case);
    redis_cases!(test_per_case);

    #[tokio::test]
    async fn a_prefix_with_braces_is_refused_when_built() {
        let err = RedisTaskStore::builder("redis://127.0.0.1:1/")
            .with_prefix("a{b")
            .build_lazy()
            .unwrap_err();
        assert_eq!((err.component(), err.field()), ("tasks", "prefix"));
    }

    #[tokio::test]
    async fn redis_down_is_an_error_not_a_hang() {
        let mut server = RedisServer::start();
        let store = RedisTaskStore::builder(server.url())
            .with_command_timeout(Duration::from_millis(200))
            .build_lazy()
            .unwrap();
        store.ping().await.unwrap();
        server.kill();
        let err = store.get("x").await.unwrap_err();
        assert!(err.is_unavailable() || err.is_timeout(), "{err}");
        // The manager answers -32603 rather than creating a task it could not store.
        let tasks = TaskManager::builder("n1", store).build().unwrap();
        let e = tasks
            .start(None, |_t| async { Ok(json!({})) })
            .await
            .unwrap_err();
        assert_eq!(e.code, -32603);
        assert_eq!(tasks.running(), 0);
    }

    /// A task's whole life through the manager over Redis, and what it costs in Redis
    /// commands: one script to create, one `HGET` per `tasks/get` (of a task not running
    /// here), one script per change.
    #[tokio::test]
    async fn a_task_over_redis_and_its_commands() {
        let server = RedisServer::start();
        let store = RedisTaskStore::builder(server.url()).build_lazy().unwrap();
        // Load the scripts once, outside the count.
        store.ping().await.unwrap();
        let a = TaskManager::builder("a", store.clone()).build().unwrap();
        let b = TaskManager::builder("b", store).build().unwrap();
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let created = a
            .start(None, move |task| async move {
                task.set_status_message("started").await;
                g.notified().await;
                Ok(json!({"content": [{"type": "text", "text": "ok"}]}))
            })
            .await
            .unwrap();
        let id = json!({"taskId": created["taskId"]});
        // Node b reads it from Redis: it exists at once.
        let got = b.answer("tasks/get", &id, None).await.unwrap();
        assert_eq!(got["taskId"], created["taskId"]);
        // Once its status message is stored, the task writes nothing until it ends (its lease
        // is renewed after a third of 10 s).
        while b.answer("tasks/get", &id, None).await.unwrap()["statusMessage"] != "started" {
            tokio::task::yield_now().await;
        }
        server.reset_stats();
        for _ in 0..10 {
            b.answer("tasks/get", &id, None).await.unwrap();
        }
        assert_eq!(server.command_count("hget"), 10, "one HGET per tasks/get");
        assert_eq!(server.command_count("evalsha"), 0, "reads write nothing");
        gate.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = b.answer("tasks/get", &id, None).await.unwrap();
            if got["status"] == "completed" {
                assert_eq!(got["result"]["content"][0]["text"], "ok");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let key = format!("mcp:task:{{{}}}", created["taskId"].as_str().unwrap());
        let pttl: i64 = server.cmd(&["PTTL", &key]);
        assert!(pttl > 290_000, "terminal: readable for the ttl, {pttl}");
    }
}

#[cfg(feature = "redis-cluster")]
mod redis_cluster {
    use super::*;
    use crate::redis_support::RedisCluster;
    use mcp_affinity::tasks::RedisTaskStore;

    struct Cluster(RedisCluster);

    impl Raw for RedisCluster {
        fn hget(&self, key: &str, field: &str) -> Option<String> {
            self.cmd(&["HGET", key, field])
        }
        fn hset(&self, key: &str, field: &str, value: &str) {
            let _: i64 = self.cmd(&["HSET", key, field, value]);
        }
        fn pttl(&self, key: &str) -> i64 {
            self.cmd(&["PTTL", key])
        }
    }

    impl Backend for Cluster {
        type Store = RedisTaskStore;
        fn store(&self) -> RedisTaskStore {
            RedisTaskStore::cluster_builder(self.0.urls())
                .build_lazy()
                .expect("store")
        }
        fn raw(&self) -> Option<&dyn Raw> {
            Some(&self.0)
        }
    }

    /// All shared cases, in sequence, on one 3-master cluster (a cluster per case would cost
    /// seconds each); then the keys really are spread over the masters.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn suite_on_a_three_master_cluster() {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
            .await
            .expect("cluster");
        let backend = Cluster(cluster);
        macro_rules! run_in_sequence {
            ($($case:ident),* $(,)?) => {
                $(
                    eprintln!("cluster case: {}", stringify!($case));
                    cases::$case(&backend).await;
                )*
            };
        }
        all_cases!(run_in_sequence);
        redis_cases!(run_in_sequence);

        let store = backend.store();
        for n in 0..30 {
            assert!(
                store
                    .create(&record(&unique(&format!("spread{n}")), 60_000))
                    .await
                    .unwrap()
            );
        }
        for node in backend.0.nodes() {
            assert!(
                !node.keys("mcp:task:{spread*").is_empty(),
                "every master holds tasks"
            );
        }
    }
}
