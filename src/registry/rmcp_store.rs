//! The registry's records as rmcp's `SessionStore` (feature `rmcp`).

use std::{fmt, future::Future, pin::Pin};

use ::rmcp::{
    model::InitializeRequestParams,
    transport::streamable_http_server::session::store::{
        SessionState, SessionStore, SessionStoreError,
    },
};

use super::{RegistryHandle, RegistryStore, SessionRecord, handoff::Restore};
use crate::session::Fingerprint;

/// What the methods of rmcp's (`async_trait`) `SessionStore` return.
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SessionStoreError>> + Send + 'a>>;

/// rmcp's [`SessionStore`] backed by the session registry's records, so that an rmcp
/// [`StreamableHttpService`](::rmcp::transport::StreamableHttpService) behind a
/// [`SessionRegistryLayer`](super::SessionRegistryLayer) restores its sessions on any node:
/// the node that adopts a session (its owner gone, draining or restarted; see the
/// [module docs](crate::registry)) has rmcp replay the session's `initialize` from the record
/// it claimed, and the client carries on without re-initializing.
///
/// Built from the [`RegistryHandle`] of the registry layer in front of the rmcp service, and
/// set as that service's `StreamableHttpServerConfig::session_store`. It works with the
/// registry, in the same process, not on its own:
///
/// - **[`store`](SessionStore::store)** (rmcp calls it after a successful `initialize`, before
///   it answers): the client's `initialize` parameters go into the session's registry record
///   as its restore fields — protocol version `v` (the one the client asked for, which rmcp
///   negotiates again when it restores), `clientInfo` `ci` and `capabilities` `cc`. Nothing is
///   written here: the fields are handed to the registry in process, which writes them with
///   the record it writes anyway for the session rmcp just minted (one write, batched, off the
///   request path, under the id clients use). rmcp binds no principal, so `p` stays empty.
/// - **[`load`](SessionStore::load)** (rmcp calls it for a session id it does not hold):
///   answers only while the registry is adopting that session on this node, with the record
///   it has just claimed (a compare-and-set on the record's owner: exactly one node restores
///   a session). Any other time it answers `None`, so rmcp restores no session the registry
///   did not hand to this node (one whose owner is alive elsewhere, for one) and makes no
///   Redis call of its own: a flood of unknown ids still costs only the registry's bounded
///   lookups. A record without restore fields (written for rmcp without this store, or by an
///   earlier version) is not adopted; the client gets the registry's `404`.
/// - **[`delete`](SessionStore::delete)** does nothing: the registry removes the record on a
///   `DELETE` itself (whoever owns it, unless the request was refused), and rmcp calls
///   `delete` only after it accepted that `DELETE`.
///
/// The ids rmcp sees are its own; in the affinity layer's envelope mode
/// ([`with_envelope`](crate::affinity::SessionAffinityBuilder::with_envelope)) the records are keyed by
/// the enveloped id clients use, and the hand-off maps one to the other. Both configurations
/// work: the registry straight over rmcp, and affinity (envelope) → registry → rmcp.
///
/// Adoption needs continuity (on by default): with
/// [`with_continuity(false)`](super::SessionRegistryBuilder::with_continuity) no session is
/// adopted, and rmcp restores none.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use mcp_affinity::registry::{MemoryStore, RmcpSessionStore, SessionRegistryLayer};
/// use rmcp::transport::{
///     StreamableHttpServerConfig, StreamableHttpService,
///     streamable_http_server::session::local::LocalSessionManager,
/// };
///
/// #[derive(Clone)]
/// struct Server;
/// impl rmcp::ServerHandler for Server {}
///
/// let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
/// let mut config = StreamableHttpServerConfig::default();
/// config.session_store = Some(Arc::new(RmcpSessionStore::new(&registry.handle())));
/// let rmcp = StreamableHttpService::new(
///     || Ok(Server),
///     Arc::new(LocalSessionManager::default()),
///     config,
/// );
/// let service = tower::ServiceBuilder::new().layer(registry).service(rmcp);
/// # let _ = service;
/// ```
pub struct RmcpSessionStore<R> {
    handle: RegistryHandle<R>,
}

impl<R> Clone for RmcpSessionStore<R> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl<R> fmt::Debug for RmcpSessionStore<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RmcpSessionStore")
            .field("node", &&*self.handle.core().node)
            .finish_non_exhaustive()
    }
}

impl<R: RegistryStore> RmcpSessionStore<R> {
    /// The session store of the registry `handle` belongs to: set it as the session store of
    /// the rmcp service behind that registry.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, RmcpSessionStore, SessionRegistryLayer};
    ///
    /// let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
    /// let store = RmcpSessionStore::new(&registry.handle());
    /// assert!(format!("{store:?}").contains("node-a"));
    /// ```
    #[must_use]
    pub fn new(handle: &RegistryHandle<R>) -> Self {
        handle.core().handoff.activate();
        Self {
            handle: handle.clone(),
        }
    }
}

