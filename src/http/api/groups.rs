//! Groups over HTTP (PROTOCOL §14, §4), as chat21-http-server does them and Chat21 clients
//! expect: every change is a group update (I8) and system messages from `system`, submitted
//! as inputs — the same way through the pipeline as a trusted service's — and answered once
//! settled, so the next call and the next message see it.
//!
//! Who may do what: any member (or an admin) reads a group; the owner or an admin adds
//! members, sets them, renames and changes attributes; the owner, an admin or the member
//! itself removes a member. A user may create groups whose id starts with `group-` (an id in
//! the timeline space must never be someone else's: a group named like a user would post
//! its timeline copies into that user's inbox); an admin any id.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::auth::{Caller, Token};
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Ids};
use super::state::Api;
use super::{done, ok, parse_id};
use crate::clock::now_ms;
use crate::domain::{status, AppId, Group, UserId};
use crate::store::Cursor;

/// Messages of a group's own timeline replayed to a member who joins: the newest ones, in
/// the order they were sent (chat21-http-server replays 200, the oldest; the newest are
/// what a joining member needs).
pub const JOIN_HISTORY: i64 = 200;

/// The sender of system messages (a `TRUSTED_SENDERS` id by default).
const SYSTEM: &str = "system";

/// One change at a time per group in this engine: a change reads the group, then submits
/// the changed one.
#[derive(Default)]
pub struct GroupLocks(Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>);

impl GroupLocks {
    async fn hold(&self, uid: &UserId) -> GroupGuard<'_> {
        let lock = self
            .0
            .lock()
            .expect("group locks")
            .entry(uid.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        GroupGuard {
            locks: self,
            uid: uid.clone(),
            _guard: guard,
            lock,
        }
    }
}

struct GroupGuard<'a> {
    locks: &'a GroupLocks,
    uid: UserId,
    _guard: tokio::sync::OwnedMutexGuard<()>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        // The map keeps a lock only while someone holds or waits for it.
        let mut map = self.locks.0.lock().expect("group locks");
        if Arc::strong_count(&self.lock) <= 3 {
            map.remove(&self.uid);
        }
    }
}

#[derive(Deserialize)]
pub struct AppPath {
    app: String,
}

#[derive(Deserialize)]
pub struct GroupPath {
    app: String,
    group: String,
}

#[derive(Deserialize)]
pub struct MemberPath {
    app: String,
    group: String,
    member: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewGroup {
    group_name: String,
    /// Default `group-<uuid>`; a user's must start with `group-`.
    #[serde(default)]
    group_id: Option<String>,
    /// `{member_id: 1, …}`; the creator joins too.
    #[serde(default)]
    #[schema(value_type = Object)]
    group_members: Option<Map<String, Value>>,
    #[serde(default)]
    #[schema(value_type = Object)]
    attributes: Option<Value>,
    /// The owner (admin tokens only; default the creator).
    #[serde(default)]
    group_owner: Option<String>,
}

/// Create a group: stored with the creator as owner and member, then `GROUP_CREATED` and one
/// `MEMBER_JOINED_GROUP` per member, from `system`, into the group.
#[utoipa::path(post, path = "/api/{app}/groups", tag = "groups", params(("app" = String, Path)), request_body = NewGroup,
    responses((status = 201, description = "`{success: true, group}`"), (status = 409, description = "the id is taken")))]
