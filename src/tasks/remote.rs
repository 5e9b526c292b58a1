//! Reaching the node that runs a task: `tasks/update` and `tasks/cancel` over the cluster bus.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use serde_json::Value;

use super::{
    TaskManager,
    manager::{Control, Inner},
};
use crate::{
    bus::{BusError, ClusterBus},
    handler::ErrorObject,
};

/// How long a node waits for the running node's acknowledgement of an update or a cancel.
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster bus, as the task manager uses it.
#[derive(Clone, Debug)]
pub(super) struct Remote {
    bus: ClusterBus,
}

/// What the running node answered.
pub(super) enum Sent {
    /// It applied the control (and stored the change) before answering.
    Applied,
    /// It does not run the task (it ended meanwhile, or that node restarted).
    NotThere,
}

impl Remote {
    pub(super) fn new(bus: &ClusterBus) -> Self {
        Self { bus: bus.clone() }
    }

    pub(super) fn node(&self) -> &str {
        self.bus.node()
    }

    /// Applies the control messages addressed to this node to `manager`'s tasks. The bus
    /// holds the manager weakly (the manager holds the bus).
    pub(super) fn serve(&self, manager: &TaskManager) {
        let weak: Weak<Inner> = Arc::downgrade(&manager.inner);
        self.bus.serve_tasks(Arc::new(move |task, kind, params| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(inner) = weak.upgrade() else {
                    return false;
                };
                let control = match (kind.as_str(), params) {
                    ("cancel", _) => Control::Cancel,
                    ("update", Some(Value::Object(map))) => Control::Update(map),
                    _ => return false,
                };
                TaskManager { inner }.apply_local(&task, control).await
            })
        }));
    }

    /// Sends `control` for task `id` to `node` and waits for its acknowledgement.
    pub(super) async fn send(
        &self,
        node: &str,
        id: &str,
        control: Control,
    ) -> Result<Sent, ErrorObject> {
        let (kind, params) = match control {
            Control::Cancel => ("cancel", None),
            Control::Update(map) => ("update", Some(Value::Object(map))),
        };
        match self
            .bus
            .task_request(node, id, kind, params, CONTROL_TIMEOUT)
            .await
        {
            Ok(true) => Ok(Sent::Applied),
            Ok(false) => Ok(Sent::NotThere),
            Err(BusError::Timeout) => Err(ErrorObject::internal(
                "the node running the task did not answer; retry",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "task control not sent");
                Err(ErrorObject::internal(
                    "the cluster bus is unavailable; retry",
                ))
            }
        }
    }
}
