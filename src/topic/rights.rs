//! What a user's token may touch on `amq.topic`, per layout (PROTOCOL §1, §15): the
//! routing-key patterns that go into its scopes. They live next to the grammar because they
//! must agree with it — a scope that does not match the keys a client really uses locks the
//! client out (the broker closes its connection), one that matches more lets it act as
//! someone else.
//!
//! These are patterns of the OAuth2 backend's scope syntax, not AMQP binding patterns: `*`
//! matches any run of characters, dots included, so `….U1.*` covers every key below U1's
//! words and nothing of `U1x` (the dot after the id is part of the pattern). The backend also
//! URL-decodes patterns and expands `{claim}` variables, which is why the ids and the seed
//! prefix that go in here are restricted (see `domain::ids` and [`super::Seed`]).

use super::{Layout, Topics};
use crate::domain::{AppId, UserId};

/// Routing-key patterns on `amq.topic` a user may publish on (`write`) and subscribe to
/// (`read`, checked against the subscription's binding key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTopics {
    pub write: Vec<String>,
    pub read: Vec<String>,
}

impl Topics {
    /// Exactly what `user` of `app` needs as a client of this layout, and nothing more.
    pub fn user_topics(&self, app: &AppId, user: &UserId) -> UserTopics {
        match &self.layout {
            // Publish: own outgoing messages, and own inbox commands (receipts, conversation
            // updates, archive, presence, typing, blocks), which all start with the user's
            // own inbox words. Subscribe: own inbox only.
            Layout::Chat21 { .. } => UserTopics {
                write: vec![
                    format!("apps.{app}.outgoing.users.{user}.*"),
                    format!("apps.{app}.users.{user}.*"),
                ],
                read: vec![format!("apps.{app}.users.{user}.*")],
            },
            // The seed layout's only input is a message, `{prefix}.{me}.{other}.messages.outgoing`;
            // the inbox is everything below `{prefix}.{me}`. The prefix carries its leading
            // empty word (a leading `/`), exactly as the MQTT plugin converts the topic.
            Layout::Seed { seed, .. } => UserTopics {
                write: vec![format!("{}.{user}.*.messages.outgoing", seed.prefix)],
                read: vec![format!("{}.{user}.*", seed.prefix)],
            },
        }
    }

    /// The app a seed-layout token must be for: its topics carry `PATH_PREFIX`, not an app
    /// id, so a token for any other app would get this app's topics under another name.
    pub fn only_app(&self) -> Option<&AppId> {
        match &self.layout {
            Layout::Chat21 { .. } => None,
            Layout::Seed { app, .. } => Some(app),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OAuth2 backend's wildcard match: `*` is any run of characters (dots included).
    fn scope_matches(pattern: &str, key: &str) -> bool {
        let parts: Vec<&str> = pattern.split('*').collect();
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        if parts.len() == 1 {
            return pattern == key;
        }
        if !key.starts_with(first) || !key[first.len()..].ends_with(last) || key.len() < first.len() + last.len() {
            return false;
        }
        let mut rest = &key[first.len()..key.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(mid) {
                Some(i) => rest = &rest[i + mid.len()..],
                None => return false,
            }
        }
        true
    }

    fn rights(t: &Topics, user: &str) -> UserTopics {
        t.user_topics(&AppId::from("tilechat"), &UserId::from(user))
    }

    fn may(patterns: &[String], key: &str) -> bool {
        patterns.iter().any(|p| scope_matches(p, key))
    }

    #[test]
    fn seed_tokens_write_own_outgoing_and_read_own_inbox_only() {
        for prefix in ["/apps/tilechat/users", "chat/inbox"] {
            let t = Topics::seed("tilechat", prefix).unwrap();
            let r = rights(&t, "U1");
            let p = super::super::mqtt_to_amqp(prefix.trim_end_matches('/'));
            assert!(may(&r.write, &t.outgoing("U1", "U2")), "{prefix}: {r:?}");
            assert!(may(&r.write, &t.outgoing("U1", "group-x")));
            assert!(!may(&r.write, &t.outgoing("U2", "U1")), "as someone else");
            assert!(!may(&r.write, &t.outgoing("U1x", "U1")), "as a longer id");
            assert!(!may(&r.write, &t.message_added("tilechat", "U2", "U1").unwrap()));
            assert!(
                !may(&r.write, &t.message_added("tilechat", "U1", "U2").unwrap()),
                "own inbox"
            );
            // Subscriptions as the MQTT plugin checks them: the filter's binding key.
            assert!(may(&r.read, &format!("{p}.U1.#")));
            assert!(may(&r.read, &format!("{p}.U1.*.messages.clientadded")));
            assert!(!may(&r.read, &format!("{p}.U2.#")));
            assert!(!may(&r.read, &format!("{p}.U1x.#")));
            assert!(!may(&r.read, &format!("{p}.#")));
            assert!(!may(&r.read, "#"));
        }
        // The leading empty word is part of the scope: without it nothing would match.
        let t = Topics::seed("tilechat", "/apps/tilechat/users").unwrap();
        let r = rights(&t, "U1");
        assert_eq!(r.read, vec![".apps.tilechat.users.U1.*".to_string()]);
        assert!(
            !may(&r.read, "apps.tilechat.users.U1.#"),
            "the chat21 inbox of the same words"
        );
    }

    #[test]
    fn chat21_tokens_cover_every_user_input_of_their_own() {
        let t = Topics::chat21("tilechat");
        let r = rights(&t, "U1");
        for key in t.user_inputs("tilechat", "U1", "U2") {
            assert!(may(&r.write, &key), "{key}");
        }
        for key in [
            t.outgoing("U2", "U1"),
            t.receipt("tilechat", "U2", "U1", "m1"),
            t.group_update("tilechat"),
            t.history_replay("tilechat", "U1", "U2"),
            t.outgoing("U1x", "U2"),
        ] {
            assert!(!may(&r.write, &key), "{key}");
        }
        assert!(may(&r.read, "apps.tilechat.users.U1.#"));
        assert!(!may(&r.read, "apps.tilechat.users.U2.#"));
        assert!(!may(&r.read, "apps.tilechat.users.#"));
        assert_eq!(t.only_app(), None);
        assert_eq!(
            Topics::seed("tilechat", "/x").unwrap().only_app().map(|a| &**a),
            Some("tilechat")
        );
    }

    #[test]
    fn scope_match_is_the_brokers() {
        assert!(scope_matches("a.*", "a.b.c"));
        assert!(scope_matches("a.*.z", "a.b.c.z"));
        assert!(!scope_matches("a.*.z", "a.z"));
        assert!(!scope_matches("a.b", "a.b.c"));
        assert!(scope_matches("*", ""));
    }
}