pub async fn create(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<AppPath>,
    Body(g): Body<NewGroup>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let name = g.group_name.trim();
    if name.is_empty() {
        return Err(ApiError::bad("group_name is required"));
    }
    let uid = match &g.group_id {
        Some(id) => parse_id(id, "group_id")?,
        None => parse_id(&format!("group-{}", uuid::Uuid::new_v4()), "group_id")?,
    };
    if !caller.admin && !uid.starts_with("group-") {
        return Err(ApiError::bad("group_id must start with group-"));
    }
    let owner = match &g.group_owner {
        Some(o) => {
            caller.require_admin()?;
            parse_id(o, "group_owner")?
        }
        None => caller.user.clone(),
    };
    let mut members = member_map(g.group_members.unwrap_or_default())?;
    if !caller.admin {
        members.insert(caller.user.to_string(), 1.into());
    }
    api.members_within_limit(&caller, members.len())?;
    keys_fit(&api, &app, &uid, members.keys().map(String::as_str))?;
    let _lock = api.group_locks.hold(&uid).await;
    // Someone else's group is never replaced by a user's create (an admin's is an upsert,
    // as services that manage groups expect) — nor is a group id already in use without a
    // stored group (an inline or transient group's conversation): its creator would own it
    // and could replay its history to itself.
    if !caller.admin {
        let store = api.store()?;
        let in_use =
            store.group(&app, &uid).await?.is_some() || !store.history(&app, &uid, &uid, None, 1).await?.is_empty();
        if in_use {
            return Err(ApiError::Conflict(format!("group {uid} exists")));
        }
    }
    // GROUP_CREATED and one MEMBER_JOINED_GROUP per member, each to every member.
    api.charge(&caller, 1 + members.len(), members.len() + 1)?;
    let now = now_ms();
    let mut group = Map::new();
    group.insert("name".into(), name.into());
    group.insert("uid".into(), uid.as_str().into());
    group.insert("appId".into(), app.as_str().into());
    group.insert("owner".into(), owner.as_str().into());
    group.insert("members".into(), Value::Object(members.clone()));
    group.insert("createdOn".into(), now.into());
    group.insert("updatedOn".into(), now.into());
    if let Some(a) = g.attributes.filter(|a| !a.is_null()) {
        group.insert("attributes".into(), a);
    }
    let update = group_update(&group, None, &Map::new());
    api.submit(vec![(api.topics().group_update(&app), update)]).await?;
    let mut notices = vec![system_message(
        &api,
        &uid,
        name,
        "Group created",
        label("GROUP_CREATED", json!({"creator": owner})),
    )];
    for member in members.keys() {
        notices.push(system_message(
            &api,
            &uid,
            name,
            &format!("{member} joined group on creation"),
            label("MEMBER_JOINED_GROUP", joined(member)),
        ));
    }
    api.submit(notices).await?;
    Ok((StatusCode::CREATED, Json(json!({"success": true, "group": group}))))
}

/// A group, for its members and admins.
#[utoipa::path(get, path = "/api/{app}/groups/{group}", tag = "groups", params(("app" = String, Path), ("group" = String, Path)),
    responses((status = 200, description = "`{success: true, result: group}`"), (status = 403, description = "not a member"), (status = 404, description = "no such group")))]
pub async fn get(State(api): State<Api>, token: Token, Ids(path): Ids<GroupPath>) -> ApiResult<Json<Value>> {
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let group = stored(&api, &app, &path.group).await?;
    if !caller.admin && !group.is_member(&caller.user) {
        return Err(ApiError::Forbidden("not a member of the group".into()));
    }
    Ok(ok(group_object(&group)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Join {
    member_id: String,
}

/// Add a member (owner or admin): the members old and new get the group with
/// `notification.messagelabel.key = MEMBER_JOINED_GROUP`, the group a system message, and
/// the new member the group's recent timeline (`__history: "true"`, status 150).
#[utoipa::path(post, path = "/api/{app}/groups/{group}/members", tag = "groups", params(("app" = String, Path), ("group" = String, Path)), request_body = Join,
    responses((status = 200, description = "`{success: true}`"), (status = 409, description = "already a member")))]
pub async fn join(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<GroupPath>,
    Body(j): Body<Join>,
) -> ApiResult<Json<Value>> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let member = parse_id(&j.member_id, "member_id")?;
    let uid = parse_id(&path.group, "group")?;
    let _lock = api.group_locks.hold(&uid).await;
    let group = stored(&api, &app, &uid).await?;
    owner_or_admin(&caller, &group)?;
    if group.is_member(&member) {
        return Err(ApiError::Conflict(format!("{member} is already a member")));
    }
    api.members_within_limit(&caller, group.members.len() + 1)?;
    let history = welcome_history(&api, &app, &group, &member).await?;
    api.charge(&caller, 1, group.members.len() + 2)?;
    api.charge(&caller, history.len(), 1)?;
    let mut object = group_object(&group);
    let mut members = members_of(&group);
    members.insert(member.to_string(), 1.into());
    object.insert("members".into(), Value::Object(members.clone()));
    object.insert("updatedOn".into(), now_ms().into());
    let notification = label("MEMBER_JOINED_GROUP", joined(&member));
    let update = group_update(&object, Some(notification), &members);
    api.submit(vec![(api.topics().group_update(&app), update)]).await?;
    welcome(&api, &group, &member, history).await?;
    Ok(done())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SetMembers {
    #[schema(value_type = Object)]
    members: Map<String, Value>,
}

/// Replace the members (owner or admin): the old members get the group, each new member the
/// join's system message and history.
#[utoipa::path(put, path = "/api/{app}/groups/{group}/members", tag = "groups", params(("app" = String, Path), ("group" = String, Path)), request_body = SetMembers,
    responses((status = 200, description = "`{success: true}`")))]
