//! The registry store suite: one set of cases, run against `MemoryStore`, `RedisStore` on a
//! single server and (feature `redis-cluster`) `RedisStore` on a 3-master Redis Cluster; plus the
//! Redis outage behaviour (timeouts, reconnects, starting while Redis is down).

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_affinity::registry::{
    Claim, NodeRecord, NodeState, RecordKey, RegistryStore, SessionRecord, store::StoreWrite,
};

const MONTH: Duration = Duration::from_secs(30 * 24 * 60 * 60);

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

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Direct access to what a Redis-backed store wrote.
trait Raw {
    /// `GET key`.
    fn value(&self, key: &str) -> Option<String>;
    /// `TTL key`.
    fn expiry(&self, key: &str) -> i64;
    /// `SET key value`.
    fn put(&self, key: &str, value: &str);
    /// `DEL key`.
    fn delete(&self, key: &str);
    /// Score of `member` in the sorted set `key`.
    fn zscore(&self, key: &str, member: &str) -> Option<f64>;
    /// `ZADD key score member`.
    fn zadd(&self, key: &str, score: i64, member: &str);
    /// `SISMEMBER key member`.
    fn is_member(&self, key: &str, member: &str) -> bool;
    /// Any command about the key `args[1]`, its answer ignored (it must not fail).
    fn run(&self, args: &[&str]);
}

/// How long a case waits for a record to expire by the clock.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

/// Polls `check` every 50 ms until it holds, at most [`EXPIRY_DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EXPIRY_DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {EXPIRY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store under test.
trait Backend {
    type Store: RegistryStore + Clone;
    /// A store with the default prefix; every call returns a store on the same data.
    fn store(&self) -> Self::Store;
    /// A store with another key prefix, where prefixes apply.
    fn store_with_prefix(&self, prefix: &str) -> Option<Self::Store>;
    /// Raw access to the data, for Redis.
    fn raw(&self) -> Option<&dyn Raw>;
}

/// The arrange step of many cases: registers `id` for a month, which must make a new record.
async fn register_new(store: &impl RegistryStore, id: &str, record: &SessionRecord) {
    assert!(
        store.register(id, record, MONTH).await.expect("register"),
        "{id}: already registered"
    );
}

/// A batch's register write.
fn register_write<'a>(id: &'a str, record: &'a SessionRecord, ttl: Duration) -> StoreWrite<'a> {
    StoreWrite::Register { id, record, ttl }
}

/// Asserts a TTL reported by Redis is within a minute below `expected`.
fn assert_ttl_near(ttl: i64, expected: Duration) {
    let expected = i64::try_from(expected.as_secs()).unwrap_or(i64::MAX);
    assert!(
        ttl <= expected && ttl > expected - 60,
        "TTL {ttl}, expected about {expected}"
    );
}

/// The shared cases. Each takes a backend and uses ids and node names of its own.
mod cases {
    use super::*;
    use bytes::Bytes;
    use mcp_affinity::registry::store::EventWrite;

