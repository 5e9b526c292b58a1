//! The continuity work off the request path: this node's liveness record and the sweep of
//! orphaned records.

use super::*;

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
        crate::metrics::store_error(crate::metrics::StoreOp::Liveness);
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
                crate::metrics::orphans_removed(n as u64);
            }
            Err(e) => {
                core.counters.store_errors.fetch_add(1, Relaxed);
                crate::metrics::store_error(crate::metrics::StoreOp::Sweep);
                tracing::debug!(error = %e, "orphan sweep failed; the next round continues");
                return None;
            }
        }
    }
}
