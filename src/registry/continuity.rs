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
    forwarder: super::forward::Forwarder,
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
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            #[cfg(feature = "forward")]
            forwarder: super::forward::Forwarder::new(
                settings.forward_connect_timeout,
                32,
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

/// What to do with a request for a session this node does not hold.
enum Plan {
    /// Let the inner service answer; a `404` from it is enriched with this outcome (`None`:
    /// the record says the session is this node's own).
    Inner(Option<SessionLookup>),
    Forward(Route),
    Adopt(SessionRecord),
    /// Another request of this node is adopting the session: restore it with that one.
    Restore(SessionRecord),
    /// Not served here: `503`, retry on another node.
    Unavailable,
}

type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// Serves a legacy request for session `ctx.sid()`, which this node does not hold.
#[allow(clippy::too_many_lines)]
pub(crate) async fn serve_unheld<S, ReqBody, ResBody, R>(
    core: Arc<Core<R>>,
    inner: S,
    mut req: Request<ReqBody>,
    ctx: Ctx,
    mut removal: Option<PendingRemoval<R>>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    R: RegistryStore,
{
    let Some(cont) = core.continuity.as_ref() else {
        return call_inner(&core, inner, req, &ctx, removal, None).await;
    };
    let Some(sid) = ctx.sid().map(Arc::<str>::from) else {
        return call_inner(&core, inner, req, &ctx, removal, None).await;
    };
    let hop = req.headers().contains_key(headers::MCP_FORWARDED_BY);
    // A route learnt from an earlier request of this session: no record lookup, and no store
    // call at all while the owner's liveness is cached. An owner that drains, left or
    // restarted since is not followed: its sessions are adopted (a node that forwards to a
    // draining owner would keep it busy, and once it has shut down, its sessions lost).
    if !hop
        && let Some(route) = cont.route(&sid)
        && route_live(&core, cont, &route, &sid).await
    {
        match forward(&core, cont, &route, req, &ctx).await {
            Ok(res) => {
                if !keeps_route(res.status(), ctx.delete) {
                    cont.forget_route(&sid);
                }
                return Ok(forwarded(res, &mut removal));
            }
            Err(Some(back)) => {
                cont.unreachable(&route.owner);
                req = back;
            }
            Err(None) => {
                cont.forget_route(&sid);
                disarm(&mut removal);
                return Ok(owner_failed());
            }
        }
    }
    let mut plan = plan(&core, cont, &sid, hop, ctx.delete).await;
    let mut adopting: Option<Adopting<R>> = None;
    // At most: forward, find no one, adopt, lose the race, forward to the winner.
    for _ in 0..3 {
        match plan {
            Plan::Inner(outcome) => {
                return call_inner(&core, inner, req, &ctx, removal, outcome).await;
            }
            Plan::Forward(route) => match forward(&core, cont, &route, req, &ctx).await {
                Ok(res) => {
                    if keeps_route(res.status(), ctx.delete) {
                        cont.remember_route(&sid, route);
                    }
                    return Ok(forwarded(res, &mut removal));
                }
                Err(Some(back)) => {
                    tracing::info!(session = %Fingerprint::of(&sid), owner = %route.owner, "owner unreachable; adopting its session");
                    cont.unreachable(&route.owner);
                    req = back;
                    plan = match core.store_lookup(&sid).await {
                        Ok(Some(record)) if *record.node == *route.owner => adopt_or(
                            cont,
                            record,
                            SessionLookup::Misrouted {
                                owner: route.owner.to_string(),
                            },
                        ),
                        Ok(Some(_)) => plan_again(&core, cont, &sid, hop, ctx.delete).await,
                        Ok(None) => Plan::Inner(Some(SessionLookup::Unknown)),
                        Err(()) => Plan::Inner(Some(SessionLookup::Misrouted {
                            owner: route.owner.to_string(),
                        })),
                    };
                }
                Err(None) => {
                    disarm(&mut removal);
                    return Ok(owner_failed());
                }
            },
            Plan::Unavailable => return Ok(retry_elsewhere()),
            Plan::Restore(record) => {
                // Taking part until answered.
                let _adopting = adopting.or_else(|| Adopting::join(&core, &sid));
                return restore(&core, inner, req, &ctx, removal, &sid, record).await;
            }
            Plan::Adopt(record) => {
                if cont.is_draining() {
                    return Ok(retry_elsewhere());
                }
                if adopting.is_none() {
                    adopting = Adopting::join(&core, &sid);
                }
                let mine = record.owned_by(&*core.node, &*core.incarnation);
                let claimed = tokio::time::timeout(
                    core.lookup_timeout,
                    core.store
                        .claim(&sid, &record.node, &record.incarnation, &mine, core.ttl),
                )
                .await;
                match claimed {
                    Ok(Ok(Claim::Won)) => {
                        cont.claimed(&sid, record.clone());
                        return restore(&core, inner, req, &ctx, removal, &sid, record).await;
                    }
                    // Another request of this node won it.
                    Ok(Ok(Claim::Lost(Some(now))))
                        if now.is_owned_by(&core.node, &core.incarnation) =>
                    {
                        plan = Plan::Restore(now);
                    }
                    Ok(Ok(Claim::Lost(Some(now)))) => {
                        core.counters.adoptions_lost.fetch_add(1, Relaxed);
                        tracing::debug!(session = %Fingerprint::of(&sid), owner = %now.node, "another node adopted the session first");
                        plan = if hop {
                            Plan::Inner(Some(SessionLookup::Misrouted { owner: now.node }))
                        } else {
                            plan_for(&core, cont, &sid, now, ctx.delete).await
                        };
                    }
                    Ok(Ok(Claim::Lost(None))) => plan = Plan::Inner(Some(SessionLookup::Unknown)),
                    Ok(Err(_)) | Err(_) => {
                        core.counters.store_errors.fetch_add(1, Relaxed);
                        plan = Plan::Inner(Some(lookup_outcome(&core, &record)));
                    }
                }
            }
        }
    }
    call_inner(
        &core,
        inner,
        req,
        &ctx,
        removal,
        Some(SessionLookup::Unknown),
    )
    .await
}

/// Whether `route`'s owner is still the one serving there; a route that is not is forgotten.
/// Followed as it is when the store does not answer (the owner was alive a moment ago).
async fn route_live<R: RegistryStore>(
    core: &Core<R>,
    cont: &Continuity,
    route: &Route,
    sid: &str,
) -> bool {
    let live = match owner(core, cont, &route.owner).await {
        Some(Owner::Serving { incarnation, .. }) => incarnation == route.incarnation,
        Some(Owner::Gone) => false,
        None => true,
    };
    if !live {
        cont.forget_route(sid);
    }
    live
}

/// Whether a session's route is worth keeping after the owner's answer: not once the owner
/// no longer holds the session (its `404`) or has closed it (a `DELETE` it served).
fn keeps_route(status: StatusCode, delete: bool) -> bool {
    status != StatusCode::NOT_FOUND && !(delete && status.is_success())
}

fn disarm<R>(removal: &mut Option<PendingRemoval<R>>) {
    if let Some(r) = removal.take() {
        r.disarm();
    }
}

/// The owner's answer, marked; a forwarded `DELETE` is the owner's to clean up.
fn forwarded<B, R>(
    res: Response<ResponseBody<B>>,
    removal: &mut Option<PendingRemoval<R>>,
) -> Response<ResponseBody<B>> {
    disarm(removal);
    res
}

fn lookup_outcome<R>(core: &Core<R>, record: &SessionRecord) -> SessionLookup {
    match record.ownership(&core.node, &core.incarnation) {
        Ownership::PreviousIncarnation => SessionLookup::NodeRestarted,
        Ownership::Current => SessionLookup::Unknown,
        _ => SessionLookup::Misrouted {
            owner: record.node.clone(),
        },
    }
}

fn adopt_or(cont: &Continuity, record: SessionRecord, otherwise: SessionLookup) -> Plan {
    if cont.settings.adoption && record.is_restorable() {
        Plan::Adopt(record)
    } else {
        Plan::Inner(Some(otherwise))
    }
}

async fn plan_again<R: RegistryStore>(
    core: &Arc<Core<R>>,
    cont: &Continuity,
    sid: &str,
    hop: bool,
    delete: bool,
) -> Plan {
    plan(core, cont, sid, hop, delete).await
}

/// A record that names this node (this process) for a session it does not hold.
fn own_record(cont: &Continuity, sid: &str, record: SessionRecord, delete: bool) -> Plan {
    // Being adopted here, by another request: restored with it.
    if cont.is_adopting(sid) {
        return Plan::Restore(record);
    }
    // A draining node that hands its sessions over closed them and kept their records, for
    // the node each session's next request reaches: a request that still reaches this one is
    // told to go elsewhere, and the record stays (a `DELETE` still removes it).
    if cont.is_draining() && cont.hands_over() && !delete {
        return Plan::Unavailable;
    }
    // It ended here: the inner service's `404`, and the record goes.
    Plan::Inner(None)
}

/// Looks the session's record up (within the lookup limits) and decides.
async fn plan<R: RegistryStore>(
    core: &Arc<Core<R>>,
    cont: &Continuity,
    sid: &str,
    hop: bool,
    delete: bool,
) -> Plan {
    match core.limits.admit(sid) {
        Admit::Lookup => {}
        Admit::KnownMiss => {
            core.counters.known_misses.fetch_add(1, Relaxed);
            return Plan::Inner(Some(SessionLookup::Unknown));
        }
        Admit::Limited => {
            core.counters.lookups_limited.fetch_add(1, Relaxed);
            return Plan::Inner(Some(SessionLookup::Unknown));
        }
    }
    let record = match core.store_lookup(sid).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            core.limits.remember_miss(sid);
            return Plan::Inner(Some(SessionLookup::Unknown));
        }
        Err(()) => return Plan::Inner(Some(SessionLookup::Unknown)),
    };
    if hop {
        // A forwarded request is never forwarded again; it may still adopt (its owner named
        // this node's address, which a new process of this node may hold now).
        return match record.ownership(&core.node, &core.incarnation) {
            Ownership::Current => own_record(cont, sid, record, delete),
            Ownership::PreviousIncarnation => adopt_or(cont, record, SessionLookup::NodeRestarted),
            _ => match owner(core, cont, &record.node).await {
                Some(Owner::Serving { incarnation, .. }) if *incarnation == *record.incarnation => {
                    Plan::Inner(Some(SessionLookup::Misrouted { owner: record.node }))
                }
                Some(_) => {
                    let owner = record.node.clone();
                    adopt_or(cont, record, SessionLookup::Misrouted { owner })
                }
                None => Plan::Inner(Some(SessionLookup::Misrouted { owner: record.node })),
            },
        };
    }
    plan_for(core, cont, sid, record, delete).await
}