    fn ev(n: u32) -> Bytes {
        Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","method":"n","params":{{"n":{n}}}}}"#
        ))
    }

    async fn append(
        store: &impl RegistryStore,
        id: &str,
        seqs: impl IntoIterator<Item = u32>,
        max_len: usize,
    ) {
        let data: Vec<(u32, Bytes)> = seqs.into_iter().map(|n| (n, ev(n))).collect();
        let writes: Vec<EventWrite<'_>> = data
            .iter()
            .map(|(seq, data)| EventWrite::standalone(id, *seq, data))
            .collect();
        store
            .append_events(&writes, max_len, Duration::from_secs(600))
            .await
            .expect("append events");
    }

    fn seqs(events: &[(u32, Bytes)]) -> Vec<u32> {
        events.iter().map(|e| e.0).collect()
    }

    pub(crate) async fn events_are_read_after_an_id_with_the_top<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("ev");
        let other = unique("ev");
        let empty = store.read_events(&id, Some(0), 10).await.expect("read");
        assert_eq!((empty.top, empty.events.len()), (0, 0));
        // Two sessions interleaved in one batch: each keeps its own order.
        let (a, b) = (ev(1), ev(2));
        let writes = [
            EventWrite::standalone(&id, 1, &a),
            EventWrite::standalone(&other, 1, &a),
            EventWrite::standalone(&id, 2, &b),
        ];
        store
            .append_events(&writes, 256, Duration::from_secs(600))
            .await
            .expect("append");
        append(&store, &id, 3..=5, 256).await;
        let page = store.read_events(&id, Some(2), 10).await.expect("read");
        assert_eq!(page.top, 5);
        assert_eq!(page.events, vec![(3, ev(3)), (4, ev(4)), (5, ev(5))]);
        let page = store.read_events(&id, Some(0), 2).await.expect("read");
        assert_eq!(
            (page.top, seqs(&page.events)),
            (5, vec![1, 2]),
            "at most `max`"
        );
        let page = store.read_events(&id, None, 10).await.expect("read");
        assert_eq!((page.top, page.events.len()), (5, 0), "no id: the top only");
        let page = store.read_events(&id, Some(5), 10).await.expect("read");
        assert_eq!((page.top, page.events.len()), (5, 0));
        let page = store.read_events(&other, Some(0), 10).await.expect("read");
        assert_eq!((page.top, seqs(&page.events)), (1, vec![1]));
    }

    pub(crate) async fn late_event_writes_are_skipped<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("ev");
        append(&store, &id, 1..=4, 256).await;
        // A former owner writing late (ids at or below the top), then the new owner: the
        // late ones are skipped without failing the batch.
        let late = Bytes::from_static(b"late");
        let next = ev(5);
        let writes = [
            EventWrite::standalone(&id, 3, &late),
            EventWrite::standalone(&id, 4, &late),
            EventWrite::standalone(&id, 5, &next),
        ];
        store
            .append_events(&writes, 256, Duration::from_secs(600))
            .await
            .expect("a late write is not an error");
        let page = store.read_events(&id, Some(0), 10).await.expect("read");
        assert_eq!(page.top, 5);
        assert_eq!(page.events, (1..=5).map(|n| (n, ev(n))).collect::<Vec<_>>());
    }

    pub(crate) async fn event_logs_are_trimmed_to_about_their_bound<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("ev");
        for chunk in 0..6u32 {
            append(&store, &id, chunk * 100 + 1..=chunk * 100 + 100, 50).await;
        }
        let page = store.read_events(&id, Some(0), 1000).await.expect("read");
        assert_eq!(page.top, 600);
        let got = seqs(&page.events);
        // The bound, or about it (a store may keep a little more; Redis keeps a ring of it).
        assert!(got.len() >= 50 && got.len() <= 150, "{} kept", got.len());
        assert_eq!(got.last(), Some(&600));
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "the newest, contiguous"
        );
    }

    pub(crate) async fn post_answers_are_kept_beside_the_standalone_stream<B: Backend>(
        backend: &B,
    ) {
        use mcp_affinity::session::RequestEvent;
        let store = backend.store();
        let id = unique("ev");
        // Standalone 1..=3 (ordinals 1..=3), then a POST answer on stream 7 (ordinals 4..),
        // long enough to push every standalone event out of a 256-event log.
        append(&store, &id, 1..=3, 256).await;
        let data: Vec<Bytes> = (1..=300u32).map(ev).collect();
        let writes: Vec<EventWrite<'_>> = data
            .iter()
            .zip(1u32..)
            .map(|(d, seq)| {
                let mut w = EventWrite::standalone(&id, seq, d);
                w.stream = 7;
                w.ordinal = 3 + u64::from(seq);
                w.last = seq == 300;
                w
            })
            .collect();
        store
            .append_events(&writes, 256, Duration::from_secs(600))
            .await
            .expect("append");
        let page = store.read_events(&id, Some(0), 256).await.expect("read");
        assert_eq!(page.top, 3, "the standalone top outlives its events");
        assert_eq!(page.ordinal, 303);
        assert!(page.events.is_empty(), "pushed out by newer events");
        assert!(page.requests.len() >= 256, "{} kept", page.requests.len());
        let last = page.requests.last().expect("events");
        assert_eq!(
            last,
            &RequestEvent::new(7, 300, ev(300)).with_last(true),
            "the newest, and the answer ends its stream"
        );
        assert!(
            page.requests.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "in order, contiguous"
        );
        // A late write under an old ordinal changes nothing.
        let late = Bytes::from_static(b"late");
        let mut w = EventWrite::standalone(&id, 9, &late);
        w.ordinal = 2;
        store
            .append_events(&[w], 256, Duration::from_secs(600))
            .await
            .expect("append");
        let again = store.read_events(&id, Some(0), 256).await.expect("read");
        assert_eq!((again.top, again.ordinal), (3, 303));
        assert_eq!(again.requests, page.requests);
        store.remove_events(&[&id]).await.expect("remove");
        let gone = store.read_events(&id, Some(0), 256).await.expect("read");
        assert_eq!(
            (gone.top, gone.ordinal, gone.requests.len()),
            (0, 0, 0),
            "removed with its top"
        );
    }

    pub(crate) async fn event_logs_expire_and_are_removed<B: Backend>(backend: &B) {
        // Redis keeps the events of many sessions in one hash, whose expiry this case sets
        // short: under a prefix of its own, so the other cases' events stay.
        let prefix = format!("{}:mcp:session:", unique("exp"));
        let store = backend
            .store_with_prefix(&prefix)
            .unwrap_or_else(|| backend.store());
        let id = unique("ev");
        let keep = unique("ev");
        append(&store, &id, 1..=3, 256).await;
        append(&store, &keep, 1..=3, 256).await;
        if let Some(raw) = backend.raw() {
            assert_ttl_near(
                raw.expiry(&RecordKey::new(prefix.as_str()).events(&id)),
                Duration::from_secs(600),
            );
        }
        store.remove_events(&[&id]).await.expect("remove");
        let page = store.read_events(&id, Some(0), 10).await.expect("read");
        assert_eq!((page.top, page.events.len()), (0, 0));
        let page = store.read_events(&keep, Some(0), 10).await.expect("read");
        assert_eq!(page.top, 3, "another session's log stays");
        // An expiry shorter than the writes' is set again by each batch.
        let short = ev(4);
        store
            .append_events(
                &[EventWrite::standalone(&keep, 4, &short)],
                256,
                Duration::from_millis(1),
            )
            .await
            .expect("append");
        let mut gone = false;
        for _ in 0..200 {
            if store.read_events(&keep, None, 1).await.expect("read").top == 0 {
                gone = true;
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(gone, "the log expired");
    }

    pub(crate) async fn register_is_set_if_absent<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("reg");
        let first = SessionRecord::new(unique("node-a"), "inc-1");
        let second = SessionRecord::new(unique("node-b"), "inc-1");

        register_new(&store, &id, &first).await;
        assert!(
            !store
                .register(&id, &second, MONTH)
                .await
                .expect("register again"),
            "NX: the second record must not win"
        );
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(first.clone())
        );
        // Retrying the very same write (e.g. after a timeout) is not a collision; it sets the
        // record's TTL again (checked below with a shorter one).
        let retried = Duration::from_secs(600);
        assert!(store.register(&id, &first, retried).await.expect("retry"));

        if let Some(raw) = backend.raw() {
            let key = format!("mcp:session:{{{id}}}");
            assert_eq!(key, RecordKey::default().session(&id));
            assert_eq!(
                raw.value(&key),
                Some(first.to_json()),
                "the stored value is the record's JSON"
            );
            let json = format!(
                r#"{{"n":"{}","i":"inc-1","c":{}}}"#,
                first.node, first.created_at
            );
            assert_eq!(raw.value(&key), Some(json));
            assert_ttl_near(raw.expiry(&key), retried);
        }
    }

    pub(crate) async fn concurrent_registers_have_one_winner<B: Backend>(backend: &B) {
        let id = unique("race");
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..16 {
            let store = backend.store();
            let id = id.clone();
            tasks.spawn(async move {
                let record = SessionRecord::new(format!("node-{n}"), "inc");
                let won = store.register(&id, &record, MONTH).await.expect("register");
                (won, record)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (won, record) = joined.expect("task");
            if won {
                winners.push(record);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one concurrent register wins");
        assert_eq!(
            backend.store().lookup(&id).await.expect("lookup"),
            winners.pop()
        );
    }

    pub(crate) async fn lookup_of_unknown_id_is_none<B: Backend>(backend: &B) {
        assert_eq!(
            backend
                .store()
                .lookup(&unique("nobody"))
                .await
                .expect("lookup"),
            None
        );
    }

    pub(crate) async fn remove_deletes_whoever_owns<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("del");
        let node = unique("node");
        let record = SessionRecord::new(&node, "inc-1");
        register_new(&store, &id, &record).await;

        // Another node (the DELETE rule): removed regardless of the owner.
        assert!(backend.store().remove(&id).await.expect("remove"));
        assert_eq!(store.lookup(&id).await.expect("lookup"), None);
        assert!(!store.remove(&id).await.expect("remove again"));

        if let Some(raw) = backend.raw() {
            let keys = RecordKey::default();
            assert_eq!(raw.value(&keys.session(&id)), None);
            assert_eq!(
                raw.zscore(&keys.node_index(&node), &id),
                None,
                "removed from the node index"
            );
        }
    }

    pub(crate) async fn remove_if_owned_compares_node_and_incarnation<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("own");
        let node = unique("node");
        let record = SessionRecord::new(&node, "inc-1");
        register_new(&store, &id, &record).await;

        assert!(
            !store
                .remove_if_owned(&id, "another-node", "inc-1")
                .await
                .expect("wrong node")
        );
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(record.clone()),
            "kept"
        );
        assert!(
            !store
                .remove_if_owned(&id, &node, "inc-0")
                .await
                .expect("wrong incarnation")
        );
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(record.clone()),
            "kept"
        );

        assert!(
            store
                .remove_if_owned(&id, &node, "inc-1")
                .await
                .expect("owner")
        );
        assert_eq!(store.lookup(&id).await.expect("lookup"), None);
        assert!(
            !store
                .remove_if_owned(&id, &node, "inc-1")
                .await
                .expect("again")
        );
        assert!(
            !store
                .remove_if_owned(&unique("nobody"), &node, "inc-1")
                .await
                .expect("unknown")
        );

        if let Some(raw) = backend.raw() {
            let keys = RecordKey::default();
            assert_eq!(
                raw.zscore(&keys.node_index(&node), &id),
                None,
                "removed from the node index"
            );
        }
    }

    pub(crate) async fn refresh_resets_the_ttl<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("ttl");
        let record = SessionRecord::new(unique("node"), "inc-1");
        assert!(
            store
                .register(&id, &record, Duration::from_secs(60))
                .await
                .expect("register")
        );
        if let Some(raw) = backend.raw() {
            assert_ttl_near(
                raw.expiry(&RecordKey::default().session(&id)),
                Duration::from_secs(60),
            );
        }

        assert!(store.refresh(&id, MONTH).await.expect("refresh"));
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(record.clone())
        );
        if let Some(raw) = backend.raw() {
            assert_ttl_near(raw.expiry(&RecordKey::default().session(&id)), MONTH);
            // The index entry expires with the record.
            let score = raw
                .zscore(&RecordKey::default().node_index(&record.node), &id)
                .expect("indexed");
            let expected = (now_unix() + 30 * 24 * 60 * 60) as f64;
            assert!(
                (score - expected).abs() < 120.0,
                "index score {score}, expected about {expected}"
            );
        }

        assert!(
            !store
                .refresh(&unique("nobody"), MONTH)
                .await
                .expect("refresh unknown")
        );
    }

    pub(crate) async fn remove_stale_removes_only_previous_incarnations<B: Backend>(backend: &B) {
        let store = backend.store();
        let node = unique("restarted");
        let other = unique("other");
        let old = SessionRecord::new(&node, "old");
        let older = SessionRecord::new(&node, "older");
        let current = SessionRecord::new(&node, "new");
        let foreign = SessionRecord::new(&other, "old");

        let stale_ids: Vec<String> = (0..3).map(|_| unique("stale")).collect();
        let current_ids: Vec<String> = (0..2).map(|_| unique("current")).collect();
        let foreign_ids: Vec<String> = (0..2).map(|_| unique("foreign")).collect();
        for (n, id) in stale_ids.iter().enumerate() {
            let record = if n == 0 { &older } else { &old };
            register_new(&store, id, record).await;
        }
        for id in &current_ids {
            register_new(&store, id, &current).await;
        }
        for id in &foreign_ids {
            register_new(&store, id, &foreign).await;
        }

        assert_eq!(
            store
                .remove_stale(&node, "new", 2)
                .await
                .expect("remove_stale"),
            3
        );
        for id in &stale_ids {
            assert_eq!(
                store.lookup(id).await.expect("lookup"),
                None,
                "stale record removed"
            );
        }
        for id in &current_ids {
            assert_eq!(
                store.lookup(id).await.expect("lookup"),
                Some(current.clone()),
                "current kept"
            );
        }
        for id in &foreign_ids {
            assert_eq!(
                store.lookup(id).await.expect("lookup"),
                Some(foreign.clone()),
                "other node kept"
            );
        }
        assert_eq!(store.remove_stale(&node, "new", 2).await.expect("again"), 0);
        assert_eq!(
            store
                .remove_stale(&other, "old", 2)
                .await
                .expect("other, current"),
            0
        );
        assert_eq!(
            store
                .remove_stale(&unique("unknown"), "x", 0)
                .await
                .expect("unknown node"),
            0
        );

        if let Some(raw) = backend.raw() {
            let index = RecordKey::default().node_index(&node);
            for id in &stale_ids {
                assert_eq!(
                    raw.zscore(&index, id),
                    None,
                    "stale id dropped from the index"
                );
            }
            for id in &current_ids {
                assert!(raw.zscore(&index, id).is_some(), "current id stays indexed");
            }
            assert!(raw.expiry(&index) > 0, "the index expires");
        }
    }

    pub(crate) async fn remove_stale_pages_through_a_large_index<B: Backend>(backend: &B) {
        let store = backend.store();
        let node = unique("big");
        let old = SessionRecord::new(&node, "old");
        let current = SessionRecord::new(&node, "new");
        let mut current_ids = Vec::new();
        let mut vanished_ids = Vec::new();
        for n in 0..300 {
            let id = unique("page");
            let record = if n % 15 == 0 { &current } else { &old };
            register_new(&store, &id, record).await;
            if n % 15 == 0 {
                current_ids.push(id);
            } else if n % 15 == 1 {
                vanished_ids.push(id);
            }
        }
        // Some old records disappear behind the index's back (expired, or deleted directly).
        let keys = RecordKey::default();
        for id in &vanished_ids {
            match backend.raw() {
                Some(raw) => raw.delete(&keys.session(id)),
                None => assert!(store.remove(id).await.expect("remove")),
            }
        }
        assert_eq!(
            store
                .remove_stale(&node, "new", 16)
                .await
                .expect("remove_stale"),
            300 - current_ids.len() - vanished_ids.len()
        );
        for id in &current_ids {
            assert_eq!(
                store.lookup(id).await.expect("lookup"),
                Some(current.clone())
            );
        }
        if let Some(raw) = backend.raw() {
            for id in &vanished_ids {
                assert_eq!(raw.zscore(&keys.node_index(&node), id), None, "pruned");
            }
        }
        assert_eq!(
            store
                .remove_stale(&node, "new", usize::MAX)
                .await
                .expect("huge batch"),
            0
        );
    }

    pub(crate) async fn custom_prefix<B: Backend>(backend: &B) {
        let prefix = format!("{}:mcp:session:", unique("app"));
        let custom = backend
            .store_with_prefix(&prefix)
            .expect("a Redis case: run on a backend with key prefixes");
        let default = backend.store();
        let id = unique("pfx");
        let record = SessionRecord::new(unique("node"), "inc-1");

        register_new(&custom, &id, &record).await;
        assert_eq!(
            custom.lookup(&id).await.expect("lookup"),
            Some(record.clone())
        );
        assert_eq!(
            default.lookup(&id).await.expect("lookup default"),
            None,
            "prefixes separate stores"
        );
        // The same id under the default prefix is another record.
        assert!(
            default
                .register(&id, &SessionRecord::new("x", "y"), MONTH)
                .await
                .expect("register default")
        );

        if let Some(raw) = backend.raw() {
            let key = format!("{prefix}{{{id}}}");
            assert_eq!(raw.value(&key), Some(record.to_json()));
            assert_ttl_near(raw.expiry(&key), MONTH);
            assert!(
                raw.zscore(&format!("{prefix}node:{{{}}}", record.node), &id)
                    .is_some()
            );
        }
        assert!(
            custom
                .remove_if_owned(&id, &record.node, "inc-1")
                .await
                .expect("remove")
        );
        assert!(
            default.lookup(&id).await.expect("lookup default").is_some(),
            "untouched"
        );
    }

    pub(crate) async fn invalid_records_are_reported_not_trusted<B: Backend>(backend: &B) {
        let raw = backend
            .raw()
            .expect("a Redis case: run on a backend with raw access");
        let store = backend.store();
        let id = unique("junk");
        let key = RecordKey::default().session(&id);
        raw.put(&key, "not a record");

        let err = store.lookup(&id).await.expect_err("junk is no record");
        assert!(err.is_invalid_record(), "{err:?}");
        assert!(
            !store
                .register(&id, &SessionRecord::new("n", "i"), MONTH)
                .await
                .expect("register")
        );
        assert!(
            !store
                .remove_if_owned(&id, "n", "i")
                .await
                .expect("compare-and-delete")
        );
        assert_eq!(
            raw.value(&key).as_deref(),
            Some("not a record"),
            "left alone"
        );
        assert_eq!(
            store
                .remove_stale("n", "j", 10)
                .await
                .expect("remove_stale"),
            0
        );
        assert!(
            store.remove(&id).await.expect("remove"),
            "DELETE removes whatever is there"
        );
        assert_eq!(raw.value(&key), None);
    }

    /// A batch does what its writes do one by one: in order per session, with each write's
    /// own result, the node index kept in step.
    pub(crate) async fn write_batch_matches_single_writes<B: Backend>(backend: &B) {
        let store = backend.store();
        let node = unique("batch");
        let mine = SessionRecord::new(&node, "inc");
        let theirs = SessionRecord::new(unique("other"), "inc");
        let ids: Vec<String> = (0..9).map(|_| unique("b")).collect();
        register_new(&store, &ids[4], &theirs).await;
        for registered in [&ids[5], &ids[6], &ids[7], &ids[8]] {
            register_new(&store, registered, &mine).await;
        }
        if let Some(raw) = backend.raw() {
            let index = RecordKey::default().node_index(&node);
            assert!(
                raw.zscore(&index, &ids[6]).is_some(),
                "indexed before the batch"
            );
        }
        let short = Duration::from_secs(600);
        let register = |id| register_write(id, &mine, MONTH);
        let remove_owned = |id| StoreWrite::RemoveIfOwned {
            id,
            node: &node,
            incarnation: "inc",
        };
        let refresh = |id| StoreWrite::Refresh { id, ttl: short };
        let remove = |id| StoreWrite::Remove { id };
        let results = store
            .write_batch(&[
                register(&ids[0]),
                register(&ids[1]),
                // Registered then closed in the same batch: gone afterwards.
                register(&ids[2]),
                remove_owned(&ids[2]),
                remove(&ids[1]),
                remove(&ids[3]),
                register(&ids[4]),
                remove_owned(&ids[4]),
                refresh(&ids[5]),
                refresh(&ids[3]),
                // Registered before the batch, removed in it; then refreshed: gone.
                remove(&ids[6]),
                refresh(&ids[6]),
                // Removed, then registered again: there afterwards.
                remove(&ids[7]),
                register(&ids[7]),
                // Registered again with the same record (a replay), then refreshed: the
                // refresh's TTL is the one that holds.
                register(&ids[8]),
                refresh(&ids[8]),
            ])
            .await
            .expect("write_batch");
        assert_eq!(
            results,
            [
                true, true, true, true, true, false, false, false, true, false, true, false, true,
                true, true, true
            ]
        );
        assert_eq!(
            store.lookup(&ids[0]).await.expect("lookup"),
            Some(mine.clone())
        );
        for gone in [&ids[1], &ids[2], &ids[3]] {
            assert_eq!(store.lookup(gone).await.expect("lookup"), None);
        }
        assert_eq!(store.lookup(&ids[6]).await.expect("lookup"), None);
        for there in [&ids[7], &ids[8]] {
            assert_eq!(
                store.lookup(there).await.expect("lookup"),
                Some(mine.clone())
            );
        }
        assert_eq!(
            store.lookup(&ids[4]).await.expect("lookup"),
            Some(theirs.clone())
        );
        assert!(
            store
                .write_batch(&[])
                .await
                .expect("empty batch")
                .is_empty()
        );
        if let Some(raw) = backend.raw() {
            let keys = RecordKey::default();
            assert_ttl_near(raw.expiry(&keys.session(&ids[5])), short);
            assert_ttl_near(raw.expiry(&keys.session(&ids[8])), short);
            assert_ttl_near(raw.expiry(&keys.session(&ids[7])), MONTH);
            let index = keys.node_index(&node);
            for listed in [&ids[0], &ids[5], &ids[7], &ids[8]] {
                assert!(raw.zscore(&index, listed).is_some(), "{listed} indexed");
            }
            for gone in [&ids[1], &ids[2], &ids[6]] {
                assert_eq!(raw.zscore(&index, gone), None, "removed id unindexed");
            }
            assert!(
                raw.zscore(&keys.node_index(&theirs.node), &ids[4])
                    .is_some(),
                "another node's record stays in its node's index"
            );
            assert_eq!(raw.zscore(&index, &ids[4]), None);
        }
        // The index still drives the cleanup after a restart.
        assert_eq!(
            store.remove_stale(&node, "next", 10).await.expect("stale"),
            4
        );
    }

    pub(crate) async fn liveness_round_trip<B: Backend>(backend: &B) {
        let store = backend.store();
        let node = unique("live");
        let ttl = Duration::from_secs(60);
        assert_eq!(store.node(&node).await.expect("node"), None);
        assert!(!store.nodes().await.expect("nodes").contains(&node));

        let serving = NodeRecord::new(NodeState::Serving, "inc-1").with_address("10.0.0.5:8080");
        store
            .announce(&node, &serving, ttl)
            .await
            .expect("announce");
        assert_eq!(
            backend.store().node(&node).await.expect("node"),
            Some(serving.clone()),
            "another store on the same data sees it"
        );
        assert!(store.nodes().await.expect("nodes").contains(&node));
        // Announcing again replaces the record (a drain) and lists the node once.
        let draining = NodeRecord::new(NodeState::Draining, "inc-1").with_address("10.0.0.5:8080");
        store.announce(&node, &draining, ttl).await.expect("again");
        assert_eq!(
            store.node(&node).await.expect("node"),
            Some(draining.clone())
        );
        let listed = store.nodes().await.expect("nodes");
        assert_eq!(listed.iter().filter(|n| **n == node).count(), 1);

        if let Some(raw) = backend.raw() {
            let keys = RecordKey::default();
            let key = format!("mcp:session:live:{{{node}}}");
            assert_eq!(key, keys.liveness(&node));
            assert_eq!(raw.value(&key), Some(draining.to_json()));
            assert_ttl_near(raw.expiry(&key), ttl);
            assert_eq!(keys.node_set(), "mcp:session:nodes");
            assert!(raw.is_member("mcp:session:nodes", &node));
        }

        assert!(
            !store.retire(&node).await.expect("retire"),
            "a live node stays"
        );
        assert!(
            !store
                .withdraw(&node, "inc-0")
                .await
                .expect("another incarnation"),
            "only its own incarnation withdraws it"
        );
        assert_eq!(store.node(&node).await.expect("node"), Some(draining));
        assert!(store.withdraw(&node, "inc-1").await.expect("withdraw"));
        assert_eq!(store.node(&node).await.expect("node"), None);
        assert!(!store.withdraw(&node, "inc-1").await.expect("again"));
        assert!(
            store.nodes().await.expect("nodes").contains(&node),
            "withdrawn, still listed for the sweep"
        );

        assert!(store.retire(&node).await.expect("retire"));
        assert!(!store.nodes().await.expect("nodes").contains(&node));
        assert!(!store.retire(&node).await.expect("retire again"));
        assert!(
            !store.retire(&unique("never")).await.expect("unknown"),
            "never listed"
        );
        store.announce(&node, &serving, ttl).await.expect("back");
        assert!(
            store.nodes().await.expect("nodes").contains(&node),
            "listed again"
        );
        if let Some(raw) = backend.raw() {
            assert!(raw.is_member("mcp:session:nodes", &node));
        }
    }

    /// By the clock (Redis keeps time itself): a short TTL, polled with a deadline.
    pub(crate) async fn liveness_expires_with_its_ttl<B: Backend>(backend: &B) {
        let store = backend.store();
        let node = unique("brief");
        let record = NodeRecord::new(NodeState::Serving, "inc-1");
        let ttl = Duration::from_secs(2);
        store.announce(&node, &record, ttl).await.expect("announce");
        if let Some(raw) = backend.raw() {
            let left = raw.expiry(&RecordKey::default().liveness(&node));
            assert!(left > 0 && left <= 2, "TTL {left}");
        }
        // Refreshed before it runs out: the TTL starts again.
        store.announce(&node, &record, ttl).await.expect("refresh");
        eventually("the liveness record expires", || async {
            store.node(&node).await.expect("node").is_none()
        })
        .await;
        assert!(
            !store.withdraw(&node, "inc-1").await.expect("withdraw"),
            "nothing left to withdraw"
        );
        assert!(
            store.nodes().await.expect("nodes").contains(&node),
            "expiry does not unlist a node: its sessions may need sweeping"
        );
        assert!(store.retire(&node).await.expect("retire"));
        if let Some(raw) = backend.raw() {
            assert_eq!(raw.value(&RecordKey::default().liveness(&node)), None);
        }
    }

    pub(crate) async fn retire_keeps_nodes_with_sessions<B: Backend>(backend: &B) {
        let store = backend.store();
        let node = unique("busy");
        let ttl = Duration::from_secs(60);
        store
            .announce(&node, &NodeRecord::new(NodeState::Serving, "inc-1"), ttl)
            .await
            .expect("announce");
        let id = unique("kept");
        register_new(&store, &id, &SessionRecord::new(&node, "inc-1")).await;
        assert!(store.withdraw(&node, "inc-1").await.expect("withdraw"));
        assert!(
            !store.retire(&node).await.expect("retire"),
            "a session is left to sweep"
        );
        assert!(store.nodes().await.expect("nodes").contains(&node));
        assert!(
            store
                .remove_if_owned(&id, &node, "inc-1")
                .await
                .expect("close")
        );
        assert!(store.retire(&node).await.expect("retire"));
        assert!(!store.nodes().await.expect("nodes").contains(&node));

        if let Some(raw) = backend.raw() {
            // An index entry past its expiry (its record gone by its TTL) does not count.
            let keys = RecordKey::default();
            let gone = unique("expired");
            store
                .announce(&gone, &NodeRecord::new(NodeState::Serving, "x"), ttl)
                .await
                .expect("announce");
            assert!(store.withdraw(&gone, "x").await.expect("withdraw"));
            raw.zadd(&keys.node_index(&gone), 1, "long-expired");
            assert!(store.retire(&gone).await.expect("retire"));
            assert_eq!(raw.zscore(&keys.node_index(&gone), "long-expired"), None);
            assert!(!raw.is_member(&keys.node_set(), &gone));
        }
    }

    pub(crate) async fn claim_won_lost_and_absent<B: Backend>(backend: &B) {
        let store = backend.store();
        let id = unique("claim");
        let (a, b, c) = (unique("owner"), unique("adopter"), unique("late"));
        let original = SessionRecord::new(&a, "a1").with_restore(
            "2025-11-25",
            Some(serde_json::json!({"name": "client", "version": "1"})),
            Some(serde_json::json!({})),
            Some("digest".to_owned()),
        );
        register_new(&store, &id, &original).await;
        let ttl = Duration::from_secs(600);

        let adopted = original.owned_by(&b, "b1");
        assert_eq!(
            store
                .claim(&id, &a, "a1", &adopted, ttl)
                .await
                .expect("claim"),
            Claim::Won
        );
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(adopted.clone()),
            "the record names the claimant, restore fields kept"
        );
        let late = original.owned_by(&c, "c1");
        assert_eq!(
            store.claim(&id, &a, "a1", &late, ttl).await.expect("late"),
            Claim::Lost(Some(adopted.clone())),
            "the owner moved: the claim comes second"
        );
        assert_eq!(
            store
                .claim(&id, &b, "b0", &late, ttl)
                .await
                .expect("wrong incarnation"),
            Claim::Lost(Some(adopted.clone()))
        );
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(adopted.clone())
        );
        assert_eq!(
            store
                .claim(&unique("nobody"), &a, "a1", &late, ttl)
                .await
                .expect("absent"),
            Claim::Lost(None)
        );
        // A record removed meanwhile (the client's DELETE) is not brought back.
        assert!(store.remove(&id).await.expect("remove"));
        assert_eq!(
            store
                .claim(&id, &b, "b1", &late, ttl)
                .await
                .expect("removed"),
            Claim::Lost(None)
        );
        assert_eq!(store.lookup(&id).await.expect("lookup"), None);

        if let Some(raw) = backend.raw() {
            let keys = RecordKey::default();
            let id = unique("claim-ttl");
            register_new(&store, &id, &original).await;
            assert_eq!(
                store
                    .claim(&id, &a, "a1", &adopted, ttl)
                    .await
                    .expect("claim"),
                Claim::Won
            );
            assert_eq!(raw.value(&keys.session(&id)), Some(adopted.to_json()));
            assert_ttl_near(raw.expiry(&keys.session(&id)), ttl);
            assert!(
                raw.zscore(&keys.node_index(&b), &id).is_some(),
                "listed in the claimant's index"
            );
            assert_eq!(
                store.claim(&id, &a, "a1", &late, ttl).await.expect("late"),
                Claim::Lost(Some(adopted.clone()))
            );
            assert_eq!(
                raw.zscore(&keys.node_index(&c), &id),
                None,
                "a lost claim leaves no listing"
            );
        }
    }

    /// After a claim the claimant's cleanup finds the session and the old owner's leaves it.
    pub(crate) async fn a_claimed_session_is_the_claimants_to_clean_up<B: Backend>(backend: &B) {
        let store = backend.store();
        let (a, b) = (unique("old-owner"), unique("claimant"));
        let id = unique("moved");
        let original = SessionRecord::new(&a, "a1");
        register_new(&store, &id, &original).await;
        let adopted = original.owned_by(&b, "b1");
        let ttl = MONTH;
        assert_eq!(
            store
                .claim(&id, &a, "a1", &adopted, ttl)
                .await
                .expect("claim"),
            Claim::Won
        );

        assert_eq!(
            store.remove_stale(&a, "a2", 10).await.expect("old owner"),
            0,
            "the old owner's cleanup leaves a record it no longer owns"
        );
        assert_eq!(
            store.lookup(&id).await.expect("lookup"),
            Some(adopted.clone())
        );
        if let Some(raw) = backend.raw() {
            assert_eq!(
                raw.zscore(&RecordKey::default().node_index(&a), &id),
                None,
                "and drops it from its index"
            );
        }
        assert_eq!(
            store.remove_stale(&b, "b1", 10).await.expect("current"),
            0,
            "the claimant's current incarnation keeps it"
        );
        assert_eq!(
            store.remove_stale(&b, "b2", 10).await.expect("restarted"),
            1,
            "the claimant's next process finds it"
        );
        assert_eq!(store.lookup(&id).await.expect("lookup"), None);

        // A node adopting its own previous incarnation's session: listed once, kept by its
        // current incarnation's cleanup.
        let own = unique("own");
        register_new(&store, &own, &SessionRecord::new(&b, "b1")).await;
        let readopted = SessionRecord::new(&b, "b1").owned_by(&b, "b2");
        assert_eq!(
            store
                .claim(&own, &b, "b1", &readopted, ttl)
                .await
                .expect("claim own"),
            Claim::Won
        );
        assert_eq!(store.remove_stale(&b, "b2", 10).await.expect("kept"), 0);
        assert_eq!(
            store.lookup(&own).await.expect("lookup"),
            Some(readopted.clone())
        );
        // Losing a claim to another request of its own node keeps the listing.
        assert_eq!(
            store
                .claim(&own, &b, "b1", &readopted, ttl)
                .await
                .expect("second request"),
            Claim::Lost(Some(readopted))
        );
        assert_eq!(store.remove_stale(&b, "b3", 10).await.expect("found"), 1);
    }

    /// `rounds` of 16 claimants racing for one session against the same expected owner; with
    /// `separate`, each on a store (a connection) of its own.
    async fn claim_race<B: Backend>(backend: &B, separate: bool) {
        let shared = backend.store();
        let owner = unique("dying");
        let original = SessionRecord::new(&owner, "o1");
        let id = unique("contended");
        register_new(&shared, &id, &original).await;
        let claimants: Vec<SessionRecord> = (0..16)
            .map(|n| original.owned_by(unique(&format!("claimant{n}")), "inc"))
            .collect();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(claimants.len()));
        let mut tasks = tokio::task::JoinSet::new();
        for claimant in claimants.clone() {
            let store = if separate {
                backend.store()
            } else {
                shared.clone()
            };
            // A separate store connects before the race starts.
            if separate {
                store.ping().await.expect("ping");
            }
            let (id, owner, start) = (id.clone(), owner.clone(), std::sync::Arc::clone(&start));
            tasks.spawn(async move {
                start.wait().await;
                let outcome = store
                    .claim(&id, &owner, "o1", &claimant, MONTH)
                    .await
                    .expect("claim");
                (claimant, outcome)
            });
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (claimant, outcome) = joined.expect("task");
            match outcome {
                Claim::Won => winners.push(claimant),
                Claim::Lost(current) => losers.push((claimant, current)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
        let winner = winners.remove(0);
        assert_eq!(losers.len(), 15);
        for (_, current) in &losers {
            assert_eq!(
                current.as_ref(),
                Some(&winner),
                "every loser learns the winner"
            );
        }
        assert_eq!(
            shared.lookup(&id).await.expect("lookup"),
            Some(winner.clone())
        );
        if let Some(raw) = backend.raw() {
            let keys = RecordKey::default();
            assert!(raw.zscore(&keys.node_index(&winner.node), &id).is_some());
            for (loser, _) in &losers {
                assert_eq!(
                    raw.zscore(&keys.node_index(&loser.node), &id),
                    None,
                    "a loser's listing is taken back"
                );
            }
        }
    }

    pub(crate) async fn concurrent_claims_have_one_winner<B: Backend>(backend: &B) {
        claim_race(backend, false).await;
        claim_race(backend, true).await;
    }

    /// What the Lua scripts find under their keys is never trusted and never a script error:
    /// a value that is no record is reported (claim, node) or left alone (withdraw).
    pub(crate) async fn scripts_take_junk_in_their_stride<B: Backend>(backend: &B) {
        let raw = backend
            .raw()
            .expect("a Redis case: run on a backend with raw access");
        let store = backend.store();
        let keys = RecordKey::default();
        let claimant = SessionRecord::new(unique("claimant"), "c1");
        let ttl = Duration::from_secs(60);
        // Lua's JSON decoder gives up past 1000 levels: a decode error, caught.
        let deep = format!("{}{}", "[".repeat(1200), "]".repeat(1200));
        for junk in [
            "not a record",
            "",
            "[1,2]",
            r#"{"n":1,"i":"o1","c":1}"#,
            r#"{"i":"o1"}"#,
            r#""o1""#,
            deep.as_str(),
        ] {
            let id = unique("junk");
            let key = keys.session(&id);
            raw.put(&key, junk);
            let err = store
                .claim(&id, "1", "o1", &claimant, ttl)
                .await
                .expect_err("no record to claim");
            assert!(err.is_invalid_record(), "{junk:?}: {err:?}");
            assert_eq!(raw.value(&key).as_deref(), Some(junk), "left alone");
            assert_eq!(
                raw.zscore(&keys.node_index(&claimant.node), &id),
                None,
                "not listed"
            );

            let node = unique("junk-node");
            let live = keys.liveness(&node);
            raw.put(&live, junk);
            let err = store.node(&node).await.expect_err("no node record");
            assert!(err.is_invalid_record(), "{junk:?}: {err:?}");
            assert!(
                !store.withdraw(&node, "o1").await.expect("withdraw"),
                "{junk:?}"
            );
            assert_eq!(raw.value(&live).as_deref(), Some(junk), "left alone");
        }
        // An incarnation compares as a string, never as a number.
        let node = unique("numeric");
        raw.put(&keys.liveness(&node), r#"{"s":"serving","i":5}"#);
        assert!(!store.withdraw(&node, "5").await.expect("withdraw"));

        // A record the scripts can compare (node and incarnation) is claimed even if it lacks
        // what this version writes: the claimant's record replaces it.
        let id = unique("sparse");
        raw.put(&keys.session(&id), r#"{"n":"old","i":"o1"}"#);
        assert_eq!(
            store
                .claim(&id, "old", "o1", &claimant, ttl)
                .await
                .expect("claim"),
            Claim::Won
        );
        assert_eq!(raw.value(&keys.session(&id)), Some(claimant.to_json()));

        // A key of another type: the server's error, reported, not a panic.
        let id = unique("hash");
        raw.run(&["HSET", &keys.session(&id), "n", "old"]);
        let err = store
            .claim(&id, "old", "o1", &claimant, ttl)
            .await
            .expect_err("WRONGTYPE");
        assert!(!err.is_timeout() && !err.is_unavailable(), "{err:?}");
        let node = unique("hash-node");
        raw.run(&["HSET", &keys.liveness(&node), "i", "o1"]);
        assert!(store.withdraw(&node, "o1").await.is_err());
        assert!(store.node(&node).await.is_err());
    }

    pub(crate) async fn ping_answers<B: Backend>(backend: &B) {
        backend.store().ping().await.expect("ping");
    }
}

/// Runs `$m!` with the names of all shared cases.
macro_rules! all_cases {
    ($m:ident) => {
        $m!(
            register_is_set_if_absent,
            concurrent_registers_have_one_winner,
            lookup_of_unknown_id_is_none,
            remove_deletes_whoever_owns,
            remove_if_owned_compares_node_and_incarnation,
            refresh_resets_the_ttl,
            remove_stale_removes_only_previous_incarnations,
            remove_stale_pages_through_a_large_index,
            write_batch_matches_single_writes,
            liveness_round_trip,
            liveness_expires_with_its_ttl,
            retire_keeps_nodes_with_sessions,
            claim_won_lost_and_absent,
            a_claimed_session_is_the_claimants_to_clean_up,
            concurrent_claims_have_one_winner,
            ping_answers,
            events_are_read_after_an_id_with_the_top,
            late_event_writes_are_skipped,
            post_answers_are_kept_beside_the_standalone_stream,
            event_logs_are_trimmed_to_about_their_bound,
            event_logs_expire_and_are_removed,
        );
    };
}

/// Runs `$m!` with the names of the shared cases that need what only Redis has (key prefixes,
/// raw access to the stored values): on `MemoryStore` they are reported ignored, not passed.
macro_rules! redis_cases {
    ($m:ident) => {
        $m!(
            custom_prefix,
            invalid_records_are_reported_not_trusted,
            scripts_take_junk_in_their_stride
        );
    };
}

/// One `#[tokio::test]` per case, each on a fresh backend from `backend()` in scope.
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

/// One ignored test per case: a case that does not apply to the backend in scope shows as
/// ignored in the summary (and fails if run anyway with `--ignored`).
macro_rules! ignored_per_case {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            #[ignore = "needs Redis: key prefixes and raw access to the stored values"]
            async fn $case() {
                let backend = backend();
                cases::$case(&backend).await;
            }
        )*
    };
}

mod memory {
    use super::*;
    use mcp_affinity::registry::MemoryStore;

    struct Memory(MemoryStore);

    impl Backend for Memory {
        type Store = MemoryStore;
        fn store(&self) -> MemoryStore {
            self.0.clone()
        }
        fn store_with_prefix(&self, _prefix: &str) -> Option<MemoryStore> {
            None
        }
        fn raw(&self) -> Option<&dyn Raw> {
            None
        }
    }

    fn backend() -> Memory {
        Memory(MemoryStore::new())
    }

    all_cases!(test_per_case);
    redis_cases!(ignored_per_case);

    #[tokio::test(start_paused = true)]
    async fn records_expire_with_their_ttl() {
        let store = MemoryStore::new();
        let record = SessionRecord::new("node", "inc");
        register_new(&store, "s", &record).await;
        tokio::time::advance(MONTH - Duration::from_secs(1)).await;
        assert_eq!(
            store.lookup("s").await.expect("lookup"),
            Some(record.clone())
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.lookup("s").await.expect("lookup"), None);
        assert!(!store.remove("s").await.expect("remove"));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_expires_with_its_ttl_exactly() {
        let store = MemoryStore::new();
        let record = NodeRecord::new(NodeState::Serving, "inc");
        let ttl = Duration::from_secs(15);
        store.announce("n", &record, ttl).await.expect("announce");
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(store.node("n").await.expect("node"), Some(record.clone()));
        assert!(!store.retire("n").await.expect("retire"), "alive");
        // Announcing again restarts the TTL.
        store.announce("n", &record, ttl).await.expect("refresh");
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(store.node("n").await.expect("node"), Some(record.clone()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.node("n").await.expect("node"), None);
        assert!(!store.withdraw("n", "inc").await.expect("withdraw"));
        assert_eq!(store.nodes().await.expect("nodes"), ["n"]);
        // An expired session record no longer holds the node in the set.
        store
            .register("s", &SessionRecord::new("n", "inc"), ttl)
            .await
            .expect("register");
        assert!(
            !store.retire("n").await.expect("retire"),
            "a session is left"
        );
        tokio::time::advance(ttl).await;
        assert!(store.retire("n").await.expect("retire"));
        assert!(store.nodes().await.expect("nodes").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_sets_the_ttl_and_an_expired_record_cannot_be_claimed() {
        let store = MemoryStore::new();
        let record = SessionRecord::new("a", "1");
        register_new(&store, "s", &record).await;
        let adopted = record.owned_by("b", "2");
        let ttl = Duration::from_secs(60);
        assert_eq!(
            store
                .claim("s", "a", "1", &adopted, ttl)
                .await
                .expect("claim"),
            Claim::Won
        );
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(
            store.lookup("s").await.expect("lookup"),
            Some(adopted.clone())
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.lookup("s").await.expect("lookup"), None);
        assert_eq!(
            store
                .claim("s", "b", "2", &adopted, ttl)
                .await
                .expect("claim"),
            Claim::Lost(None)
        );
        assert_eq!(
            store.lookup("s").await.expect("lookup"),
            None,
            "not brought back"
        );
    }

    #[tokio::test]
    async fn clones_share_and_new_stores_do_not() {
        let a = MemoryStore::new();
        let b = a.clone();
        let record = SessionRecord::new("node", "inc");
        register_new(&a, "s", &record).await;
        assert_eq!(b.lookup("s").await.expect("lookup"), Some(record));
        assert_eq!(MemoryStore::new().lookup("s").await.expect("lookup"), None);
    }
}

#[cfg(feature = "redis")]
mod redis_single {
    use super::*;
    use crate::redis_support::{PortReservation, RedisServer};
    use mcp_affinity::registry::RedisStore;

    /// A fresh redis-server of this test's own and a store on it.
    fn server_and_store() -> (RedisServer, RedisStore) {
        let backend = backend();
        let store = backend.store();
        (backend.0, store)
    }

    struct Single(RedisServer);

    impl Raw for RedisServer {
        fn value(&self, key: &str) -> Option<String> {
            self.get(key)
        }
        fn expiry(&self, key: &str) -> i64 {
            self.ttl(key)
        }
        fn delete(&self, key: &str) {
            let _: i64 = self.cmd(&["DEL", key]);
        }
        fn put(&self, key: &str, value: &str) {
            let () = self.cmd(&["SET", key, value]);
        }
        fn zscore(&self, key: &str, member: &str) -> Option<f64> {
            self.cmd(&["ZSCORE", key, member])
        }
        fn zadd(&self, key: &str, score: i64, member: &str) {
            let _: i64 = self.cmd(&["ZADD", key, &score.to_string(), member]);
        }
        fn is_member(&self, key: &str, member: &str) -> bool {
            self.cmd(&["SISMEMBER", key, member])
        }
        fn run(&self, args: &[&str]) {
            let _: ::redis::Value = self.cmd(args);
        }
    }

    impl Backend for Single {
        type Store = RedisStore;
        fn store(&self) -> RedisStore {
            RedisStore::lazy(&self.0.url()).expect("store")
        }
        fn store_with_prefix(&self, prefix: &str) -> Option<RedisStore> {
            Some(
                RedisStore::builder(&self.0.url())
                    .with_prefix(prefix)
                    .build_lazy()
                    .expect("store"),
            )
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

    /// Polls `store.ping()` until it succeeds, at most `attempts` times; each attempt is bounded
    /// by the store's command timeout. Returns the attempts used.
    async fn until_answering(store: &RedisStore, attempts: usize) -> usize {
        let mut last = None;
        for attempt in 1..=attempts {
            match store.ping().await {
                Ok(()) => return attempt,
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("store did not recover within {attempts} attempts: {last:?}");
    }

    #[tokio::test]
    async fn the_documented_keys_are_the_only_keys() {
        let (server, store) = server_and_store();
        let record = SessionRecord::new("node-a", "inc-1");
        register_new(&store, "s1", &record).await;
        assert_eq!(
            server.keys("*"),
            ["mcp:session:node:{node-a}", "mcp:session:{s1}"]
        );
        assert_eq!(server.keys("mcp:session:{*"), ["mcp:session:{s1}"]);
        let kind: String = server.cmd(&["TYPE", "mcp:session:node:{node-a}"]);
        assert_eq!(kind, "zset");
        assert!(server.ttl("mcp:session:node:{node-a}") > 0);
        assert!(store.remove("s1").await.expect("remove"));
        let left: u64 = server.cmd(&["ZCARD", "mcp:session:node:{node-a}"]);
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn the_liveness_keys_are_the_documented_keys() {
        let (server, store) = server_and_store();
        let record = NodeRecord::new(NodeState::Serving, "inc-1").with_address("10.0.0.5:8080");
        store
            .announce("node-a", &record, Duration::from_secs(15))
            .await
            .expect("announce");
        assert_eq!(
            server.keys("*"),
            ["mcp:session:live:{node-a}", "mcp:session:nodes"]
        );
        assert_eq!(
            server.get("mcp:session:live:{node-a}"),
            Some(format!(
                r#"{{"s":"serving","i":"inc-1","a":"10.0.0.5:8080","t":{}}}"#,
                record.updated_at
            ))
        );
        let kind: String = server.cmd(&["TYPE", "mcp:session:live:{node-a}"]);
        assert_eq!(kind, "string");
        let ttl = server.ttl("mcp:session:live:{node-a}");
        assert!(ttl > 0 && ttl <= 15, "TTL {ttl}");
        let kind: String = server.cmd(&["TYPE", "mcp:session:nodes"]);
        assert_eq!(kind, "set");
        assert_eq!(
            server.ttl("mcp:session:nodes"),
            -1,
            "the node set never expires"
        );
        let members: Vec<String> = server.cmd(&["SMEMBERS", "mcp:session:nodes"]);
        assert_eq!(members, ["node-a"]);
        assert!(store.withdraw("node-a", "inc-1").await.expect("withdraw"));
        assert!(store.retire("node-a").await.expect("retire"));
        assert!(server.keys("*").is_empty(), "nothing left behind");
    }

    /// The commands each liveness and claim call sends, once its scripts are loaded (`INFO
    /// commandstats` counts the commands a script runs, too).
    #[tokio::test]
    async fn liveness_and_claims_send_the_documented_commands() {
        let (server, store) = server_and_store();
        let counts = |names: &[&str]| -> Vec<u64> {
            names
                .iter()
                .map(|name| server.command_count(name))
                .collect()
        };
        let ttl = Duration::from_secs(15);
        let serving = NodeRecord::new(NodeState::Serving, "1");
        // Warm up: every script loaded once.
        store
            .announce("warm", &serving, ttl)
            .await
            .expect("announce");
        assert!(store.withdraw("warm", "1").await.expect("withdraw"));
        assert!(store.retire("warm").await.expect("retire"));
        register_new(&store, "w", &SessionRecord::new("a", "1")).await;
        let warm = SessionRecord::new("a", "1").owned_by("b", "1");
        assert_eq!(
            store
                .claim("w", "a", "1", &warm, MONTH)
                .await
                .expect("claim"),
            Claim::Won
        );

        server.reset_stats();
        store
            .announce("node-a", &serving, ttl)
            .await
            .expect("announce");
        assert_eq!(counts(&["sadd", "set", "evalsha"]), [1, 1, 0]);

        server.reset_stats();
        assert!(store.node("node-a").await.expect("node").is_some());
        assert_eq!(counts(&["get", "evalsha"]), [1, 0]);

        server.reset_stats();
        assert_eq!(store.nodes().await.expect("nodes"), ["node-a"]);
        assert_eq!(counts(&["smembers"]), [1]);

        server.reset_stats();
        assert!(store.withdraw("node-a", "1").await.expect("withdraw"));
        assert_eq!(counts(&["evalsha", "get", "del"]), [1, 1, 1]);

        server.reset_stats();
        assert!(store.retire("node-a").await.expect("retire"));
        assert_eq!(
            counts(&["evalsha", "exists", "zcard", "srem", "sadd"]),
            [2, 2, 2, 1, 0]
        );

        register_new(&store, "s1", &SessionRecord::new("node-a", "1")).await;
        let adopted = SessionRecord::new("node-a", "1").owned_by("node-b", "1");
        server.reset_stats();
        assert_eq!(
            store
                .claim("s1", "node-a", "1", &adopted, MONTH)
                .await
                .expect("claim"),
            Claim::Won
        );
        // The index script (TIME, ZADD, ZREMRANGEBYSCORE, TTL, EXPIRE on a new index), the
        // compare-and-set (GET, SET).
        assert_eq!(
            counts(&["evalsha", "zadd", "expire", "get", "set", "zrem"]),
            [2, 1, 1, 1, 1, 0]
        );

        let late = SessionRecord::new("node-a", "1").owned_by("node-c", "1");
        server.reset_stats();
        assert_eq!(
            store
                .claim("s1", "node-a", "1", &late, MONTH)
                .await
                .expect("claim"),
            Claim::Lost(Some(adopted))
        );
        assert_eq!(
            counts(&["evalsha", "zadd", "get", "set", "zrem"]),
            [2, 1, 1, 0, 1]
        );
    }

    /// Reading and deleting the event log of a session touch only the slots it can have
    /// used: a session that logged nothing (most adoptions) costs a few bytes each way, not a
    /// read of its whole ring (257 field names out, 257 nils back).
    #[tokio::test]
    async fn an_event_log_is_read_and_removed_by_the_slots_it_used() {
        let (server, store) = server_and_store();
        // Warm up: both scripts loaded, one connection open.
        let _ = store.read_events("w", Some(0), 256).await.expect("read");
        store.remove_events(&["w"]).await.expect("remove");
        let id = "n1.0123456789abcdefghijklmnopqrstuv";
        server.reset_stats();
        let page = store.read_events(id, Some(0), 256).await.expect("read");
        assert_eq!((page.top, page.ordinal, page.events.len()), (0, 0, 0));
        store.remove_events(&[id]).await.expect("remove");
        // Both ways together, with this harness's own connection: about 440 and 120 bytes
        // (the whole ring: about 20 KB and 1.5 KB).
        let (sent, received) = server.net_bytes();
        assert!(
            sent < 1_000,
            "{sent} bytes sent for a session without events"
        );
        assert!(received < 400, "{received} bytes received");

        let data = bytes::Bytes::from_static(b"{}");
        let writes: Vec<mcp_affinity::registry::store::EventWrite<'_>> = (1..=3)
            .map(|seq| mcp_affinity::registry::store::EventWrite::standalone(id, seq, &data))
            .collect();
        store
            .append_events(&writes, 256, Duration::from_secs(600))
            .await
            .expect("append");
        let page = store.read_events(id, Some(0), 256).await.expect("read");
        assert_eq!(page.events.len(), 3);
        assert_eq!((page.top, page.ordinal), (3, 3));
        // A top of the earlier form (`<ordinal>:<seq>`, no highest ordinal): every slot is
        // read and deleted.
        let bucket = server
            .keys("mcp:session:events:*")
            .into_iter()
            .find(|b| {
                let fields: Vec<String> = server.cmd(&["HKEYS", b]);
                fields.iter().any(|f| f.starts_with(id))
            })
            .expect("the session's bucket");
        let top = format!("{id}:t");
        let _: i64 = server.cmd(&["HSET", &bucket, &top, "3:3"]);
        let _: i64 = server.cmd(&["HSET", &bucket, &format!("{id}:200"), "200:9:1:1:late"]);
        let page = store.read_events(id, Some(0), 256).await.expect("read");
        assert_eq!((page.top, page.ordinal, page.events.len()), (3, 200, 3));
        assert_eq!(page.requests.len(), 1, "slot 200 read");
        store.remove_events(&[id]).await.expect("remove");
        // An ordinal past 1e14 (a clock-based one, say) is kept exactly in the top, not as
        // Lua's `%.14g` would print it.
        let big = 1_700_000_000_000_123_u64;
        let mut w = mcp_affinity::registry::store::EventWrite::standalone(id, 4, &data);
        w.ordinal = big;
        store
            .append_events(&[w], 256, Duration::from_secs(600))
            .await
            .expect("append");
        let page = store.read_events(id, Some(0), 256).await.expect("read");
        assert_eq!((page.top, page.ordinal), (4, big));
        store.remove_events(&[id]).await.expect("remove");
        for bucket in server.keys("mcp:session:events:*") {
            let fields: Vec<String> = server.cmd(&["HKEYS", &bucket]);
            assert!(
                fields.iter().all(|f| !f.starts_with(id)),
                "removed: {fields:?}"
            );
        }
    }

    /// The liveness and claim scripts are loaded again when the server lost them.
    #[tokio::test]
    async fn liveness_and_claims_survive_a_lost_script_cache() {
        let (server, store) = server_and_store();
        let ttl = Duration::from_secs(15);
        let record = SessionRecord::new("node-a", "1");
        register_new(&store, "s1", &record).await;
        store
            .announce("node-a", &NodeRecord::new(NodeState::Draining, "1"), ttl)
            .await
            .expect("announce");
        let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
        server.reset_stats();
        let adopted = record.owned_by("node-b", "2");
        assert_eq!(
            store
                .claim("s1", "node-a", "1", &adopted, MONTH)
                .await
                .expect("claim"),
            Claim::Won
        );
        assert!(store.withdraw("node-a", "1").await.expect("withdraw"));
        assert_eq!(
            store
                .remove_stale("node-a", "2", 10)
                .await
                .expect("remove_stale"),
            0
        );
        assert!(store.retire("node-a").await.expect("retire"));
        // Index, claim, withdraw, the stale check (and the removal of the stale sessions'
        // events), the retire check: each refused once and loaded.
        assert_eq!(server.command_count("script|load"), 6);
        let members: Vec<String> = server.cmd(&["SMEMBERS", "mcp:session:nodes"]);
        assert!(members.is_empty());
        assert_eq!(store.lookup("s1").await.expect("lookup"), Some(adopted));
    }

    /// A batch is plain commands for the records (one or two per write) and one or two
    /// commands per node index, whatever the number of sessions; it survives a server that
    /// lost its script cache (restart, `SCRIPT FLUSH`).
    #[tokio::test]
    async fn a_batch_is_plain_commands_and_reloads_a_lost_script() {
        let (server, store) = server_and_store();
        let record = SessionRecord::new("node-a", "inc");
        let ids: Vec<String> = (0..40).map(|n| format!("s{n}")).collect();
        let writes: Vec<StoreWrite<'_>> = ids
            .iter()
            .map(|id| register_write(id, &record, MONTH))
            .collect();
        // The server has never seen the index script: NOSCRIPT, load, run the index update again.
        server.reset_stats();
        assert!(
            store
                .write_batch(&writes)
                .await
                .expect("batch")
                .iter()
                .all(|r| *r)
        );
        assert_eq!(server.keys("mcp:session:{*").len(), 40);
        let zcard: u64 = server.cmd(&["ZCARD", "mcp:session:node:{node-a}"]);
        assert_eq!(zcard, 40, "every id indexed");
        assert_eq!(server.command_count("set"), 40);
        assert_eq!(
            server.command_count("zadd"),
            2,
            "one ZADD listing the sessions before their records, one in the index script"
        );
        assert_eq!(
            server.command_count("evalsha"),
            2,
            "refused, then run again"
        );
        assert_eq!(server.command_count("script|load"), 1);

        let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
        server.reset_stats();
        let removes: Vec<StoreWrite<'_>> = ids
            .iter()
            .map(|id| StoreWrite::RemoveIfOwned {
                id,
                node: "node-a",
                incarnation: "inc",
            })
            .collect();
        assert!(
            store
                .write_batch(&removes)
                .await
                .expect("batch")
                .iter()
                .all(|r| *r)
        );
        assert!(server.keys("mcp:session:{*").is_empty());
        let zcard: u64 = server.cmd(&["ZCARD", "mcp:session:node:{node-a}"]);
        assert_eq!(zcard, 0, "the index follows");
        // Each compare-and-delete refused, the script loaded, each sent again; one ZREM.
        assert_eq!(server.command_count("evalsha"), 80);
        assert_eq!(server.command_count("script|load"), 1);
        assert_eq!(server.command_count("zrem"), 1);

        // Registered and removed in one batch: the index is never touched.
        server.reset_stats();
        let results = store
            .write_batch(&[
                register_write("brief", &record, MONTH),
                StoreWrite::Remove { id: "brief" },
            ])
            .await
            .expect("batch");
        assert_eq!(results, [true, true]);
        assert!(server.keys("mcp:session:{*").is_empty());
        assert_eq!(server.command_count("set"), 1);
        assert_eq!(server.command_count("getdel"), 1);
        for untouched in ["zadd", "zrem", "evalsha"] {
            assert_eq!(server.command_count(untouched), 0, "{untouched}");
        }
    }

    /// A batch sent again (its reply was lost) lands the same: each register finds its own
    /// record, counts as stored and resets the TTL; a large batch's index update is split
    /// into several commands.
    #[tokio::test]
    async fn a_replayed_batch_lands_the_same() {
        let (server, store) = server_and_store();
        let record = SessionRecord::new("node-a", "inc");
        let ids: Vec<String> = (0..600).map(|n| format!("s{n}")).collect();
        let batch = |ttl| -> Vec<StoreWrite<'_>> {
            ids.iter()
                .map(|id| register_write(id, &record, ttl))
                .collect()
        };
        let short = Duration::from_secs(600);
        let first = store.write_batch(&batch(short)).await.expect("batch");
        assert!(first.iter().all(|r| *r));
        server.reset_stats();
        let again = store.write_batch(&batch(MONTH)).await.expect("replay");
        assert!(
            again.iter().all(|r| *r),
            "an identical record counts as stored"
        );
        assert_ttl_near(server.ttl("mcp:session:{s0}"), MONTH);
        assert_ttl_near(server.ttl("mcp:session:{s599}"), MONTH);
        let zcard: u64 = server.cmd(&["ZCARD", "mcp:session:node:{node-a}"]);
        assert_eq!(zcard, 600);
        // 600 ids joining one index: two calls of the index script (512 + 88).
        assert_eq!(server.command_count("evalsha"), 2);
        // Each record's TTL reset, the listing's `EXPIRE … NX` (a no-op on an index that has
        // one), and the index's own expiry extended to the longer TTL.
        assert_eq!(server.command_count("expire"), 602);
        assert_ttl_near(server.ttl("mcp:session:node:{node-a}"), MONTH);

        // Another node's record under the same id is left alone, and not indexed here.
        let theirs = SessionRecord::new("node-b", "inc");
        let results = store
            .write_batch(&[register_write("s0", &theirs, MONTH)])
            .await
            .expect("batch");
        assert_eq!(results, [false]);
        assert_eq!(
            store.lookup("s0").await.expect("lookup"),
            Some(record.clone())
        );
        assert!(server.keys("mcp:session:node:{node-b}").is_empty());
    }

    /// The index is best effort in a batch as in the single writes: an index update that
    /// fails does not fail the records' writes. A listed id whose record is gone leaves the
    /// index on `remove_if_owned`.
    #[tokio::test]
    async fn a_failed_index_update_does_not_fail_the_batch() {
        let (server, store) = server_and_store();
        // An index key of the wrong type: every index command on it fails (WRONGTYPE).
        let () = server.cmd(&["SET", "mcp:session:node:{node-z}", "not a sorted set"]);
        let record = SessionRecord::new("node-z", "inc");
        let results = store
            .write_batch(&[register_write("s1", &record, MONTH)])
            .await
            .expect("the records' writes landed");
        assert_eq!(results, [true]);
        assert_eq!(store.lookup("s1").await.expect("lookup"), Some(record));

        let record = SessionRecord::new("node-a", "inc");
        register_new(&store, "s2", &record).await;
        let listed: Option<f64> = server.cmd(&["ZSCORE", "mcp:session:node:{node-a}", "s2"]);
        assert!(listed.is_some(), "indexed by the register");
        let () = server.cmd(&["DEL", "mcp:session:{s2}"]);
        let results = store
            .write_batch(&[StoreWrite::RemoveIfOwned {
                id: "s2",
                node: "node-a",
                incarnation: "inc",
            }])
            .await
            .expect("batch");
        assert_eq!(results, [false], "nothing to remove");
        let listed: Option<f64> = server.cmd(&["ZSCORE", "mcp:session:node:{node-a}", "s2"]);
        assert_eq!(listed, None, "no record, no index entry");
    }

    /// A node can die between a batch's two round trips, its records written and their index
    /// entries not yet. Each session is listed in its node's index before its record is
    /// written, so the node's next process still finds and removes what the dead one left
    /// (`scripts/chaos.sh` found such a record, out of reach of the cleanup until its TTL).
    #[tokio::test]
    async fn a_batch_cut_short_after_its_records_leaves_them_findable() {
        let (server, store) = server_and_store();
        let record = SessionRecord::new("node-a", "old");
        assert_eq!(until_answering(&store, 100).await, 1);
        server.pause();
        // Sent to a server that does not answer: the batch gives up after its first round
        // trip, as a node that dies then would.
        let cut = store
            .write_batch(&[register_write("s1", &record, MONTH)])
            .await;
        assert!(cut.is_err_and(|e| e.is_timeout()));
        server.resume();
        // The first round trip runs now (before this PING, on the same connection).
        until_answering(&store, 100).await;
        assert_eq!(store.lookup("s1").await.expect("lookup"), Some(record));
        // The listing made the node's index; it expires, as its entries do, even though the
        // round trip that sets the index's TTL never ran (the node may never come back).
        let ttl: i64 = server.cmd(&["TTL", "mcp:session:node:{node-a}"]);
        assert!(
            ttl > 0 && ttl <= MONTH.as_secs() as i64,
            "the index has no expiry: TTL {ttl}"
        );

        assert_eq!(
            store
                .remove_stale("node-a", "new", 16)
                .await
                .expect("cleanup"),
            1,
            "the next process finds the record"
        );
        assert!(server.keys("mcp:session:*").is_empty());
    }

    /// A server that lost the compare-and-delete script refused it; when a later write of the
    /// batch touched the same session, sending it again would reorder them: the batch fails
    /// instead (the registry then replays it in order), and the next try succeeds.
    #[tokio::test]
    async fn a_lost_script_never_reorders_a_sessions_writes() {
        let (server, store) = server_and_store();
        let record = SessionRecord::new("node-a", "inc");
        register_new(&store, "s1", &record).await;
        let _: String = server.cmd(&["SCRIPT", "FLUSH"]);
        let writes = [
            StoreWrite::RemoveIfOwned {
                id: "s1",
                node: "node-a",
                incarnation: "inc",
            },
            register_write("s1", &record, MONTH),
        ];
        let err = store.write_batch(&writes).await.expect_err("reordered");
        assert!(!err.is_timeout() && !err.is_unavailable(), "{err}");
        // Sent in order, one by one, the removal lands first and the register after it.
        assert!(
            store
                .remove_if_owned("s1", "node-a", "inc")
                .await
                .expect("remove")
        );
        register_new(&store, "s1", &record).await;
        assert_eq!(
            store.lookup("s1").await.expect("lookup"),
            Some(record.clone())
        );
        // The script is loaded again: the same batch now runs as one.
        server.reset_stats();
        let results = store.write_batch(&writes).await.expect("batch");
        assert_eq!(results, [true, true]);
        assert_eq!(store.lookup("s1").await.expect("lookup"), Some(record));
        assert_eq!(server.command_count("script|load"), 0);
    }

    #[tokio::test]
    async fn lookups_cost_one_get_and_cleanup_never_scans_the_keyspace() {
        let (server, store) = server_and_store();
        for n in 0..5 {
            let record = SessionRecord::new("node-a", if n < 3 { "old" } else { "new" });
            register_new(&store, &format!("s{n}"), &record).await;
        }
        server.reset_stats();
        assert!(store.lookup("s0").await.expect("lookup").is_some());
        assert_eq!(server.command_count("get"), 1, "lookup is a single GET");
        assert_eq!(
            store
                .remove_stale("node-a", "new", 100)
                .await
                .expect("remove_stale"),
            3
        );
        assert_eq!(server.command_count("keys"), 0);
        assert_eq!(server.command_count("scan"), 0);
        assert!(server.command_count("zscan") >= 1);
    }

    #[tokio::test]
    async fn a_stopped_server_times_out_instead_of_hanging() {
        let server = RedisServer::start();
        let store = RedisStore::builder(&server.url())
            .with_command_timeout(Duration::from_millis(200))
            .connect()
            .await
            .expect("connect");
        let record = SessionRecord::new("node-a", "inc-1");
        register_new(&store, "s1", &record).await;

        server.pause();
        let lookup = store
            .lookup("s1")
            .await
            .expect_err("no answer while stopped");
        assert!(lookup.is_timeout(), "{lookup:?}");
        let register = store
            .register("s2", &record, MONTH)
            .await
            .expect_err("no answer while stopped");
        assert!(register.is_timeout(), "{register:?}");
        let cleanup = store
            .remove_if_owned("s1", "node-a", "inc-1")
            .await
            .expect_err("no answer");
        assert!(cleanup.is_timeout(), "{cleanup:?}");
        server.resume();

        until_answering(&store, 100).await;
        assert_eq!(store.lookup("s1").await.expect("lookup"), Some(record));
    }

    #[tokio::test]
    async fn reconnects_after_redis_restarts() {
        let mut server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.expect("connect");
        let record = SessionRecord::new("node-a", "inc-1");
        register_new(&store, "s1", &record).await;

        server.kill();
        let err = store.lookup("s1").await.expect_err("redis is down");
        assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
        server.restart();

        until_answering(&store, 200).await;
        // Nothing was persisted: the restarted server is empty, and fully usable.
        assert_eq!(store.lookup("s1").await.expect("lookup"), None);
        register_new(&store, "s1", &record).await;
        assert_eq!(store.lookup("s1").await.expect("lookup"), Some(record));
    }

    #[tokio::test]
    async fn a_store_built_while_redis_is_down_works_once_it_is_up() {
        let mut attempts = 0;
        let (server, store) = loop {
            // Held until the server starts: nothing else listens there meanwhile.
            let reserved = PortReservation::new(1, false);
            let url = format!("redis://127.0.0.1:{}/", reserved.port());

            let err = RedisStore::connect(&url)
                .await
                .expect_err("nothing listens yet");
            assert!(err.is_unavailable(), "{err:?}");

            let store = RedisStore::lazy(&url).expect("lazy store needs no server");
            let err = store.ping().await.expect_err("nothing listens yet");
            assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
            let err = store
                .register("s1", &SessionRecord::new("n", "i"), MONTH)
                .await
                .expect_err("down");
            assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");

            let port = reserved.release()[0];
            match RedisServer::try_start_on(port) {
                Ok(server) => break (server, store),
                // Another process took the port in the instant it was free: again, elsewhere.
                Err(err) if attempts < 5 => {
                    attempts += 1;
                    eprintln!("redis-server could not start on {port} ({err}); retrying");
                }
                Err(err) => panic!("could not start redis-server: {err}"),
            }
        };
        until_answering(&store, 200).await;
        let record = SessionRecord::new("node-a", "inc-1");
        register_new(&store, "s1", &record).await;
        assert_eq!(server.get("mcp:session:{s1}"), Some(record.to_json()));
    }

    /// What the tests that need an address before the server rely on: while a port is
    /// reserved, connecting there is refused and no other process can bind it (a port that
    /// was only found free and released could be taken meanwhile); once released, it is free.
    #[test]
    fn a_reserved_port_refuses_connections_and_cannot_be_taken() {
        let reserved = PortReservation::new(2, true);
        for &port in reserved.ports() {
            for held in [port, port + 10000] {
                assert!(
                    std::net::TcpListener::bind(("127.0.0.1", held)).is_err(),
                    "{held} taken while reserved"
                );
                let refused = std::net::TcpStream::connect(("127.0.0.1", held))
                    .expect_err("nothing listens on a reserved port");
                assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            }
        }
        for port in reserved.release() {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("free once released");
        }
    }

    #[tokio::test]
    async fn errors_keep_their_cause() {
        let reserved = PortReservation::new(1, false);
        let port = reserved.port();
        let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}/"))
            .await
            .expect_err("down");
        assert_eq!(err.to_string(), "registry store unavailable");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the redis error is the source"
        );
    }
}

#[cfg(feature = "redis-cluster")]
mod redis_cluster {
    use super::*;
    use crate::redis_support::{PortReservation, RedisCluster};
    use mcp_affinity::registry::RedisStore;

    struct Cluster(RedisCluster);

    impl Raw for RedisCluster {
        fn value(&self, key: &str) -> Option<String> {
            self.get(key)
        }
        fn expiry(&self, key: &str) -> i64 {
            self.ttl(key)
        }
        fn delete(&self, key: &str) {
            let _: i64 = self.cmd(&["DEL", key]);
        }
        fn put(&self, key: &str, value: &str) {
            let () = self.cmd(&["SET", key, value]);
        }
        fn zscore(&self, key: &str, member: &str) -> Option<f64> {
            self.cmd(&["ZSCORE", key, member])
        }
        fn zadd(&self, key: &str, score: i64, member: &str) {
            let _: i64 = self.cmd(&["ZADD", key, &score.to_string(), member]);
        }
        fn is_member(&self, key: &str, member: &str) -> bool {
            self.cmd(&["SISMEMBER", key, member])
        }
        fn run(&self, args: &[&str]) {
            let _: ::redis::Value = self.cmd(args);
        }
    }

    impl Backend for Cluster {
        type Store = RedisStore;
        fn store(&self) -> RedisStore {
            let urls = self.0.urls();
            let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
            RedisStore::lazy_cluster(&nodes).expect("store")
        }
        fn store_with_prefix(&self, prefix: &str) -> Option<RedisStore> {
            let urls = self.0.urls();
            let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
            Some(
                RedisStore::cluster_builder(&nodes)
                    .with_prefix(prefix)
                    .build_lazy()
                    .expect("store"),
            )
        }
        fn raw(&self) -> Option<&dyn Raw> {
            Some(&self.0)
        }
    }

    /// All shared cases, in sequence, on one 3-master cluster (starting a cluster per case
    /// would cost seconds each). Cases use ids and node names of their own.
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

        // The keys really are spread over the masters: one key per command works across slots.
        let store = backend.store();
        for n in 0..30 {
            let record = SessionRecord::new("spread", "inc");
            register_new(&store, &unique(&format!("spread{n}")), &record).await;
        }
        for node in backend.0.nodes() {
            assert!(
                !node.keys("mcp:session:{spread*").is_empty(),
                "every master holds sessions"
            );
        }
        let connected = RedisStore::connect_cluster(&[&backend.0.urls()[0]])
            .await
            .expect("connect");
        assert_eq!(
            connected
                .remove_stale("spread", "next", 7)
                .await
                .expect("remove_stale"),
            30
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_store_built_before_the_cluster_is_up_works_once_it_is() {
        let mut attempts = 0;
        let (cluster, store) = loop {
            // Held (with their cluster bus ports) until the cluster starts.
            let reserved = PortReservation::new(3, true);
            let urls: Vec<String> = reserved
                .ports()
                .iter()
                .map(|port| format!("redis://127.0.0.1:{port}/"))
                .collect();
            let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();

            let err = RedisStore::connect_cluster(&nodes)
                .await
                .expect_err("no cluster yet");
            assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");
            let store = RedisStore::lazy_cluster(&nodes).expect("lazy store needs no server");
            let err = store.ping().await.expect_err("no cluster yet");
            assert!(err.is_unavailable() || err.is_timeout(), "{err:?}");

            let ports = reserved.release();
            let started = tokio::task::spawn_blocking(move || RedisCluster::try_start_on(&ports))
                .await
                .expect("cluster");
            match started {
                Ok(cluster) => break (cluster, store),
                // A port was taken in the instant it was free: again, elsewhere.
                Err(err) if attempts < 3 => {
                    attempts += 1;
                    eprintln!("the cluster could not start ({err}); retrying");
                }
                Err(err) => panic!("could not start a redis cluster: {err}"),
            }
        };
        let mut answered = false;
        for _ in 0..200 {
            if store.ping().await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answered, "the store never reached the cluster");
        let record = SessionRecord::new("node-a", "inc-1");
        register_new(&store, "s1", &record).await;
        assert_eq!(cluster.get("mcp:session:{s1}"), Some(record.to_json()));
    }
}
