//! Groups over the HTTP API, watched by real MQTT clients (PROTOCOL §14, §4): creation with
//! its system messages, join with its group update and history replay, set members, leave,
//! rename, attributes; who may do each; read-your-writes (the next call and the next message
//! see the change) — on SQLite and PostgreSQL.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn label(m: &Value) -> (&str, &Value) {
    let l = &m["attributes"]["messagelabel"];
    (l["key"].as_str().unwrap_or_default(), &l["parameters"])
}

/// A system message as chat21-http-server sends it (what clients render by label).
fn assert_system(m: &Value, g: &str, key: &str) {
    assert_eq!(m["sender"], "system", "{m}");
    assert_eq!(m["recipient"], g);
    assert_eq!(m["channel_type"], "group");
    assert_eq!(m["attributes"]["subtype"], "info");
    assert_eq!(label(m).0, key, "{m}");
}

async fn group_lifecycle(db: Db) {
    let b = broker();
    let e = engine_task_with(b, db, &[]).await;
    let app = e.app.clone();
    let (owner, m1, m2, newbie) = (fresh("U"), fresh("U"), fresh("U"), fresh("U"));
    let mut cl = inboxes(b, &e, &[&owner, &m1, &m2, &newbie]).await;
    let t_owner = b.token(&app, &owner);
    let api = ApiClient::new(e.http_port);
    let g = fresh("group-");

    // Create: 201 {success, group}; the creator joins.
    let members = json!({ m1.clone(): 1, m2.clone(): 1 });
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups"),
            &t_owner,
            json!({"group_name": "Team", "group_id": g, "group_members": members, "attributes": {"topic": "x"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(
        (v["group"]["uid"].as_str(), v["group"]["name"].as_str()),
        (Some(g.as_str()), Some("Team"))
    );
    assert_eq!(v["group"]["owner"], owner.as_str());
    assert_eq!(
        v["group"]["members"],
        json!({ m1.clone(): 1, m2.clone(): 1, owner.clone(): 1 })
    );

    // Every member gets GROUP_CREATED, then MEMBER_JOINED_GROUP per member, from system.
    for c in cl.iter_mut().take(3) {
        let got = c.messages(4, WAIT).await;
        assert_eq!(got.len(), 4, "{} got {got:?}", c.user);
        for (topic, _) in &got {
            assert_eq!(topic, &format!("apps/{app}/users/{}/messages/{g}/clientadded", c.user));
        }
        assert_system(&got[0].1, &g, "GROUP_CREATED");
        assert_eq!(label(&got[0].1).1["creator"], owner.as_str());
        let joined: Vec<&str> = got[1..]
            .iter()
            .map(|(_, m)| {
                assert_system(m, &g, "MEMBER_JOINED_GROUP");
                label(m).1["member_id"].as_str().unwrap()
            })
            .collect();
        assert_eq!(joined, vec![m1.as_str(), m2.as_str(), owner.as_str()]);
        assert_eq!(got[0].1["status"], 150);
    }
    assert!(
        cl[3].extra_messages(Duration::from_millis(300)).await.is_empty(),
        "not yet a member"
    );

    // Read-your-writes: the group is readable and postable at once.
    let (s, v) = api.get(&format!("/api/{app}/groups/{g}"), &b.token(&app, &m1)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["attributes"], json!({"topic": "x"}));
    assert!(v["result"].get("notification").is_none());
    assert_eq!(
        api.get(&format!("/api/{app}/groups/{g}"), &b.token(&app, &newbie))
            .await
            .0,
        403
    );
    let (s, _) = api
        .post(
            &format!("/api/{app}/messages"),
            &b.token(&app, &m1),
            json!({"recipient_id": g, "channel_type": "group", "text": "first words", "type": "text"}),
        )
        .await;
    assert_eq!(s, 200);
    for c in cl.iter_mut().take(3) {
        let (_, m) = one(c, &e).await;
        assert_eq!(m["text"], "first words");
    }

    // Only the owner (or an admin) adds members.
    let (s, _) = api
        .post(
            &format!("/api/{app}/groups/{g}/members"),
            &b.token(&app, &m1),
            json!({"member_id": newbie}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups/{g}/members"),
            &t_owner,
            json!({"member_id": newbie}),
        )
        .await;
    assert_eq!((s, v), (200, json!({"success": true})));
    let (s, _) = api
        .post(
            &format!("/api/{app}/groups/{g}/members"),
            &t_owner,
            json!({"member_id": newbie}),
        )
        .await;
    assert_eq!(s, 409, "already a member");
    // Old members: the group update, then the system message.
    for c in cl.iter_mut().take(3) {
        let got = c.messages(2, WAIT).await;
        assert_eq!(
            got[0].0,
            format!("apps/{app}/users/{}/groups/{g}/clientupdated", c.user)
        );
        assert_eq!(got[0].1["notification"]["messagelabel"]["key"], "MEMBER_JOINED_GROUP");
        assert_eq!(
            got[0].1["notification"]["messagelabel"]["parameters"]["member_id"],
            newbie.as_str()
        );
        assert!(got[0].1["members"].get(&newbie).is_some());
        assert_system(&got[1].1, &g, "MEMBER_JOINED_GROUP");
        assert_eq!(got[1].1["text"], format!("{newbie} added to group"));
    }
    // The new member: the update, the system message, then the group's history as it was
    // before the join (the system message it just got live is not repeated).
    let got = cl[3].messages(2 + 5, WAIT).await;
    assert_eq!(got.len(), 7, "{got:?}");
    assert_eq!(got[0].0, format!("apps/{app}/users/{newbie}/groups/{g}/clientupdated"));
    assert_system(&got[1].1, &g, "MEMBER_JOINED_GROUP");
    let history: Vec<&Value> = got[2..].iter().map(|(_, m)| m).collect();
    for m in &history {
        assert_eq!(m["__history"], "true", "{m}");
        assert_eq!(m["status"], 150);
        assert_eq!(m["attributes"]["sendnotification"], false);
    }
    let texts: Vec<&str> = history.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts[0], "Group created", "oldest first");
    assert_eq!(*texts.last().unwrap(), "first words");
    assert!(
        cl[3].extra_messages(Duration::from_millis(300)).await.is_empty(),
        "nothing twice"
    );

    // Rename and attributes: the members are told.
    let (s, _) = api
        .put(
            &format!("/api/{app}/groups/{g}"),
            &t_owner,
            json!({"group_name": "Renamed"}),
        )
        .await;
    assert_eq!(s, 200);
    for c in cl.iter_mut() {
        let (topic, u) = one(c, &e).await;
        assert!(topic.ends_with(&format!("/groups/{g}/clientupdated")));
        assert_eq!(
            (u["name"].as_str(), u["notification"]["messagelabel"]["key"].as_str()),
            (Some("Renamed"), Some("DATA_UPDATED_GROUP"))
        );
    }
    let (s, _) = api
        .put(
            &format!("/api/{app}/groups/{g}/attributes"),
            &t_owner,
            json!({"attributes": {"topic": "y"}}),
        )
        .await;
    assert_eq!(s, 200);
    for c in cl.iter_mut() {
        let (_, u) = one(c, &e).await;
        assert_eq!(u["notification"]["messagelabel"]["key"], "ATTRIBUTES_UPDATED_GROUP");
        assert_eq!(u["attributes"], json!({"topic": "y"}));
    }
    assert_eq!(
        api.put(
            &format!("/api/{app}/groups/{g}"),
            &b.token(&app, &m1),
            json!({"group_name": "Mine"})
        )
        .await
        .0,
        403
    );

    // Leave: a member may leave; the old members (the leaver included) are told.
    let (s, _) = api
        .delete(&format!("/api/{app}/groups/{g}/members/{m2}"), &b.token(&app, &m1))
        .await;
    assert_eq!(s, 403, "not someone else");
    let (s, _) = api
        .delete(&format!("/api/{app}/groups/{g}/members/{m2}"), &b.token(&app, &m2))
        .await;
    assert_eq!(s, 200);
    for (i, c) in cl.iter_mut().enumerate() {
        let want = if i == 2 { 1 } else { 2 };
        let got = c.messages(want, WAIT).await;
        assert_eq!(got[0].1["notification"]["messagelabel"]["key"], "MEMBER_LEFT_GROUP");
        assert!(got[0].1["members"].get(&m2).is_none());
        if want == 2 {
            assert_system(&got[1].1, &g, "MEMBER_LEFT_GROUP");
        }
    }
    assert!(
        cl[2].extra_messages(Duration::from_millis(300)).await.is_empty(),
        "the leaver gets no system message"
    );
    // The next message: the leaver is out.
    let (s, _) = api
        .post(
            &format!("/api/{app}/messages"),
            &b.token(&app, &m2),
            json!({"recipient_id": g, "channel_type": "group", "text": "still here?"}),
        )
        .await;
    assert_eq!(s, 403);
    let (_, notice) = one(&mut cl[2], &e).await;
    assert_eq!(
        (notice["status"].as_i64(), notice["error"]["code"].as_str()),
        (Some(-100), Some("not_a_member")),
        "the sender is told"
    );

    // Set members: the old members are told; each new one is welcomed.
    let (s, _) = api
        .put(
            &format!("/api/{app}/groups/{g}/members"),
            &t_owner,
            json!({"members": { owner.clone(): 1, m2.clone(): 1 }}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = api.get(&format!("/api/{app}/groups/{g}"), &t_owner).await;
    assert_eq!(v["result"]["members"], json!({ owner.clone(): 1, m2.clone(): 1 }));
    let got = cl[2].messages(2, WAIT).await;
    assert_system(&got[0].1, &g, "MEMBER_JOINED_GROUP");
    assert_eq!(got[0].1["text"], format!("{m2} added to group"));
    assert_eq!(got[1].1["__history"], "true", "history follows");
}

#[tokio::test]
async fn group_lifecycle_sqlite() {
    group_lifecycle(Db::Sqlite).await;
}

#[tokio::test]
async fn group_lifecycle_postgres() {
    group_lifecycle(Db::Postgres).await;
}

/// A user's group create never replaces someone else's group, nor names a group like a user.
#[tokio::test]
async fn group_ids_are_not_taken_over() {
    let b = broker();
    let e = engine_task_with(b, Db::Sqlite, &[]).await;
    let app = e.app.clone();
    let (owner, thief) = (fresh("U"), fresh("U"));
    let api = ApiClient::new(e.http_port);
    let g = fresh("group-");
    let (s, _) = api
        .post(
            &format!("/api/{app}/groups"),
            &b.token(&app, &owner),
            json!({"group_name": "Mine", "group_id": g}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = api
        .post(
            &format!("/api/{app}/groups"),
            &b.token(&app, &thief),
            json!({"group_name": "Ours", "group_id": g}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (_, v) = api.get(&format!("/api/{app}/groups/{g}"), &b.token(&app, &owner)).await;
    assert_eq!(
        (v["result"]["name"].as_str(), v["result"]["owner"].as_str()),
        (Some("Mine"), Some(owner.as_str()))
    );
    let (s, _) = api
        .post(
            &format!("/api/{app}/groups"),
            &b.token(&app, &thief),
            json!({"group_name": "Trap", "group_id": owner}),
        )
        .await;
    assert_eq!(s, 400, "a group named like a user");
}