/// Decides for a record just read.
async fn plan_for<R: RegistryStore>(
    core: &Arc<Core<R>>,
    cont: &Continuity,
    sid: &str,
    record: SessionRecord,
    delete: bool,
) -> Plan {
    match record.ownership(&core.node, &core.incarnation) {
        Ownership::Current => own_record(cont, sid, record, delete),
        Ownership::PreviousIncarnation => adopt_or(cont, record, SessionLookup::NodeRestarted),
        _ => match owner(core, cont, &record.node).await {
            Some(Owner::Serving { incarnation, addr }) if *incarnation == *record.incarnation => {
                match addr {
                    Some(addr) if cont.settings.forwarding && cfg!(feature = "forward") => {
                        Plan::Forward(Route {
                            owner: record.node.as_str().into(),
                            incarnation,
                            addr,
                        })
                    }
                    _ => Plan::Inner(Some(SessionLookup::Misrouted { owner: record.node })),
                }
            }
            // Gone, draining, or restarted since (another incarnation).
            Some(_) => {
                let owner = record.node.clone();
                adopt_or(cont, record, SessionLookup::Misrouted { owner })
            }
            // The store did not say: as without continuity.
            None => Plan::Inner(Some(SessionLookup::Misrouted { owner: record.node })),
        },
    }
}

