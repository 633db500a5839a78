//! One way through for every input, whatever its source (a broker delivery today; an HTTP
//! request or a replay tomorrow):
//!
//! ```text
//! parse (topic + body) → lookups (group, block lists: cache, then store) → handler (pure)
//!   → policy chain → cache changes → Decision
//! … the source publishes the plan and commits its writes, then:
//! committed → cache changes released, presence counted, follow-up publishes
//! ```
//!
//! The pipeline never publishes, commits or acks: a source does that with the [`Decision`]
//! and hands the commit's result back to [`Pipeline::committed`]. Lookups are awaited in
//! input order (the caller decides one input at a time), so the order of a sender's messages
//! never depends on cache hits and misses; a change an input makes to a cached group or block
//! list applies to the very next input, before its commit.

mod blocks;
mod cache;
mod groups;
mod lookups;

pub use blocks::{BlockCache, BlockSet};
pub use groups::{GroupCache, GroupLookup};
pub use lookups::{Lookups, NoStore};

use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::domain::{AppId, Group, UserId};
use crate::handlers::{Input, Settings};
use crate::metrics::{CacheKind, Metrics};
use crate::plan::{Committed, Context, Plan, Publish, Rejection, Write};
use crate::policy::{Chain, Facts};
use crate::retry::{self, Backoff};
use crate::store::StoreError;
use crate::topic::Topics;

/// What one input does: deliver a plan, or a [`Rejection`] (dropped, or refused with the
/// sender told).
pub type Decision = Result<Delivery, Rejection>;

/// A plan to carry out, and the cache changes it made (to release once its writes commit).
#[derive(Debug)]
pub struct Delivery {
    pub plan: Plan,
    pub changes: Changes,
}

/// Cached state an input changed when it was decided: group updates and block lists. Each
/// applies to every input decided after it, and stays authoritative in its cache until the
/// input's commit — then a store read returns it too.
#[derive(Debug, Default)]
pub struct Changes {
    groups: Vec<Arc<Group>>,
    blocks: Vec<(UserId, BlockSet)>,
}

pub struct Pipeline {
    topics: Arc<Topics>,
    chain: Chain,
    settings: Settings,
    groups: GroupCache,
    blocks: BlockCache,
    metrics: Arc<Metrics>,
    /// Writes are committed by a store: cache changes stay in the overlay until then.
    durable: bool,
}

/// The caches' bounds.
pub struct CacheSizes {
    pub groups: u64,
    pub blocks: u64,
    pub ttl: std::time::Duration,
}

impl Pipeline {
    pub fn new(
        topics: Arc<Topics>,
        chain: Chain,
        settings: Settings,
        caches: CacheSizes,
        metrics: Arc<Metrics>,
        durable: bool,
    ) -> Pipeline {
        Pipeline {
            topics,
            chain,
            settings,
            groups: GroupCache::new(caches.groups, caches.ttl),
            blocks: BlockCache::new(caches.blocks, caches.ttl),
            metrics,
            durable,
        }
    }

    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The input a delivery is, if its size and body are acceptable (see [`Input::admit`]).
    pub fn admit(&self, inbound: crate::topic::Inbound, body: &[u8], now_ms: i64) -> Result<Input, Rejection> {
        Input::admit(&self.topics, inbound, body, &self.settings, now_ms)
    }

