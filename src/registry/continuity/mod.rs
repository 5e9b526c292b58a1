//! Sessions that outlive their node: node liveness, forwarding to a live owner and adoption
//! from a gone, draining or restarted one.
//!
//! A request for a session this node does not hold (the local view, [`Core::holds`], says so
//! without the store) takes this path; a request for a session it holds never does. The path
//! looks the session's record up once, then the owner's liveness record (cached briefly), and
//! then:
//!
//! - the owner is alive and serving: the request is **forwarded** to it (feature `forward`),
//!   at most one hop; the route is remembered, so the next request of the session is forwarded
//!   without reading its record again (while the owner's liveness, cached briefly, says it is
//!   still serving);
//! - the owner's liveness record is gone, says `draining`, or names another incarnation (or a
//!   forward found no one listening): this node **adopts** the session, a compare-and-set on
//!   the record's owner and incarnation ([`RegistryStore::claim`]); the winner passes a
//!   [`RestoreSession`] down to the transport, a loser forwards to the winner;
//! - anything else (no record, the store down or slow, adoption or forwarding off): the inner
//!   service answers, and its `404` is enriched as without continuity.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;
use tower_service::Service;

use super::{
    Claim, NodeRecord, NodeState, Ownership, RegistryStore, ResponseBody, SessionLookup,
    SessionRecord,
    future::{PendingRemoval, delete_refused, hook_close, not_found},
    limit::Admit,
    queue::{Core, Ends, OpKind},
    service::Ctx,
};
use crate::{
    BoxError,
    protocol::{ProtocolVersion, Refusal, codes, error_body, headers},
    session::{Fingerprint, RestoreSession, Session, SessionId},
};

/// How long a node's liveness, as read from the store, is trusted before it is read again.
const LIVENESS_CACHE: Duration = Duration::from_secs(1);
/// The most routes (session → owner) remembered; beyond it the oldest half is dropped.
const MAX_ROUTES: usize = 65_536;

/// Allowed addresses of peer nodes: a record naming any other address is not followed.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerPolicy {
    networks: Vec<(IpAddr, u8)>,
}

impl PeerPolicy {
    /// Parses networks such as `10.0.0.0/8`, `fd00::/8` or a single address `10.0.0.7`.
    pub(crate) fn parse<I, S>(networks: I) -> Result<Self, ()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for net in networks {
            let net = net.as_ref().trim();
            let (ip, bits) = match net.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (net, None),
            };
            let ip: IpAddr = ip.parse().map_err(drop)?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().map_err(drop)?,
                None => max,
            };
            if bits > max {
                return Err(());
            }
            out.push((ip, bits));
        }
        Ok(Self { networks: out })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|&(net, bits)| in_network(ip, net, bits))
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Continuity settings, fixed when the layer is built.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "forward"), allow(dead_code))]
pub(crate) struct Settings {
    pub(crate) adoption: bool,
    pub(crate) forwarding: bool,
    pub(crate) liveness_ttl: Duration,
    pub(crate) liveness_period: Duration,
    pub(crate) address: Option<SocketAddr>,
    pub(crate) peers: PeerPolicy,
    pub(crate) forward_connect_timeout: Duration,
}

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "forward"), allow(dead_code))]
struct Route {
    owner: Arc<str>,
    /// The owner's incarnation when the route was learnt: a restarted owner no longer holds
    /// the session.
    incarnation: Arc<str>,
    addr: SocketAddr,
}

/// An owner as this node last saw it.
#[derive(Debug, Clone)]
enum Owner {
    /// Alive and serving in this incarnation, reachable at this address (if it gave a valid
    /// one inside the cluster).
    Serving {
        incarnation: Arc<str>,
        addr: Option<SocketAddr>,
    },
    /// No liveness record, or draining.
    Gone,
}