/// The liveness of `node`, from the cache or the store; `None` when the store did not answer.
async fn owner<R: RegistryStore>(core: &Core<R>, cont: &Continuity, node: &str) -> Option<Owner> {
    if let Some((at, owner)) = lock(&cont.owners).get(node)
        && at.elapsed() < LIVENESS_CACHE.min(cont.settings.liveness_period)
    {
        return Some(owner.clone());
    }
    let read = tokio::time::timeout(core.lookup_timeout, core.store.node(node)).await;
    let owner = match read {
        Ok(Ok(Some(record))) if record.state == NodeState::Serving => Owner::Serving {
            incarnation: record.incarnation.as_str().into(),
            addr: record
                .address
                .as_deref()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .filter(|a| {
                    let ok = cont.allows(*a);
                    if !ok {
                        tracing::warn!(owner = %node, "a node's liveness record names an address outside the cluster; not followed");
                    }
                    ok
                }),
        },
        Ok(Ok(Some(_draining))) => Owner::Gone,
        Ok(Ok(None)) => Owner::Gone,
        Ok(Err(e)) => {
            core.counters.store_errors.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, "liveness lookup failed");
            return None;
        }
        Err(_) => {
            core.counters.store_errors.fetch_add(1, Relaxed);
            return None;
        }
    };
    let mut owners = lock(&cont.owners);
    if owners.len() > 4096 {
        owners.clear();
    }
    owners.insert(node.into(), (Instant::now(), owner.clone()));
    Some(owner)
}

