//! The `chaos` workload: a fixed set of legacy sessions keeps calling while something else
//! (`scripts/chaos.sh`) kills, pauses and restarts Redis and the nodes.
//!
//! Each of C connections owns its share of the N sessions and sends them `tools/call echo` and
//! `ping` in turn (closed loop, or `--rate` requests per second in all). With `--renew K`, every
//! K-th request of a connection is instead a `DELETE` of the session whose turn it is, and the
//! session is replaced by a new one on its next turn: sessions keep starting and ending, so the
//! registry has writes in flight whenever Redis fails. A session whose request is answered
//! `404` (its node is gone, or restarted) is initialized again; any other failure (a proxy's
//! `502`, a reset connection, a timeout) drops the connection and the session is tried again.
//! At the end every session is DELETEd.
//!
//! Every failed request is kept with the node that held its session (the `x-mcp-node` header of
//! the `initialize` answer) and when that session began. The events file (`--events`), which the
//! driver appends to, says which node was killed when:
//!
//! ```text
//! kill n2 1767225600123     # unix milliseconds, written just before the SIGKILL
//! up n2 1767225601456       # its restarted process answers /healthz
//! ```
//!
//! (other lines are ignored). A failure is *on a killed node's session* when that session's node
//! was killed after the session began and before the failure; an `initialize` that fails while a
//! node is down (it may have been in flight to it) counts there too. Every other failure counts
//! as an error: Redis being killed or paused must not cost any session anything.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::client::{self, Conn, Error, Session, Target};

/// How long one request of the chaos workload may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// After a killed node is back, how long an `initialize` failure still counts as caused by it.
const INIT_GRACE_MS: u64 = 2_000;

/// Errors printed to stderr at the end, at most.
const PRINTED: usize = 20;

/// A node killed during the run (unix milliseconds): from just before the kill until its
/// restarted process answered (`None`: not back before the run ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    pub node: String,
    pub down_ms: u64,
    pub up_ms: Option<u64>,
}

/// Reads the `kill <node> <ms>` / `up <node> <ms>` lines of an events file.
pub fn parse_events(text: &str) -> Vec<Kill> {
    let mut kills: Vec<Kill> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(what), Some(node), Some(ms)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Ok(ms) = ms.parse::<u64>() else { continue };
        match what {
            "kill" => kills.push(Kill {
                node: node.to_owned(),
                down_ms: ms,
                up_ms: None,
            }),
            "up" => {
                if let Some(k) = kills
                    .iter_mut()
                    .rev()
                    .find(|k| k.node == node && k.up_ms.is_none())
                {
                    k.up_ms = Some(ms);
                }
            }
            _ => {}
        }
    }
    kills
}

/// What a failed request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `tools/call` or `ping` on a session.
    Call,
    /// `initialize` (+ `notifications/initialized`) of a new session.
    Init,
    /// The closing `DELETE`.
    Delete,
}

/// One failed request.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub at_ms: u64,
    /// The node holding the session, and when the session began (`Kind::Init`: none yet).
    pub holder: Option<String>,
    pub since_ms: u64,
    pub what: String,
}

impl Failure {
    /// Whether a node kill explains the failure (see the module docs).
    pub fn on_killed_node(&self, kills: &[Kill]) -> bool {
        kills.iter().any(|k| match (&self.holder, self.kind) {
            (_, Kind::Init) => {
                self.at_ms >= k.down_ms
                    && self.at_ms <= k.up_ms.map_or(u64::MAX, |u| u + INIT_GRACE_MS)
            }
            (Some(holder), _) => {
                *holder == k.node
                    && self.since_ms <= k.up_ms.unwrap_or(u64::MAX)
                    && self.at_ms >= k.down_ms
            }
            (None, _) => false,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{:?} at {} on {} (session since {}): {}",
            self.kind,
            self.at_ms,
            self.holder.as_deref().unwrap_or("?"),
            self.since_ms,
            self.what
        )
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A session of the workload and when it began.
struct Slot {
    session: Session,
    since_ms: u64,
}

impl Slot {
    fn new(session: Session) -> Self {
        Self {
            session,
            since_ms: now_ms(),
        }
    }

    fn failure(&self, kind: Kind, what: String) -> Failure {
        Failure {
            kind,
            at_ms: now_ms(),
            holder: self.session.node.clone(),
            since_ms: self.since_ms,
            what,
        }
    }
}

/// Per-connection tallies.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    ok: u64,
    reinitialized: u64,
    renewed: u64,
    failures: Vec<Failure>,
}

/// Why a request failed: the session is gone (`404`), or anything else.
enum Failed {
    Gone(String),
    Other(String),
}

fn call_body(id: u64) -> Bytes {
    if id.is_multiple_of(2) {
        Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"chaos"}}}}}}"#
        ))
    } else {
        Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#))
    }
}