/// Continuity state of one registry.
#[derive(Debug)]
pub(crate) struct Continuity {
    pub(crate) settings: Settings,
    #[cfg(feature = "forward")]
    forwarder: crate::registry::forward::Forwarder,
    /// This node's name as the `Mcp-Forwarded-By` value of the requests it forwards, made once
    /// (the builder rejects names with control characters, the only ones no header value
    /// takes).
    #[cfg_attr(not(feature = "forward"), allow(dead_code))]
    hop: Option<HeaderValue>,
    draining: AtomicBool,
    /// Whether the last liveness write landed: without liveness, records are kept on
    /// shutdown only if the node could tell the others it left.
    announced: AtomicBool,
    owners: Mutex<HashMap<Arc<str>, (Instant, Owner)>>,
    routes: Mutex<HashMap<Arc<str>, Route>>,
    /// Sessions this node is adopting now (see [`Adoption`]).
    adoptions: Mutex<HashMap<Arc<str>, Adoption>>,
    /// Nodes found without a liveness record by the orphan sweep, and since when.
    pub(crate) dead_since: Mutex<HashMap<String, Instant>>,
    pub(crate) booted: Instant,
    pub(crate) own_orphans_swept: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Continuity {
    pub(crate) fn new(settings: Settings, node: &str) -> Self {
        Self {
            hop: HeaderValue::from_str(node).ok(),
            // Idle connections kept per peer: at least the requests a node forwards at once,
            // or every forward past the bound opens (and the owner accepts) a new connection.
            #[cfg(feature = "forward")]
            forwarder: crate::registry::forward::Forwarder::new(
                settings.forward_connect_timeout,
                256,
                Duration::from_secs(60),
            ),
            settings,
            draining: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            owners: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            adoptions: Mutex::new(HashMap::new()),
            dead_since: Mutex::new(HashMap::new()),
            booted: Instant::now(),
            own_orphans_swept: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Whether the records of sessions this node closes on shutdown stay for others to adopt.
    pub(crate) fn hands_over(&self) -> bool {
        self.settings.adoption && self.announced.load(Relaxed)
    }

    /// This node's liveness record as it should be written now.
    pub(crate) fn liveness(&self, incarnation: &str) -> NodeRecord {
        let state = if self.is_draining() {
            NodeState::Draining
        } else {
            NodeState::Serving
        };
        let record = NodeRecord::new(state, incarnation);
        match self.settings.address {
            Some(addr) => record.with_address(addr.to_string()),
            None => record,
        }
    }

    /// Whether `addr` is a peer this node may forward to.
    fn allows(&self, addr: SocketAddr) -> bool {
        if !self.settings.peers.is_empty() {
            return self.settings.peers.allows(addr.ip());
        }
        match self.settings.address {
            Some(own) => own.ip() == addr.ip(),
            None => addr.ip().is_loopback(),
        }
    }

    fn route(&self, sid: &str) -> Option<Route> {
        lock(&self.routes).get(sid).cloned()
    }

    fn remember_route(&self, sid: &Arc<str>, route: Route) {
        let mut routes = lock(&self.routes);
        if routes.len() >= MAX_ROUTES {
            let drop: Vec<Arc<str>> = routes.keys().take(MAX_ROUTES / 2).cloned().collect();
            for k in drop {
                routes.remove(&k);
            }
        }
        routes.insert(sid.clone(), route);
    }

    fn forget_route(&self, sid: &str) {
        lock(&self.routes).remove(sid);
    }

    /// A forward to `owner` found no one listening: until its liveness is read again, treat
    /// it as gone (its sessions are adopted) and forget the routes to it.
    fn unreachable(&self, owner: &Arc<str>) {
        lock(&self.owners).insert(owner.clone(), (Instant::now(), Owner::Gone));
        lock(&self.routes).retain(|_, r| r.owner != *owner);
    }

    /// Whether a request of this node is adopting session `sid` now.
    fn is_adopting(&self, sid: &str) -> bool {
        lock(&self.adoptions).contains_key(sid)
    }

    /// Notes that a request of this node claimed `sid`'s record, which was `before`.
    fn claimed(&self, sid: &str, before: SessionRecord) {
        if let Some(a) = lock(&self.adoptions).get_mut(sid) {
            a.claimed = Some(before);
        }
    }

    /// The record as it was before this node claimed `sid`, if it did.
    fn take_claim(&self, sid: &str) -> Option<SessionRecord> {
        lock(&self.adoptions).get_mut(sid)?.claimed.take()
    }

    /// The record to put back, if this node claimed `sid` and the caller is the last of its
    /// requests adopting it.
    fn take_claim_if_last(&self, sid: &str) -> Option<SessionRecord> {
        let mut adoptions = lock(&self.adoptions);
        let a = adoptions.get_mut(sid)?;
        if a.requests > 1 {
            return None;
        }
        a.claimed.take()
    }
}

mod background;
mod serve;

pub(crate) use background::{announce, heartbeat, orphan_sweeper};
pub(crate) use serve::serve_unheld;

/// A session this node is adopting: from the first of its requests that decides to claim the
/// record until the last of them is answered. Meanwhile the record names this node, which does
/// not hold the session yet: a request for it (one that lost the claim to a request of this
/// node, one that found the record naming this node, one forwarded by a node that lost the
/// claim) restores it through the transport too, which restores a session once and lets the
/// others wait for it. Without this such a request took the record for one of a session that
/// had ended here, was answered `404`, and had the record removed.
#[derive(Debug)]
struct Adoption {
    requests: usize,
    /// The record as it was before this node claimed it: put back if no request restores
    /// the session (the transport refused it: another principal, a draining or full node).
    claimed: Option<SessionRecord>,
}

/// One request taking part in an adoption; the last one out puts the record back if the
/// adoption came to nothing (a client hanging up mid-way included).
struct Adopting<R: RegistryStore> {
    core: Arc<Core<R>>,
    sid: Arc<str>,
}

impl<R: RegistryStore> Adopting<R> {
    fn join(core: &Arc<Core<R>>, sid: &Arc<str>) -> Option<Self> {
        let cont = core.continuity.as_ref()?;
        lock(&cont.adoptions)
            .entry(sid.clone())
            .or_insert(Adoption {
                requests: 0,
                claimed: None,
            })
            .requests += 1;
        Some(Self {
            core: core.clone(),
            sid: sid.clone(),
        })
    }
}

impl<R: RegistryStore> Drop for Adopting<R> {
    fn drop(&mut self) {
        let Some(cont) = self.core.continuity.as_ref() else {
            return;
        };
        let left = {
            let mut adoptions = lock(&cont.adoptions);
            let Some(a) = adoptions.get_mut(&self.sid) else {
                return;
            };
            a.requests -= 1;
            if a.requests > 0 {
                return;
            }
            adoptions.remove(&self.sid).and_then(|a| a.claimed)
        };
        if let Some(before) = left
            && !self.core.holds(&self.sid)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (core, sid) = (self.core.clone(), self.sid.clone());
            rt.spawn(async move { give_back(&core, &sid, &before).await });
        }
    }
}

/// Puts back the record this node claimed for a session it did not restore.
async fn give_back<R: RegistryStore>(core: &Core<R>, sid: &str, before: &SessionRecord) {
    let undo = tokio::time::timeout(
        core.lookup_timeout,
        core.store
            .claim(sid, &core.node, &core.incarnation, before, core.ttl),
    )
    .await;
    if !matches!(undo, Ok(Ok(Claim::Won))) {
        tracing::warn!(session = %Fingerprint::of(sid), "an adoption the transport refused could not be undone");
    }
}