/// Sends the request to the owner. `Err(Some(req))`: nobody listening there, the request is
/// back untouched; `Err(None)`: the exchange failed after the request went out.
#[cfg(feature = "forward")]
async fn forward<R, ReqBody, B>(
    core: &Core<R>,
    cont: &Continuity,
    route: &Route,
    mut req: Request<ReqBody>,
    ctx: &Ctx,
) -> Result<Response<ResponseBody<B>>, Option<Request<ReqBody>>>
where
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    use http_body_util::BodyExt as _;
    // The owner's layers see what the client sent: the wire id (inside the affinity layer's
    // envelope, the header holds the inner id by now).
    if let Some(wire) = ctx.envelope().and_then(|e| e.wire_id())
        && let Ok(v) = HeaderValue::from_str(wire)
    {
        req.headers_mut().insert(headers::MCP_SESSION_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&core.node) {
        req.headers_mut().insert(headers::MCP_FORWARDED_BY, v);
    }
    match cont.forwarder.forward(route.addr, req).await {
        Ok(res) => {
            core.counters.forwarded.fetch_add(1, Relaxed);
            let mut res = res.map(|b| ResponseBody::forwarded(b.map_err(Into::into).boxed()));
            res.extensions_mut().insert(crate::session::Forwarded);
            Ok(res)
        }
        Err(super::forward::ForwardError::NotSent(mut back, e)) => {
            core.counters.forward_failures.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, owner = %route.owner, "forward not sent");
            back.headers_mut().remove(headers::MCP_FORWARDED_BY);
            if let Some(inner) = ctx.inner_sid()
                && let Ok(v) = HeaderValue::from_str(inner)
            {
                back.headers_mut().insert(headers::MCP_SESSION_ID, v);
            }
            Err(Some(back))
        }
        Err(super::forward::ForwardError::Failed(e)) => {
            core.counters.forward_failures.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, owner = %route.owner, "forwarded request failed");
            Err(None)
        }
    }
}