pub async fn set_members(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<GroupPath>,
    Body(s): Body<SetMembers>,
) -> ApiResult<Json<Value>> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let uid = parse_id(&path.group, "group")?;
    let members = member_map(s.members)?;
    api.members_within_limit(&caller, members.len())?;
    let _lock = api.group_locks.hold(&uid).await;
    let group = stored(&api, &app, &uid).await?;
    owner_or_admin(&caller, &group)?;
    let old = members_of(&group);
    let mut welcomes = Vec::new();
    for added in members.keys().filter(|m| !old.contains_key(*m)) {
        let added = parse_id(added, "members")?;
        let history = welcome_history(&api, &app, &group, &added).await?;
        api.charge(&caller, 1, members.len() + 1)?;
        api.charge(&caller, history.len(), 1)?;
        welcomes.push((added, history));
    }
    let mut object = group_object(&group);
    object.insert("members".into(), Value::Object(members.clone()));
    object.insert("updatedOn".into(), now_ms().into());
    let update = group_update(&object, None, &old);
    api.submit(vec![(api.topics().group_update(&app), update)]).await?;
    for (added, history) in welcomes {
        welcome(&api, &group, &added, history).await?;
    }
    Ok(done())
}

/// Remove a member (owner, admin, or the member itself): the old members, the removed one
/// included, get the group with `MEMBER_LEFT_GROUP`; the group a system message.
#[utoipa::path(delete, path = "/api/{app}/groups/{group}/members/{member}", tag = "groups",
    params(("app" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses((status = 200, description = "`{success: true}`"), (status = 404, description = "no such group or member")))]
pub async fn leave(State(api): State<Api>, token: Token, Ids(path): Ids<MemberPath>) -> ApiResult<Json<Value>> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let uid = parse_id(&path.group, "group")?;
    let member = parse_id(&path.member, "member")?;
    let _lock = api.group_locks.hold(&uid).await;
    let group = stored(&api, &app, &uid).await?;
    if caller.user != member {
        owner_or_admin(&caller, &group)?;
    }
    if !group.is_member(&member) {
        return Err(ApiError::NotFound(format!("{member} is not a member")));
    }
    api.charge(&caller, 1, group.members.len())?;
    let old = members_of(&group);
    let mut members = old.clone();
    members.remove(member.as_str());
    let mut object = group_object(&group);
    object.insert("members".into(), Value::Object(members));
    object.insert("updatedOn".into(), now_ms().into());
    let left = label("MEMBER_LEFT_GROUP", json!({"member_id": member}));
    let update = group_update(&object, Some(left.clone()), &old);
    let notice = system_message(
        &api,
        &uid,
        group.name().unwrap_or_default(),
        &format!("{member} removed from group"),
        left,
    );
    api.submit(vec![(api.topics().group_update(&app), update)]).await?;
    api.submit(vec![notice]).await?;
    Ok(done())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Rename {
    group_name: String,
}

/// Rename (owner or admin): the members get the group with `DATA_UPDATED_GROUP`.
#[utoipa::path(put, path = "/api/{app}/groups/{group}", tag = "groups", params(("app" = String, Path), ("group" = String, Path)), request_body = Rename,
    responses((status = 200, description = "`{success: true}`")))]