/// The `initialize` parameters rmcp replays, from a record's restore fields; `None` when the
/// record has none (or they do not make such parameters).
fn state_of(record: &SessionRecord) -> Option<SessionState> {
    let version = record.protocol_version.as_deref()?;
    let params = serde_json::json!({
        "protocolVersion": version,
        "capabilities": record.client_capabilities.clone().unwrap_or_else(|| serde_json::json!({})),
        "clientInfo": record.client_info.clone()?,
    });
    serde_json::from_value::<InitializeRequestParams>(params)
        .ok()
        .map(SessionState::new)
}

/// A session's restore fields, from the state rmcp stores.
fn restore_of(state: &SessionState) -> Restore {
    let params = &state.initialize_params;
    Restore {
        protocol_version: params.protocol_version.as_str().to_owned(),
        client_info: serde_json::to_value(&params.client_info).ok(),
        client_capabilities: serde_json::to_value(&params.capabilities).ok(),
    }
}

impl<R: RegistryStore> SessionStore for RmcpSessionStore<R> {
    fn load<'life0, 'life1, 'async_trait>(
        &'life0 self,
        session_id: &'life1 str,
    ) -> StoreFuture<'async_trait, Option<SessionState>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let found = self
            .handle
            .core()
            .handoff
            .restoring_record(session_id)
            .and_then(|record| {
                let state = state_of(&record);
                if state.is_none() {
                    tracing::debug!(session = %Fingerprint::of(session_id), "an adopted record's restore fields are no initialize parameters; not restored");
                }
                state
            });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn store<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session_id: &'life1 str,
        state: &'life2 SessionState,
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.handle
            .core()
            .handoff
            .put_minted(session_id, restore_of(state));
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        session_id: &'life1 str,
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        // The registry removes the record on DELETE; only drop fields never taken.
        self.handle.core().handoff.forget(session_id);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MemoryStore, SessionRegistryLayer};

    fn state() -> SessionState {
        let params: InitializeRequestParams = serde_json::from_value(serde_json::json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"roots": {"listChanged": true}},
            "clientInfo": {"name": "c", "version": "1"},
        }))
        .unwrap();
        SessionState::new(params)
    }

    #[tokio::test]
    async fn stored_fields_wait_for_the_registry_and_load_answers_only_while_adopting() {
        let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
        let handle = layer.handle();
        let store = RmcpSessionStore::new(&handle);
        let core = handle.core();

        store.store("s1", &state()).await.unwrap();
        assert_eq!(core.handoff.waiting(), 1);
        let restore = core.handoff.take_minted("s1").expect("handed over");
        assert_eq!(core.handoff.waiting(), 0);
        let record = restore.apply(SessionRecord::new("node-a", "1").with_created_at(1));
        assert_eq!(
            record.to_json(),
            r#"{"n":"node-a","i":"1","c":1,"v":"2025-06-18","ci":{"name":"c","version":"1"},"cc":{"roots":{"listChanged":true}}}"#
        );

        // Not adopting: nothing to load (and no store call).
        assert!(store.load("s1").await.unwrap().is_none());
        let guard = core.handoff.restoring(Some("s1"), || record.clone());
        let loaded = store.load("s1").await.unwrap().expect("while adopting");
        assert_eq!(
            serde_json::to_value(&loaded.initialize_params).unwrap(),
            serde_json::to_value(&state().initialize_params).unwrap()
        );
        assert!(store.load("s2").await.unwrap().is_none());
        drop(guard);
        assert!(store.load("s1").await.unwrap().is_none());

        // A record without restore fields loads nothing.
        let bare = SessionRecord::new("node-a", "1");
        let _guard = core.handoff.restoring(Some("s3"), || bare);
        assert!(store.load("s3").await.unwrap().is_none());

        store.store("s4", &state()).await.unwrap();
        store.delete("s4").await.unwrap();
        assert_eq!(core.handoff.waiting(), 0);
    }

    #[test]
    fn the_hand_off_is_bounded() {
        let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
        let handle = layer.handle();
        let store = RmcpSessionStore::new(&handle);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            for i in 0..5000 {
                store.store(&format!("s{i}"), &state()).await.unwrap();
            }
        });
        assert!(handle.core().handoff.waiting() <= 4096);
    }

    #[test]
    fn without_a_store_the_registry_takes_nothing() {
        let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
        let core = layer.handle();
        let core = core.core();
        core.handoff.put_minted(
            "s1",
            Restore {
                protocol_version: "2025-06-18".into(),
                client_info: None,
                client_capabilities: None,
            },
        );
        assert!(
            core.handoff.take_minted("s1").is_none(),
            "inactive until a store is built"
        );
    }
}