#[cfg(not(feature = "forward"))]
#[allow(clippy::unused_async)]
async fn forward<R, ReqBody, B>(
    _core: &Core<R>,
    _cont: &Continuity,
    _route: &Route,
    req: Request<ReqBody>,
    _ctx: &Ctx,
) -> Result<Response<ResponseBody<B>>, Option<Request<ReqBody>>> {
    Err(Some(req))
}

/// The owner went away with the request: the client may retry (the session is adopted then).
fn owner_failed<B>() -> Response<ResponseBody<B>> {
    retry_response(
        StatusCode::BAD_GATEWAY,
        "the node holding the session failed during the request: retry it",
    )
}

/// A draining node takes no session over.
fn retry_elsewhere<B>() -> Response<ResponseBody<B>> {
    retry_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "server shutting down: retry on another node",
    )
}

fn retry_response<B>(status: StatusCode, msg: &str) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::full(error_body(
        None,
        codes::BAD_REQUEST,
        msg,
        None,
    )));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// Calls the inner service; its `404` is answered with `outcome` (`None`: a session this node
/// registered and no longer holds, whose record goes).
async fn call_inner<S, ReqBody, ResBody, R>(
    core: &Arc<Core<R>>,
    mut inner: S,
    req: Request<ReqBody>,
    ctx: &Ctx,
    removal: Option<PendingRemoval<R>>,
    outcome: Option<SessionLookup>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RegistryStore,
{
    let res = inner.call(req).await?;
    if let Some(removal) = removal {
        if delete_refused(&res) {
            removal.disarm();
        } else {
            drop(removal);
        }
        return Ok(res.map(ResponseBody::inner));
    }
    if res.status() != StatusCode::NOT_FOUND {
        if res.status().is_success()
            && let Some(sid) = ctx.sid()
        {
            // The inner service knew the session after all (it restored it itself, as
            // rmcp's own session store does, or this crate's transport restored it for a
            // request that has just been answered, which marked it): it is held here now.
            core.mark_live_if_absent(sid, Ends::Unreported);
        }
        return Ok(res.map(ResponseBody::inner));
    }
    let outcome = if Refusal::is_refused(&res) {
        SessionLookup::Unknown
    } else {
        match outcome {
            Some(o) => o,
            None => {
                if let Some(sid) = ctx.sid() {
                    core.enqueue(sid, OpKind::RemoveIfOwned);
                }
                SessionLookup::Unknown
            }
        }
    };
    if let (SessionLookup::Misrouted { owner }, Some(sid)) = (&outcome, ctx.sid()) {
        tracing::warn!(session = %Fingerprint::of(sid), owner = %owner, here = %core.node, "misrouted request: the session lives on another node");
    }
    core.count_outcome(&outcome);
    let (parts, _) = res.into_parts();
    Ok(not_found(parts, outcome))
}

/// This node won the record (this request, or another one of this node adopting the
/// session): the transport restores the session from it, once however many requests ask, and
/// serves the request.
async fn restore<S, ReqBody, ResBody, R>(
    core: &Arc<Core<R>>,
    mut inner: S,
    mut req: Request<ReqBody>,
    ctx: &Ctx,
    removal: Option<PendingRemoval<R>>,
    sid: &Arc<str>,
    record: SessionRecord,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RegistryStore,
{
    let version = record
        .protocol_version
        .as_deref()
        .and_then(ProtocolVersion::parse);
    let id = ctx.inner_sid().and_then(|s| SessionId::parse(s).ok());
    if let (Some(version), Some(id)) = (version, id) {
        req.extensions_mut().insert(
            RestoreSession::new(id, version)
                .with_client(
                    record.client_info.clone(),
                    record.client_capabilities.clone(),
                )
                .with_principal(record.principal.clone()),
        );
    }
    let mut res = {
        // An inner service with a session store of its own (rmcp with `RmcpSessionStore`)
        // loads the record this node just claimed from here, under the id it sees.
        let _restoring = core.handoff.restoring(ctx.inner_sid(), || {
            record.owned_by(&*core.node, &*core.incarnation)
        });
        inner.call(req).await?
    };
    // The request that restored the session gets it on its response (this crate's
    // transport); the others were served by it.
    let restored = res.extensions().get::<Session>().cloned();
    let served = restored.is_some() || res.status().is_success();
    if served {
        // The client's id on the answer (and a marker: the affinity layer leaves it as it
        // is), so a balancer that learns sessions from responses re-pins it here.
        if let Ok(v) = HeaderValue::from_str(sid) {
            res.headers_mut().insert(headers::MCP_SESSION_ID, v);
        }
        res.extensions_mut().insert(crate::session::SessionRestored);
    }
    if let Some(session) = &restored {
        // Held before the hook goes on: a session closed already (a restoring `DELETE`)
        // runs it at once, and is forgotten again.
        core.mark_live(sid, Ends::Hooked);
        hook_close(core, session, ctx);
    } else if res.status().is_success() {
        // Served by the session another request restored a moment ago (which marks how it
        // ends), or by an inner service that restores sessions itself (rmcp with a session
        // store).
        core.mark_live_if_absent(sid, Ends::Unreported);
    }
    let cont = core.continuity.as_ref();
    if served || core.holds(sid) {
        // Restored here: the record stays this node's (a `DELETE` removes it as usual), and
        // the first request to see it counts the adoption.
        if let Some(before) = cont.and_then(|cont| cont.take_claim(sid)) {
            core.counters.adopted.fetch_add(1, Relaxed);
            tracing::info!(session = %Fingerprint::of(sid), from = %before.node, "session adopted");
        }
    } else if let Some(before) = cont.and_then(|cont| cont.take_claim_if_last(sid)) {
        // Not restored (another principal, a full or draining transport) and no other
        // request is restoring it: the record goes back to its owner, so nothing was
        // adopted.
        give_back(core, sid, &before).await;
    }
    if let Some(removal) = removal {
        if delete_refused(&res) {
            removal.disarm();
        } else {
            drop(removal);
        }
    }
    if res.status() == StatusCode::NOT_FOUND {
        core.count_outcome(&SessionLookup::Unknown);
        let (parts, _) = res.into_parts();
        return Ok(not_found(parts, SessionLookup::Unknown));
    }
    Ok(res.map(ResponseBody::inner))
}

impl<R: RegistryStore> Core<R> {
    /// The session's record (bounded by the lookup timeout); `Err` when the store did not
    /// answer.
    pub(crate) async fn store_lookup(&self, sid: &str) -> Result<Option<SessionRecord>, ()> {
        match tokio::time::timeout(self.lookup_timeout, self.store.lookup(sid)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => {
                self.counters.store_errors.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "registry lookup failed");
                Err(())
            }
            Err(_) => {
                self.counters.store_errors.fetch_add(1, Relaxed);
                tracing::debug!("registry lookup timed out");
                Err(())
            }
        }
    }
}

impl<R> Core<R> {
    /// Counts the outcome of a `404` the registry enriched.
    pub(crate) fn count_outcome(&self, outcome: &SessionLookup) {
        let counter = match outcome {
            SessionLookup::Misrouted { .. } => &self.counters.misroutes,
            SessionLookup::NodeRestarted => &self.counters.node_restarted,
            SessionLookup::Unknown => &self.counters.unknown,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Whether records of sessions closed on shutdown stay for adoption.
    pub(crate) fn hands_over(&self) -> bool {
        self.continuity.as_ref().is_some_and(Continuity::hands_over)
    }
}

/// Writes this node's liveness record now (within `timeout`); whether it landed.
pub(crate) async fn announce<R: RegistryStore>(core: &Core<R>, timeout: Duration) -> bool {
    let Some(cont) = core.continuity.as_ref() else {
        return false;
    };
    let record = cont.liveness(&core.incarnation);
    let wrote = tokio::time::timeout(
        timeout,
        core.store
            .announce(&core.node, &record, cont.settings.liveness_ttl),
    )
    .await;
    let ok = matches!(wrote, Ok(Ok(())));
    if !ok {
        core.counters.store_errors.fetch_add(1, Relaxed);
    }
    if ok != cont.announced.swap(ok, Relaxed) {
        if ok {
            tracing::info!(node = %core.node, state = record.state.as_str(), "liveness record written");
        } else {
            tracing::warn!(node = %core.node, "liveness record not written: other nodes will not forward here, and may adopt this node's sessions once its record expires");
        }
    }
    ok
}

/// Rewrites this node's liveness record every period, in the background.
pub(crate) async fn heartbeat<R: RegistryStore>(core: std::sync::Weak<Core<R>>) {
    let period = match core.upgrade() {
        Some(c) => match c.continuity.as_ref() {
            Some(cont) => cont.settings.liveness_period,
            None => return,
        },
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = core.upgrade() else { return };
        let timeout = period.min(c.lookup_timeout.max(Duration::from_millis(100)));
        announce(&c, timeout).await;
    }
}

/// Removes records nobody will claim: those of this node's previous processes once the idle
/// timeout has passed since this one started, and those of nodes gone (no liveness record)
/// for longer than the idle timeout, found through the node set and each node's index.
pub(crate) async fn orphan_sweeper<R: RegistryStore>(core: std::sync::Weak<Core<R>>) {
    let period = match core.upgrade() {
        Some(c) => (c.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(300)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(c) = core.upgrade() else { return };
        sweep_orphans(&c).await;
    }
}

/// One round of the orphan sweep.
pub(crate) async fn sweep_orphans<R: RegistryStore>(core: &Core<R>) {
    let Some(cont) = core.continuity.as_ref() else {
        return;
    };
    let now = Instant::now();
    if !cont.own_orphans_swept.load(Relaxed)
        && now.duration_since(cont.booted) >= core.idle_timeout
        && let Some(n) = remove_all_stale(core, &core.node, &core.incarnation).await
    {
        cont.own_orphans_swept.store(true, Relaxed);
        if n > 0 {
            tracing::info!(node = %core.node, removed = n, "removed unclaimed records of this node's previous process");
        }
    }
    let Ok(Ok(nodes)) = tokio::time::timeout(core.lookup_timeout, core.store.nodes()).await else {
        return;
    };
    for node in nodes {
        if node == *core.node {
            continue;
        }
        let alive = match tokio::time::timeout(core.lookup_timeout, core.store.node(&node)).await {
            Ok(Ok(found)) => found.is_some(),
            _ => continue,
        };
        let since = {
            let mut dead = lock(&cont.dead_since);
            if alive {
                dead.remove(&node);
                continue;
            }
            *dead.entry(node.clone()).or_insert(now)
        };
        if now.duration_since(since) < core.idle_timeout {
            continue;
        }
        // No incarnation is empty: every record of the node goes (adopted ones name their
        // adopter and stay).
        if let Some(n) = remove_all_stale(core, &node, "").await {
            if n > 0 {
                tracing::info!(gone = %node, removed = n, "removed unclaimed records of a node gone for longer than the idle timeout");
            }
            if matches!(
                tokio::time::timeout(core.lookup_timeout, core.store.retire(&node)).await,
                Ok(Ok(true))
            ) {
                lock(&cont.dead_since).remove(&node);
            }
        }
    }
}

/// `remove_stale` until nothing is left; `None` if the store failed on the way.
async fn remove_all_stale<R: RegistryStore>(
    core: &Core<R>,
    node: &str,
    keep: &str,
) -> Option<usize> {
    let mut total = 0;
    loop {
        match core.store.remove_stale(node, keep, 256).await {
            Ok(0) => return Some(total),
            Ok(n) => {
                total += n;
                core.counters.orphans_removed.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                core.counters.store_errors.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "orphan sweep failed; the next round continues");
                return None;
            }
        }
    }
}
