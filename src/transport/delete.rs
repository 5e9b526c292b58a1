//! `DELETE`: closing a session.

use std::sync::Arc;

use http::{Response, request::Parts};

use super::{
    ResponseFuture,
    body::ResponseBody,
    layer::Shared,
    lookup::{Lookup, lookup},
    restore,
    restore::with_restored,
    service::{method_not_allowed, reject},
};
use crate::session::CloseReason;

pub(super) fn delete<E: Send + 'static>(shared: &Arc<Shared>, parts: Parts) -> ResponseFuture<E> {
    match lookup(shared, &parts) {
        Ok(Lookup::Found(session)) => {
            shared.close(&session, CloseReason::Deleted, None);
            ResponseFuture::ready(Response::new(ResponseBody::empty()))
        }
        Ok(Lookup::Missing) => ResponseFuture::ready(reject(method_not_allowed("POST"))),
        // Restored, then closed: the client's `DELETE` is served wherever it lands.
        Ok(Lookup::Restore) => {
            let shared = shared.clone();
            ResponseFuture::boxed(async move {
                Ok(match restore::restore(&shared, &parts).await {
                    Ok(r) => {
                        shared.close(&r.session, CloseReason::Deleted, None);
                        with_restored(Ok(Response::new(ResponseBody::empty())), r)
                    }
                    Err(rejection) => reject(rejection),
                })
            })
        }
        Err(r) => ResponseFuture::ready(reject(r)),
    }
}