async fn call(conn: &mut Conn, target: &Target, s: &Session, id: u64) -> Result<(), Failed> {
    let method = if id.is_multiple_of(2) {
        "tools/call"
    } else {
        "ping"
    };
    let req = client::post(target, Some(s), call_body(id), method, Some("echo"));
    let answer = tokio::time::timeout(TIMEOUT, async {
        let res = conn.send(req).await.map_err(Failed::Other)?;
        if res.status() == StatusCode::NOT_FOUND {
            let body = res
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(Failed::Gone(format!(
                "HTTP 404: {}",
                client::snippet(&body)
            )));
        }
        client::read_answer(res, None)
            .await
            .map(drop)
            .map_err(Failed::Other)
    })
    .await;
    answer.unwrap_or_else(|_| Err(Failed::Other(format!("{method} timed out"))))
}

async fn open(conn: &mut Conn) -> Result<Session, Error> {
    tokio::time::timeout(TIMEOUT, client::open_session(conn))
        .await
        .unwrap_or_else(|_| Err("initialize timed out".into()))
}

/// One connection's loop over its sessions until `end`, then their DELETEs.
async fn drive(
    target: Arc<Target>,
    sessions: Vec<Session>,
    end: Instant,
    period: Option<Duration>,
    renew: u64,
) -> Tally {
    let mut conn = Conn::new(target.clone());
    let mut slots: Vec<Option<Slot>> = sessions.into_iter().map(Slot::new).map(Some).collect();
    let mut tally = Tally::default();
    let mut tick = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut n: u64 = 0;
    while Instant::now() < end && !slots.is_empty() {
        if let Some(t) = &mut tick {
            t.tick().await;
        }
        let i = usize::try_from(n).unwrap_or(0) % slots.len();
        n += 1;
        tally.requests += 1;
        match &slots[i] {
            Some(slot) if renew > 0 && n.is_multiple_of(renew) => {
                match client::close_session(&mut conn, &slot.session).await {
                    Ok(()) => {
                        tally.ok += 1;
                        tally.renewed += 1;
                    }
                    Err(e) => {
                        tally.failures.push(slot.failure(Kind::Delete, e));
                        conn.reset();
                    }
                }
                slots[i] = None;
            }
            Some(slot) => match call(&mut conn, &target, &slot.session, n).await {
                Ok(()) => tally.ok += 1,
                Err(Failed::Gone(e)) => {
                    tally.failures.push(slot.failure(Kind::Call, e));
                    slots[i] = None;
                }
                Err(Failed::Other(e)) => {
                    tally.failures.push(slot.failure(Kind::Call, e));
                    conn.reset();
                }
            },
            None => match open(&mut conn).await {
                Ok(s) => {
                    tally.ok += 1;
                    tally.reinitialized += 1;
                    slots[i] = Some(Slot::new(s));
                }
                Err(e) => {
                    tally.failures.push(Failure {
                        kind: Kind::Init,
                        at_ms: now_ms(),
                        holder: None,
                        since_ms: now_ms(),
                        what: e,
                    });
                    conn.reset();
                }
            },
        }
    }
    for slot in slots.iter().flatten() {
        tally.requests += 1;
        match client::close_session(&mut conn, &slot.session).await {
            Ok(()) => tally.ok += 1,
            Err(e) => {
                tally.failures.push(slot.failure(Kind::Delete, e));
                conn.reset();
            }
        }
    }
    tally
}

/// How the workload runs (see the module docs).
#[derive(Debug, Clone)]
pub struct Options {
    pub connections: usize,
    pub duration: Duration,
    /// Requests per second in all; 0: closed loop.
    pub rate: f64,
    /// Every `renew`-th request of a connection replaces a session; 0: never.
    pub renew: u64,
    /// The events file.
    pub events: Option<String>,
}

