//! What every API handler shares: the engine (its store, its submitter, its topics) and the
//! token verifier, with the checks every handler starts with.

use std::sync::Arc;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::broker::Settlement;
use crate::config::TopicLayout;
use crate::domain::{AppId, RejectReason};
use crate::jwt::Minter;
use crate::store::Store;
use crate::topic::Topics;
use crate::Engine;

#[derive(Clone)]
pub struct Api {
    pub engine: Arc<Engine>,
    minter: Option<Minter>,
    /// Group changes are read-modify-write: one at a time per group in this engine.
    pub group_locks: Arc<super::groups::GroupLocks>,
}

impl Api {
    pub fn new(engine: Arc<Engine>) -> Api {
        let minter = Minter::from_config(&engine.config).ok();
        Api {
            engine,
            minter,
            group_locks: Arc::default(),
        }
    }

    /// The verifier (and minter) of tokens: `JWT_SECRET` is what the API's auth rests on.
    pub fn minter(&self) -> ApiResult<&Minter> {
        self.minter
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("the HTTP API needs JWT_SECRET".into()))
    }

    pub fn topics(&self) -> &Topics {
        self.engine.pipeline.topics()
    }

    /// The store, once it answered; the API has nothing to read without one.
    pub fn store(&self) -> ApiResult<&Store> {
        if self.engine.config.store.is_none() {
            return Err(ApiError::Unavailable(
                "this engine runs without a store (DATABASE_URL=off)".into(),
            ));
        }
        self.engine
            .store
            .get()
            .ok_or_else(|| ApiError::Unavailable("the store is not available yet; retry later".into()))
    }

    /// The path's `{app}`: a valid id, and the app this engine serves.
    pub fn app(&self, app: &str) -> ApiResult<AppId> {
        let app = AppId::parse(app).map_err(|_| ApiError::bad("invalid app id"))?;
        if app.as_str() != self.engine.config.topics.app_id {
            return Err(ApiError::NotFound(format!(
                "this engine serves app {}, not {app}",
                self.engine.config.topics.app_id
            )));
        }
        Ok(app)
    }

    /// Inputs other than messages exist in the chat21 layout only (PROTOCOL §1).
    pub fn chat21_layout(&self) -> ApiResult<()> {
        match self.engine.config.topics.layout {
            TopicLayout::Chat21 => Ok(()),
            TopicLayout::Seed => Err(ApiError::NotFound(
                "not available with TOPIC_LAYOUT=seed (only messages exist there)".into(),
            )),
        }
    }

    /// A user's group may have at most `MAX_INLINE_GROUP_MEMBERS` members when the user sets
    /// them over HTTP (each member is a copy of every later message and a system message on
    /// creation); admins (services that manage groups) are not limited.
    pub fn members_within_limit(&self, caller: &Caller, members: usize) -> ApiResult<()> {
        let max = self.engine.config.policy.max_inline_group_members;
        if caller.admin || members <= max {
            Ok(())
        } else {
            Err(ApiError::bad(format!(
                "a group may have at most {max} members (MAX_INLINE_GROUP_MEMBERS)"
            )))
        }
    }

    /// Charge the caller's rate limit for the messages a call makes on its behalf (system
    /// messages and replays are sent by `system`, which is exempt): 429 when over.
    pub fn charge(&self, caller: &Caller, messages: usize, copies: usize) -> ApiResult<()> {
        if caller.admin {
            return Ok(());
        }
        self.engine
            .pipeline
            .chain()
            .charge(&caller.user, messages, copies)
            .map_err(|_| ApiError::RateLimited)
    }

    /// Submit inputs, in order, through the broker and wait until they are settled; the
    /// first refusal is the answer.
    pub async fn submit(&self, inputs: Vec<(String, serde_json::Value)>) -> ApiResult<()> {
        let inputs = inputs
            .into_iter()
            .map(|(k, v)| (k, serde_json::to_vec(&v).expect("JSON values serialize")))
            .collect();
        for settled in self.engine.submitter.submit_all(inputs).await? {
            refusal(settled)?;
        }
        Ok(())
    }
}

/// A settled input as the API answers it.
fn refusal(s: Settlement) -> ApiResult<()> {
    match s {
        Settlement::Processed => Ok(()),
        Settlement::DeadLettered => Err(ApiError::Internal(
            "the store refused the change; it is in the dead-letter queue".into(),
        )),
        Settlement::Rejected { reason } => Err(match RejectReason::parse(&reason) {
            Some(RejectReason::RateLimited) => ApiError::RateLimited,
            Some(RejectReason::NotAMember) => ApiError::Forbidden("not a member of the group".into()),
            Some(RejectReason::TooLarge) => ApiError::Refused("too_large".into()),
            _ => ApiError::Refused(reason),
        }),
    }
}
