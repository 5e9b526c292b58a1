//! Sessions: ids, node tags, the `Session` handle, the per-request context and lifecycle.
//!
//! These types are shared by the layers: the transport creates sessions and puts [`Session`]
//! and [`RequestContext`] into request extensions; the registry attaches
//! [`Session::on_close`] hooks; the affinity layer mints tagged ids through
//! [`TaggedIdGenerator`].
//!
//! # Example
//!
//! ```
//! use mcp_affinity::session::{NodeTag, SessionIdGenerator, TaggedIdGenerator};
//!
//! let generator = TaggedIdGenerator::new(NodeTag::new("n1").unwrap());
//! assert!(generator.generate().as_str().starts_with("n1."));
//! ```

mod context;
mod envelope;
mod events;
mod handle;
mod id;
mod lifecycle;
mod restore;
mod send;
mod state;
mod subscriptions;
mod table;

pub(crate) use context::LogRef;
pub use context::RequestContext;
pub use envelope::SessionIdEnvelope;
pub(crate) use events::Watermark;
pub use events::{Durability, EventAck, EventSink, LoggedEvent, RequestEvent, StoredEvents};
pub use handle::Session;
pub(crate) use handle::SessionConfig;
pub(crate) use id::random_token;
pub use id::{
    Fingerprint, GenerateIdError, InvalidNodeTag, InvalidSessionId, MAX_SESSION_ID_LEN, NodeTag,
    RandomIdGenerator, SessionId, SessionIdGenerator, TaggedIdGenerator,
};
pub use lifecycle::CloseReason;
pub(crate) use restore::digest_hex;
pub use restore::{Forwarded, RestoreSession, SessionRestored, principal_digest};
pub use send::SendError;
pub(crate) use send::encode_message;
pub use subscriptions::MAX_RESOURCE_SUBSCRIPTIONS;
pub(crate) use table::{InsertNew, SessionTable, shrink_when_sparse};