/// Runs the workload: `sessions` split over the connections, for the duration.
pub async fn run(target: Arc<Target>, sessions: Vec<Session>, o: Options) -> Result<Value, Error> {
    let Options {
        connections,
        duration,
        rate,
        renew,
        events,
    } = o;
    let connections = connections.clamp(1, sessions.len().max(1));
    let mut shares: Vec<Vec<Session>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, s) in sessions.into_iter().enumerate() {
        shares[i % connections].push(s);
    }
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(connections as f64 / rate));
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(drive(target.clone(), share, end, period, renew)))
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.map_err(|e| format!("chaos task: {e}"))?;
        total.requests += t.requests;
        total.ok += t.ok;
        total.reinitialized += t.reinitialized;
        total.renewed += t.renewed;
        total.failures.extend(t.failures);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let kills = match events.as_deref() {
        Some(path) => parse_events(
            &std::fs::read_to_string(path).map_err(|e| format!("--events {path}: {e}"))?,
        ),
        None => Vec::new(),
    };
    let (killed, elsewhere): (Vec<&Failure>, Vec<&Failure>) = total
        .failures
        .iter()
        .partition(|f| f.on_killed_node(&kills));
    for f in elsewhere.iter().take(PRINTED) {
        eprintln!("chaos: error: {}", f.describe());
    }
    let sample =
        |v: &[&Failure]| -> Vec<String> { v.iter().take(5).map(|f| f.describe()).collect() };
    Ok(json!({
        "duration_s": crate::stats::round3(elapsed),
        "requests": total.requests,
        "ok": total.ok,
        "errors": elsewhere.len(),
        "killed_errors": killed.len(),
        "reinitialized": total.reinitialized,
        "renewed": total.renewed,
        "kills": kills.len(),
        "error_sample": sample(&elsewhere),
        "killed_sample": sample(&killed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: Kind, holder: Option<&str>, since_ms: u64, at_ms: u64) -> Failure {
        Failure {
            kind,
            at_ms,
            holder: holder.map(str::to_owned),
            since_ms,
            what: String::new(),
        }
    }

    #[test]
    fn events_pair_each_kill_with_its_restart() {
        let kills = parse_events(
            "redis kill 5\nkill n2 100\nup n2 200\nkill n3 300\nkill n2 400\nup n2 500\njunk\n",
        );
        assert_eq!(
            kills,
            vec![
                Kill {
                    node: "n2".into(),
                    down_ms: 100,
                    up_ms: Some(200)
                },
                Kill {
                    node: "n3".into(),
                    down_ms: 300,
                    up_ms: None
                },
                Kill {
                    node: "n2".into(),
                    down_ms: 400,
                    up_ms: Some(500)
                },
            ]
        );
    }

    #[test]
    fn only_a_kill_of_the_sessions_own_node_explains_its_failure() {
        let kills = parse_events("kill n2 1000\nup n2 2000\n");
        // A session of n2 begun before the kill, failing after it (also once n2 is back).
        assert!(failure(Kind::Call, Some("n2"), 500, 1001).on_killed_node(&kills));
        assert!(failure(Kind::Delete, Some("n2"), 500, 9000).on_killed_node(&kills));
        // Another node's session, or n2's before the kill or after its restart: errors.
        assert!(!failure(Kind::Call, Some("n1"), 500, 1500).on_killed_node(&kills));
        assert!(!failure(Kind::Call, Some("n2"), 500, 900).on_killed_node(&kills));
        assert!(!failure(Kind::Call, Some("n2"), 2500, 3000).on_killed_node(&kills));
        assert!(!failure(Kind::Call, None, 500, 1500).on_killed_node(&kills));
        // An initialize while n2 was down (or just back), not long after.
        assert!(failure(Kind::Init, None, 1500, 1500).on_killed_node(&kills));
        assert!(failure(Kind::Init, None, 3000, 3000).on_killed_node(&kills));
        assert!(!failure(Kind::Init, None, 4500, 4500).on_killed_node(&kills));
        assert!(!failure(Kind::Init, None, 900, 900).on_killed_node(&kills));
        // Without any kill every failure is an error.
        assert!(!failure(Kind::Call, Some("n2"), 500, 1001).on_killed_node(&[]));
    }
}
