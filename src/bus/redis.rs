//! The bus over Redis pub/sub: one RESP3 connection per node that subscribes once to the
//! bus's channel (sharded pub/sub on a Redis Cluster) and publishes in pipelined batches.

use std::{fmt, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use redis::{PushInfo, PushKind, RedisResult, Value as RedisValue};
use tokio::sync::mpsc;

use super::{
    cluster::WeakInner,
    stats::{Counters, DropReason},
};
use crate::config::ConfigError;

/// At most this many messages go in one pipelined batch.
const BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Which Redis the bus uses.
#[derive(Clone)]
pub(super) enum Target {
    Single(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: they are not shown.
        match self {
            Self::Single(_) => f.write_str("Single"),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(n) => write!(f, "Cluster({} nodes)", n.len()),
        }
    }
}

/// The node's one connection.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.subscribe(channel).await,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => "SPUBLISH",
        }
    }

    async fn run(&mut self, pipe: &redis::Pipeline) -> RedisResult<()> {
        match self {
            Self::Single(c) => pipe.query_async::<()>(c).await,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => pipe.query_async::<()>(c).await,
        }
    }
}

/// How a connection is made, before it is.
enum Pending {
    Single(redis::aio::ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// Checks the target and starts the node's task.
pub(super) fn start(
    runtime: &tokio::runtime::Handle,
    target: &Target,
    channel: &str,
    queue: usize,
    outgoing: mpsc::Receiver<Bytes>,
    bus: WeakInner,
) -> Result<(), ConfigError> {
    let invalid = || ConfigError::new("bus", "redis", "is not a valid Redis URL");
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(queue);
    let pushes = push_sender(in_tx, bus.clone());
    let pending = match target {
        Target::Single(url) => {
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|_| invalid())?;
            let redis = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let client =
                redis::Client::open(info.set_redis_settings(redis)).map_err(|_| invalid())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_min_delay(RETRY_MIN)
                .set_max_delay(RETRY_MAX)
                .set_push_sender(pushes)
                .set_automatic_resubscription();
            // `new_lazy_with_config` locates the runtime: run it inside the one given.
            let _enter = runtime.enter();
            Pending::Single(
                redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|_| invalid())?,
            )
        }
        #[cfg(feature = "redis-cluster")]
        Target::Cluster(nodes) => Pending::Cluster(Box::new(
            redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .push_sender(pushes)
                .build()
                .map_err(|_| invalid())?,
        )),
    };
    let Some(inner) = bus.upgrade() else {
        return Ok(());
    };
    let run = runtime.spawn(run(pending, channel.to_owned(), outgoing, bus.clone()));
    let dispatch = runtime.spawn(dispatch(in_rx, bus));
    inner.add_task(run.abort_handle());
    inner.add_task(dispatch.abort_handle());
    Ok(())
}

/// What the connection does with the messages Redis pushes: hand them to the dispatch task
/// without waiting (a full queue drops the message, counted), and follow the subscription's
/// state.
fn push_sender(
    in_tx: mpsc::Sender<Bytes>,
    bus: WeakInner,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |push: PushInfo| {
        let Some(inner) = bus.upgrade() else {
            return Err(());
        };
        let counters = &inner.counters;
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let payload = match push.data.into_iter().nth(1) {
                    Some(RedisValue::BulkString(b)) => Bytes::from(b),
                    _ => {
                        counters.dropped(DropReason::Malformed, 1);
                        return Ok(());
                    }
                };
                if in_tx.try_send(payload).is_err() {
                    counters.dropped(DropReason::Overflow, 1);
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe
                if !counters.connected.swap(true, Ordering::Relaxed) =>
            {
                tracing::info!("bus: subscribed");
            }
            PushKind::Disconnection if counters.connected.swap(false, Ordering::Relaxed) => {
                Counters::bump(&counters.disconnects, 1);
                crate::metrics::bus_disconnected();
                tracing::warn!("bus: connection to Redis lost; reconnecting");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Connects, subscribes (both retried until they succeed), then publishes the outgoing queue
/// in batches for as long as the bus lives.
async fn run(
    pending: Pending,
    channel: String,
    mut outgoing: mpsc::Receiver<Bytes>,
    bus: WeakInner,
) {
    let mut delay = RETRY_MIN;
    let mut conn = loop {
        let made: RedisResult<Conn> = match &pending {
            Pending::Single(m) => Ok(Conn::Single(m.clone())),
            #[cfg(feature = "redis-cluster")]
            Pending::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
        };
        match made {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "bus: cannot connect to Redis; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    };
    let mut subscribed = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if !subscribed {
            match conn.subscribe(&channel).await {
                Ok(()) => {
                    subscribed = true;
                    delay = RETRY_MIN;
                    if let Some(inner) = bus.upgrade() {
                        inner.counters.connected.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bus: cannot subscribe; retrying");
                    // Publishing goes on meanwhile: the other nodes may be subscribed.
                    let wait = tokio::time::sleep(delay);
                    delay = (delay * 2).min(RETRY_MAX);
                    tokio::select! {
                        () = wait => continue,
                        n = outgoing.recv_many(&mut batch, BATCH) => {
                            if n == 0 { return; }
                        }
                    }
                }
            }
        }
        if batch.is_empty() && outgoing.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for msg in &batch {
            pipe.cmd(conn.publish_command())
                .arg(&channel)
                .arg(msg.as_ref())
                .ignore();
        }
        let n = batch.len() as u64;
        batch.clear();
        let Some(inner) = bus.upgrade() else { return };
        match conn.run(&pipe).await {
            Ok(()) => {
                Counters::bump(&inner.counters.published, n);
                crate::metrics::bus_out(crate::metrics::BusOut::Ok, n);
            }
            Err(e) => {
                Counters::bump(&inner.counters.publish_failed, n);
                crate::metrics::bus_out(crate::metrics::BusOut::Failed, n);
                tracing::warn!(error = %e, messages = n, "bus: publish failed; messages lost for other nodes");
            }
        }
    }
}

/// Delivers what Redis pushed, one message at a time, on this node.
async fn dispatch(mut incoming: mpsc::Receiver<Bytes>, bus: WeakInner) {
    while let Some(bytes) = incoming.recv().await {
        let Some(inner) = bus.upgrade() else { return };
        inner.receive(&bytes);
    }
}