    /// Decide what `input` does. Store reads are retried until the store answers; `None`:
    /// shutdown came first (the source gives the input back).
    pub async fn decide<L: Lookups>(
        &self,
        input: Input,
        lookups: &L,
        now_ms: i64,
        shutdown: &CancellationToken,
    ) -> Option<Decision> {
        if let Err(rejection) = self.chain.admit(&input, now_ms) {
            return Some(Err(rejection));
        }
        let group = match input.group_needed() {
            Some(uid) => self.group(input.inbound.app(), uid, lookups, shutdown).await?,
            None => None,
        };
        let Input { inbound, payload } = input;
        let handled = {
            let fresh_id = || uuid::Uuid::new_v4().to_string();
            let ctx = Context {
                now_ms,
                fresh_id: &fresh_id,
                group,
                settings: &self.settings,
            };
            crate::handlers::handle(&self.topics, &inbound, payload, &ctx)
        };
        let plan = match handled {
            Ok(plan) => plan,
            Err(rejection) => return Some(Err(rejection)),
        };
        // Before the block lists are read: a sender over its budget costs no more lookups.
        if let Err(rejection) = self.chain.charge_fan_out(&inbound, &plan) {
            return Some(Err(rejection));
        }
        let block_commands: Vec<(UserId, UserId, bool)> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Block { user, other, add, .. } => Some((user.clone(), other.clone(), *add)),
                _ => None,
            })
            .collect();
        let users = plan
            .publishes
            .iter()
            .filter_map(|p| p.to.as_ref())
            .chain(block_commands.iter().map(|(user, _, _)| user));
        let mut known = self.block_lists(inbound.app(), users, lookups, shutdown).await?;
        let blocked = |user: &UserId, other: &UserId| known.get(user).is_some_and(|s| s.contains(other));
        let plan = match self.chain.run(&inbound, plan, &Facts { blocked: &blocked }) {
            Ok(plan) => plan,
            Err(rejection) => return Some(Err(rejection)),
        };
        // The chain passed it: its group updates and block commands apply from now on.
        let mut changes = Changes::default();
        for w in &plan.writes {
            if let Write::Group(g) = w {
                self.groups.updated(g.clone(), self.durable);
                changes.groups.push(g.clone());
            }
        }
        for (user, other, add) in block_commands {
            let base = known.get(&user).cloned().unwrap_or_default();
            let next = blocks::apply(&base, &other, add);
            self.blocks.changed(&user, next.clone(), self.durable);
            known.insert(user.clone(), next.clone());
            changes.blocks.push((user, next));
        }
        Some(Ok(Delivery { plan, changes }))
    }

    /// An input's writes committed: its cache changes are what a store read returns now, its
    /// presence transitions are facts (counted and logged here; sent as webhooks by the
    /// consumer); returns the publishes that depend on what the commit changed.
    pub fn committed(&self, changes: &Changes, committed: &Committed) -> Vec<Publish> {
        for g in &changes.groups {
            self.groups.committed(g);
        }
        for (user, set) in &changes.blocks {
            self.blocks.committed(user, set);
        }
        for change in &committed.presence {
            self.metrics.presence_changed(change.online);
            tracing::info!(app = %change.app_id, user = %change.user_id, online = change.online, "presence changed");
        }
        crate::handlers::after_commit(&self.topics, committed)
    }

    /// The stored group `uid`, from the cache or else the store.
    async fn group<L: Lookups>(
        &self,
        app: &AppId,
        uid: &UserId,
        lookups: &L,
        shutdown: &CancellationToken,
    ) -> Option<Option<Arc<Group>>> {
        if let GroupLookup::Known(g) = self.groups.lookup(uid) {
            self.metrics.lookups(CacheKind::Groups, true, 1);
            return Some(g);
        }
        if lookups.is_a_store() {
            self.metrics.lookups(CacheKind::Groups, false, 1);
        }
        let group = match read("group", shutdown, || lookups.group(app, uid)).await? {
            Ok(group) => group.map(Arc::new),
            // Retrying cannot fix it, and one bad row must not stall every input behind it:
            // the group is taken as not stored (so not cached), loudly.
            Err(e) => {
                tracing::error!(error = %e, group = %uid, "stored group unreadable; taken as not stored");
                return Some(None);
            }
        };
        self.groups.put(uid, group.clone());
        Some(group)
    }

    /// The block lists of `users`: from the cache, the rest from the store in one read.
    async fn block_lists<'u, L: Lookups>(
        &self,
        app: &AppId,
        users: impl Iterator<Item = &'u UserId>,
        lookups: &L,
        shutdown: &CancellationToken,
    ) -> Option<HashMap<UserId, BlockSet>> {
        let mut known: HashMap<UserId, BlockSet> = HashMap::new();
        let mut missing: Vec<UserId> = Vec::new();
        for u in users {
            if known.contains_key(u) || missing.contains(u) {
                continue;
            }
            match self.blocks.get(u) {
                Some(set) => {
                    known.insert(u.clone(), set);
                }
                None => missing.push(u.clone()),
            }
        }
        self.metrics.lookups(CacheKind::Blocks, true, known.len() as u64);
        if missing.is_empty() {
            return Some(known);
        }
        self.metrics.lookups(CacheKind::Blocks, false, missing.len() as u64);
        let found = match read("block lists", shutdown, || lookups.block_lists(app, &missing)).await? {
            Ok(found) => found,
            // As for groups: taken as blocking no one this time (not cached), loudly.
            Err(e) => {
                tracing::error!(error = %e, "stored block lists unreadable; taken as empty");
                return Some(known);
            }
        };
        for (user, set) in found {
            let set = Arc::new(set);
            self.blocks.put(&user, set.clone());
            known.insert(user, set);
        }
        Some(known)
    }
}

/// A store read on the hot path, retried until the store answers (inputs stay unacked
/// meanwhile, as they do for writes); an answer that retrying cannot change (a corrupt row)
/// is handed back as it is. `None`: shutdown came first.
async fn read<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<Result<T, StoreError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let failed = |e: &StoreError| tracing::warn!(error = %e, what, "store read failed; retrying");
    let answer = || {
        let read = attempt();
        async move {
            match read.await {
                Ok(v) => Ok(Ok(v)),
                Err(e) if e.is_transient() => Err(e),
                Err(e) => Ok(Err(e)),
            }
        }
    };
    retry::until_ok(Backoff::STORE, shutdown, failed, answer).await
}

#[cfg(test)]
mod tests;