pub async fn rename(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<GroupPath>,
    Body(r): Body<Rename>,
) -> ApiResult<Json<Value>> {
    let name = r.group_name.trim().to_owned();
    if name.is_empty() {
        return Err(ApiError::bad("group_name is required"));
    }
    let notification = label("DATA_UPDATED_GROUP", json!({"group_name": name}));
    change(api, token, path, notification, |o| {
        o.insert("name".into(), name.into());
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Attributes {
    #[schema(value_type = Object)]
    attributes: Map<String, Value>,
}

/// Replace the attributes (owner or admin): the members get the group with
/// `ATTRIBUTES_UPDATED_GROUP`.
#[utoipa::path(put, path = "/api/{app}/groups/{group}/attributes", tag = "groups", params(("app" = String, Path), ("group" = String, Path)), request_body = Attributes,
    responses((status = 200, description = "`{success: true}`")))]
pub async fn attributes(
    State(api): State<Api>,
    token: Token,
    Ids(path): Ids<GroupPath>,
    Body(a): Body<Attributes>,
) -> ApiResult<Json<Value>> {
    let notification = label("ATTRIBUTES_UPDATED_GROUP", json!({"attributes": a.attributes}));
    change(api, token, path, notification, |o| {
        o.insert("attributes".into(), Value::Object(a.attributes));
    })
    .await
}

/// An owner's or admin's change of a group's own fields, told to its members.
async fn change(
    api: Api,
    token: Token,
    path: GroupPath,
    notification: Value,
    apply: impl FnOnce(&mut Map<String, Value>),
) -> ApiResult<Json<Value>> {
    api.chat21_layout()?;
    let app = api.app(&path.app)?;
    let caller = token.caller(&app)?;
    let uid = parse_id(&path.group, "group")?;
    let _lock = api.group_locks.hold(&uid).await;
    let group = stored(&api, &app, &uid).await?;
    owner_or_admin(&caller, &group)?;
    api.charge(&caller, 1, group.members.len())?;
    let mut object = group_object(&group);
    apply(&mut object);
    object.insert("updatedOn".into(), now_ms().into());
    let update = group_update(&object, Some(notification), &members_of(&group));
    api.submit(vec![(api.topics().group_update(&app), update)]).await?;
    Ok(done())
}

/// The history a joining `member` will be replayed: the group's own timeline, its newest
/// [`JOIN_HISTORY`] messages oldest first, read *before* the join's own system message (which
/// the member gets live), without what the member may not see — messages `hiddenFor` it and
/// messages of senders it blocked. Every replay key is checked here, before anything changes.
async fn welcome_history(api: &Api, app: &AppId, group: &Group, member: &UserId) -> ApiResult<Vec<(String, Value)>> {
    keys_fit(api, app, &group.uid, [member.as_str()])?;
    let key = api.topics().history_replay(app, member, &group.uid);
    if key.len() > crate::topic::MAX_KEY_BYTES {
        return Err(ApiError::bad("the ids are too long for a routing key (255 bytes)"));
    }
    let store = api.store()?;
    let blocked: std::collections::HashSet<UserId> = store
        .blocked_by(app, member)
        .await?
        .into_iter()
        .map(|(other, _)| other)
        .collect();
    let mut recent = store
        .history(app, &group.uid, &group.uid, None::<&Cursor>, JOIN_HISTORY)
        .await?;
    recent.reverse();
    Ok(recent
        .into_iter()
        .filter(|m| m.message.hidden_for() != Some(member.as_str()))
        .filter(|m| !m.message.sender().is_some_and(|s| blocked.contains(s)))
        .map(|m| {
            let mut fields = m.message.fields().clone();
            fields.insert("__history".into(), "true".into());
            fields.insert("status".into(), status::DELIVERED.into());
            let attributes = fields.entry("attributes").or_insert_with(|| json!({}));
            if let Value::Object(a) = attributes {
                if a.get("forcenotification") != Some(&Value::Bool(true)) {
                    a.insert("sendnotification".into(), false.into());
                }
            }
            (key.clone(), Value::Object(fields))
        })
        .collect())
}

/// What a member who joined gets: the system message to the group (the member included),
/// then the history read before it.
async fn welcome(api: &Api, group: &Group, member: &UserId, history: Vec<(String, Value)>) -> ApiResult<()> {
    let name = group.name().unwrap_or_default();
    let text = format!("{member} added to group");
    let notice = system_message(
        api,
        &group.uid,
        name,
        &text,
        label("MEMBER_JOINED_GROUP", joined(member)),
    );
    api.submit(vec![notice]).await?;
    api.submit(history).await
}

/// An I8 payload: the group (with a transient `notification`, which is not stored) for
/// every user in `notify_to`.
fn group_update(group: &Map<String, Value>, notification: Option<Value>, notify_to: &Map<String, Value>) -> Value {
    let mut group = group.clone();
    if let Some(label) = notification {
        group.insert("notification".into(), json!({"messagelabel": label}));
    }
    json!({"group": group, "notify_to": notify_to})
}

/// A system message into group `uid` (as chat21-http-server sends them).
fn system_message(api: &Api, uid: &UserId, name: &str, text: &str, label: Value) -> (String, Value) {
    let body = json!({
        "type": "text",
        "text": text,
        "timestamp": stamp(),
        "channel_type": "group",
        "sender_fullname": "System",
        "sender": SYSTEM,
        "recipient_fullname": name,
        "recipient": uid,
        "attributes": {"subtype": "info", "updateconversation": true, "messagelabel": label},
    });
    (api.topics().outgoing(SYSTEM, uid), body)
}

/// A `messagelabel`: what clients translate a system message or notification by.
fn label(key: &str, parameters: Value) -> Value {
    json!({"key": key, "parameters": parameters})
}

/// `MEMBER_JOINED_GROUP`'s parameters: without a contacts service the name is the id.
fn joined(member: &str) -> Value {
    json!({"member_id": member, "fullname": member, "firstname": "", "lastname": ""})
}

/// 400 unless every routing key a change of group `uid` makes fits the broker's 255 bytes:
/// the group's own timeline, and each member's inbox and group updates. Checked before
/// anything changes, so a change is never stored and then half sent.
fn keys_fit<'a>(api: &Api, app: &AppId, uid: &UserId, members: impl IntoIterator<Item = &'a str>) -> ApiResult<()> {
    let t = api.topics();
    let too_long = |_| ApiError::bad("the ids are too long for a routing key (255 bytes)");
    t.message_added(app, uid, uid).map_err(too_long)?;
    for m in members {
        t.message_added(app, m, uid).map_err(too_long)?;
        t.group_updated(app, m, uid).map_err(too_long)?;
    }
    Ok(())
}

