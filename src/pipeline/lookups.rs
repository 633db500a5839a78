//! What the pipeline reads from the store before a handler or the chain runs: a stored group,
//! block lists. Behind a trait so the pipeline's ordering and cache behaviour are unit-tested
//! with an in-memory store; the store is the production implementation.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use crate::domain::{AppId, Group, UserId};
use crate::store::{Store, StoreError};

pub trait Lookups: Sync {
    /// Reads go to a store (counted as store reads in the cache metrics).
    fn is_a_store(&self) -> bool {
        true
    }

    /// A stored group of `app`, if any.
    fn group(&self, app: &AppId, uid: &UserId) -> impl Future<Output = Result<Option<Group>, StoreError>> + Send;

    /// The block lists of `users` (who each of them blocked); every user is in the answer,
    /// with an empty set when they blocked no one.
    fn block_lists(
        &self,
        app: &AppId,
        users: &[UserId],
    ) -> impl Future<Output = Result<HashMap<UserId, HashSet<UserId>>, StoreError>> + Send;
}

impl Lookups for Store {
    fn group(&self, app: &AppId, uid: &UserId) -> impl Future<Output = Result<Option<Group>, StoreError>> + Send {
        Store::group(self, app, uid)
    }

    fn block_lists(
        &self,
        app: &AppId,
        users: &[UserId],
    ) -> impl Future<Output = Result<HashMap<UserId, HashSet<UserId>>, StoreError>> + Send {
        self.blocks_of(app, users)
    }
}

/// No store (`DATABASE_URL=off`): groups exist only through group updates and block lists
/// only through block commands, both in the cache.
pub struct NoStore;

impl Lookups for NoStore {
    fn is_a_store(&self) -> bool {
        false
    }

    async fn group(&self, _app: &AppId, _uid: &UserId) -> Result<Option<Group>, StoreError> {
        Ok(None)
    }

    async fn block_lists(
        &self,
        _app: &AppId,
        users: &[UserId],
    ) -> Result<HashMap<UserId, HashSet<UserId>>, StoreError> {
        Ok(users.iter().map(|u| (u.clone(), HashSet::new())).collect())
    }
}

impl<L: Lookups> Lookups for Option<L> {
    fn is_a_store(&self) -> bool {
        self.as_ref().is_some_and(L::is_a_store)
    }

    async fn group(&self, app: &AppId, uid: &UserId) -> Result<Option<Group>, StoreError> {
        match self {
            Some(l) => l.group(app, uid).await,
            None => NoStore.group(app, uid).await,
        }
    }

    async fn block_lists(&self, app: &AppId, users: &[UserId]) -> Result<HashMap<UserId, HashSet<UserId>>, StoreError> {
        match self {
            Some(l) => l.block_lists(app, users).await,
            None => NoStore.block_lists(app, users).await,
        }
    }
}
