//! The path of a request for a session this node does not hold: decide, then forward, adopt
//! or let the inner service answer.

use super::*;
use crate::registry::store::StoredEventPage;

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
    // Everything past a known route's forward: its future is most of this one's size (the
    // adoption's restore above all), boxed so the forward above moves and allocates only what
    // it needs.
    Box::pin(serve_planned(
        &core, cont, inner, req, ctx, removal, sid, hop,
    ))
    .await
}

/// [`serve_unheld`] for a session with no live route known: decide, then forward, adopt or let
/// the inner service answer.
#[allow(clippy::too_many_arguments)]
async fn serve_planned<S, ReqBody, ResBody, R>(
    core: &Arc<Core<R>>,
    cont: &Continuity,
    inner: S,
    mut req: Request<ReqBody>,
    ctx: Ctx,
    mut removal: Option<PendingRemoval<R>>,
    sid: Arc<str>,
    hop: bool,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    R: RegistryStore,
{
    let mut plan = decide(core, cont, &sid, hop, ctx.delete).await;
    let mut adopting: Option<Adopting<R>> = None;
    // At most: forward, find no one, adopt, lose the race, forward to the winner.
    for _ in 0..3 {
        match plan {
            Plan::Inner(outcome) => {
                return call_inner(core, inner, req, &ctx, removal, outcome).await;
            }
            Plan::Forward(route) => match forward(core, cont, &route, req, &ctx).await {
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
                        Ok(Some(_)) => decide(core, cont, &sid, hop, ctx.delete).await,
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
                let _adopting = adopting.or_else(|| Adopting::join(core, &sid));
                let events = stored_events(core, standalone_after(&req), &ctx).await;
                return restore(core, inner, req, &ctx, removal, &sid, record, events).await;
            }
            Plan::Adopt(record) => {
                if cont.is_draining() {
                    return Ok(retry_elsewhere());
                }
                if adopting.is_none() {
                    adopting = Adopting::join(core, &sid);
                }
                let mine = record.owned_by(&*core.node, &*core.incarnation);
                let started = crate::metrics::Timer::start();
                // The session's stored events are read beside the claim (one round trip for
                // both): a claim won needs them, a claim lost (rare) drops them.
                let (claimed, events) = tokio::join!(
                    tokio::time::timeout(
                        core.lookup_timeout,
                        core.store
                            .claim(&sid, &record.node, &record.incarnation, &mine, core.ttl),
                    ),
                    stored_events(core, standalone_after(&req), &ctx),
                );
                match claimed {
                    Ok(Ok(Claim::Won)) => {
                        cont.claimed(&sid, record.clone());
                        let out =
                            restore(core, inner, req, &ctx, removal, &sid, record, events).await;
                        crate::metrics::adoption_time(started);
                        return out;
                    }
                    // Another request of this node won it.
                    Ok(Ok(Claim::Lost(Some(now))))
                        if now.is_owned_by(&core.node, &core.incarnation) =>
                    {
                        plan = Plan::Restore(now);
                    }
                    Ok(Ok(Claim::Lost(Some(now)))) => {
                        core.counters.adoptions_lost.fetch_add(1, Relaxed);
                        crate::metrics::adoption_lost();
                        tracing::debug!(session = %Fingerprint::of(&sid), owner = %now.node, "another node adopted the session first");
                        plan = if hop {
                            Plan::Inner(Some(SessionLookup::Misrouted { owner: now.node }))
                        } else {
                            plan_for(core, cont, &sid, now, ctx.delete).await
                        };
                    }
                    Ok(Ok(Claim::Lost(None))) => plan = Plan::Inner(Some(SessionLookup::Unknown)),
                    Ok(Err(_)) | Err(_) => {
                        core.counters.store_errors.fetch_add(1, Relaxed);
                        crate::metrics::store_error(crate::metrics::StoreOp::Claim);
                        plan = Plan::Inner(Some(lookup_outcome(core, &record)));
                    }
                }
            }
        }
    }
    call_inner(
        core,
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
async fn decide<R: RegistryStore>(
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
        Ok(Some(record)) => {
            // A session that exists is not what the lookup rate bounds.
            core.limits.refund();
            record
        }
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
    let fresh = LIVENESS_CACHE.min(cont.settings.liveness_period);
    // A stale entry is read again by the first request that finds it stale; the requests
    // that come meanwhile keep the last value (one read per node per period, not one per
    // request in flight when the entry expires).
    let stale = {
        let mut owners = lock(&cont.owners);
        match owners.get_mut(node) {
            Some((at, owner)) if at.elapsed() < fresh => return Some(owner.clone()),
            Some((at, owner)) => {
                *at = Instant::now();
                Some(owner.clone())
            }
            None => None,
        }
    };
    // Once per node and period: boxed, so the cached answer above costs its callers' futures
    // nothing of the store call's size.
    Box::pin(read_owner(core, cont, node, stale)).await
}

/// [`owner`]'s store read: the node's liveness record, cached; `stale` when the store did not
/// answer.
async fn read_owner<R: RegistryStore>(
    core: &Core<R>,
    cont: &Continuity,
    node: &str,
    stale: Option<Owner>,
) -> Option<Owner> {
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
            crate::metrics::store_error(crate::metrics::StoreOp::Liveness);
            tracing::debug!(error = %e, "liveness lookup failed");
            return stale;
        }
        Err(_) => {
            core.counters.store_errors.fetch_add(1, Relaxed);
            crate::metrics::store_error(crate::metrics::StoreOp::Liveness);
            return stale;
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
    if let Some(v) = &cont.hop {
        req.headers_mut()
            .insert(headers::MCP_FORWARDED_BY, v.clone());
    }
    let started = crate::metrics::Timer::start();
    match cont.forwarder.forward(route.addr, req).await {
        Ok(res) => {
            core.counters.forwarded.fetch_add(1, Relaxed);
            crate::metrics::forwarded(crate::metrics::Forward::Ok, started);
            let mut res = res.map(|b| ResponseBody::forwarded(b.map_err(Into::into).boxed()));
            res.extensions_mut().insert(crate::session::Forwarded);
            Ok(res)
        }
        Err(crate::registry::forward::ForwardError::NotSent(mut back, e)) => {
            core.counters.forward_failures.fetch_add(1, Relaxed);
            crate::metrics::forwarded(crate::metrics::Forward::NotSent, started);
            tracing::debug!(error = %e, owner = %route.owner, "forward not sent");
            back.headers_mut().remove(headers::MCP_FORWARDED_BY);
            if let Some(inner) = ctx.inner_sid()
                && let Ok(v) = HeaderValue::from_str(inner)
            {
                back.headers_mut().insert(headers::MCP_SESSION_ID, v);
            }
            Err(Some(back))
        }
        Err(crate::registry::forward::ForwardError::Failed(e)) => {
            core.counters.forward_failures.fetch_add(1, Relaxed);
            crate::metrics::forwarded(crate::metrics::Forward::Failed, started);
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
    crate::metrics::owner_failed();
    retry_response(
        StatusCode::BAD_GATEWAY,
        "the node holding the session failed during the request: retry it",
    )
}

/// A draining node takes no session over.
fn retry_elsewhere<B>() -> Response<ResponseBody<B>> {
    crate::metrics::registry_draining();
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

/// The standalone-stream sequence number a request's `Last-Event-ID: 0-<N>` names, if it
/// names one.
fn standalone_after<B>(req: &Request<B>) -> Option<u32> {
    let v = req.headers().get(headers::LAST_EVENT_ID)?.to_str().ok()?;
    let (stream, seq) = v.split_once('-')?;
    (stream.parse::<u32>().ok()? == 0).then_some(())?;
    seq.parse().ok()
}

/// The shared event log's page of the session `ctx` names (`after`: the standalone
/// sequence number the request's `Last-Event-ID` names): what the client has not seen of
/// its standalone stream (and where its numbering got to), and the `POST` answers' events,
/// which a `GET` with their `Last-Event-ID` replays. One store call, on the restoring path
/// only; a store that fails or is slow (`None`) leaves the stream to start empty, as without
/// it. Without a `Last-Event-ID` (a POST adopting the session while its client is about to
/// resume its GET stream), the stored events are read too, for that resumption.
async fn stored_events<R: RegistryStore>(
    core: &Core<R>,
    after: Option<u32>,
    ctx: &Ctx,
) -> Option<StoredEventPage> {
    let read = tokio::time::timeout(
        core.lookup_timeout,
        core.store.read_events(
            ctx.inner_sid().unwrap_or_default(),
            Some(after.unwrap_or(0)),
            crate::registry::events::MAX_LEN,
        ),
    )
    .await;
    match read {
        Ok(Ok(page)) => Some(page),
        Ok(Err(e)) => {
            core.counters.store_errors.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, "shared event log unreadable; the standalone stream starts empty");
            None
        }
        Err(_) => {
            tracing::debug!("shared event log read timed out; the standalone stream starts empty");
            None
        }
    }
}

/// This node won the record (this request, or another one of this node adopting the
/// session): the transport restores the session from it and `events` (the session's stored
/// events, read by the caller: [`stored_events`]), once however many requests ask, and serves
/// the request.
#[allow(clippy::too_many_arguments)]
async fn restore<S, ReqBody, ResBody, R>(
    core: &Arc<Core<R>>,
    mut inner: S,
    mut req: Request<ReqBody>,
    ctx: &Ctx,
    removal: Option<PendingRemoval<R>>,
    sid: &Arc<str>,
    record: SessionRecord,
    events: Option<StoredEventPage>,
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
        let mut restore = RestoreSession::new(id, version)
            .with_client(
                record.client_info.clone(),
                record.client_capabilities.clone(),
            )
            .with_principal(record.principal.clone());
        if let Some(page) = events {
            restore = restore
                .with_events(standalone_after(&req), page.top, page.events)
                .with_request_events(page.ordinal, page.requests);
        }
        req.extensions_mut().insert(restore);
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
            crate::metrics::adopted();
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
                crate::metrics::store_error(crate::metrics::StoreOp::Lookup);
                tracing::debug!(error = %e, "registry lookup failed");
                Err(())
            }
            Err(_) => {
                self.counters.store_errors.fetch_add(1, Relaxed);
                crate::metrics::store_error(crate::metrics::StoreOp::Lookup);
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
        crate::metrics::registry_not_found(outcome.reason());
    }

    /// Whether records of sessions closed on shutdown stay for adoption.
    pub(crate) fn hands_over(&self) -> bool {
        self.continuity.as_ref().is_some_and(Continuity::hands_over)
    }
}
