//! The [`TaskStore`] behind a trait object, so the manager and its handles are not generic.

use std::{future::Future, pin::Pin};

use super::{TaskRecord, TaskStore, TaskStoreError};

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, TaskStoreError>> + Send + 'a>>;

pub(super) trait DynTaskStore: Send + Sync + std::fmt::Debug + 'static {
    fn create<'a>(&'a self, record: &'a TaskRecord) -> BoxFut<'a, bool>;
    fn get<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<TaskRecord>>;
    fn replace<'a>(&'a self, record: &'a TaskRecord, expected: u64) -> BoxFut<'a, bool>;
    fn ping(&self) -> BoxFut<'_, ()>;
}

impl<T: TaskStore> DynTaskStore for T {
    fn create<'a>(&'a self, record: &'a TaskRecord) -> BoxFut<'a, bool> {
        Box::pin(TaskStore::create(self, record))
    }
    fn get<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<TaskRecord>> {
        Box::pin(TaskStore::get(self, id))
    }
    fn replace<'a>(&'a self, record: &'a TaskRecord, expected: u64) -> BoxFut<'a, bool> {
        Box::pin(TaskStore::replace(self, record, expected))
    }
    fn ping(&self) -> BoxFut<'_, ()> {
        Box::pin(TaskStore::ping(self))
    }
}