async fn stored(api: &Api, app: &AppId, uid: &str) -> ApiResult<Group> {
    let uid = parse_id(uid, "group")?;
    api.store()?
        .group(app, &uid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no group {uid}")))
}

fn owner_or_admin(caller: &Caller, group: &Group) -> ApiResult<()> {
    if caller.admin || group.owner() == Some(caller.user.as_str()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the group's owner or an admin may do this".into(),
        ))
    }
}

/// The group as clients read it: the stored object, its `uid`, `members` as stored.
fn group_object(group: &Group) -> Map<String, Value> {
    let mut o = group.object.clone();
    o.remove("notification");
    o.insert("uid".into(), group.uid.as_str().into());
    o.insert("members".into(), Value::Object(members_of(group)));
    o
}

fn members_of(group: &Group) -> Map<String, Value> {
    group.members.iter().map(|m| (m.to_string(), Value::from(1))).collect()
}

/// A members object from a request: every key a valid id.
fn member_map(members: Map<String, Value>) -> ApiResult<Map<String, Value>> {
    members
        .keys()
        .map(|m| parse_id(m, "members").map(|id| (id.to_string(), Value::from(1))))
        .collect()
}

/// A timestamp for a system message, later than any given before in this process: history
/// is ordered by timestamp, and a group's system messages (created, then one joined per
/// member) are sent within one millisecond.
fn stamp() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = now_ms();
    let prev = LAST.fetch_max(now, Ordering::Relaxed);
    if prev < now {
        now
    } else {
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    }
}
