//! Ids, validated once where they enter (a topic word, a payload field, a token request, the
//! configuration) into their own types; past that point nothing checks them again.
//!
//! The rule (PROTOCOL §0, narrowed): 1..128 bytes of UTF-8, none of `. / * # + % { }`, no
//! whitespace or control characters. `.` would split an AMQP word, `/` is an MQTT level
//! separator, `* # +` are wildcards: an id containing them could never be routed to or
//! subscribed exactly. `%`, `{` and `}` are what RabbitMQ's OAuth2 backend reinterprets in a
//! token's scopes — it URL-decodes them (`%55%31` would become `U1`) and expands `{claim}`
//! variables (`{app_id}` would become the app's id) — so an id holding them could carry
//! another user's rights (BROKER.md). Refusing them here refuses them everywhere an id enters.
//! U+FFFD is what bytes that are not UTF-8 become in a routing key (`vendor/README.md`): an
//! id holding it is not the id the client's topic named.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use super::rejection::RejectReason;

/// Longest id we accept (bytes). Ids longer than this would make many routing keys exceed
/// the broker's 255-byte limit anyway.
pub const MAX_ID_BYTES: usize = 128;

/// Is `id` a valid id (see the module docs)?
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.chars().any(|c| {
            matches!(c, '.' | '/' | '*' | '#' | '+' | '%' | '{' | '}' | '\u{FFFD}')
                || c.is_whitespace()
                || c.is_control()
        })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validate `s` (see the module docs); `InvalidId` otherwise.
            pub fn parse(s: &str) -> Result<Self, RejectReason> {
                if is_valid_id(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(RejectReason::InvalidId)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Unit tests spell ids as literals; a literal that is not an id is a bug in the test.
        #[cfg(test)]
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::parse(s).expect("a valid id in a test")
            }
        }

        impl From<$name> for serde_json::Value {
            fn from(id: $name) -> serde_json::Value {
                serde_json::Value::String(id.0)
            }
        }
    };
}

id_type!(
    /// A tenant (`APP_ID`, the `{app}` word of a topic).
    AppId
);
id_type!(
    /// A timeline owner or conversation partner: a user, or a group (group ids share the
    /// timeline id space — a group has a timeline of its own).
    UserId
);
id_type!(
    /// A message id (client-chosen or a fresh UUID): the store's key of a row in a timeline.
    MessageId
);
id_type!(
    /// An MQTT client id (presence keeps the set of a user's connected clients).
    ClientId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("USER1"));
        assert!(is_valid_id("group-123e4567"));
        assert!(is_valid_id("ünïcødé"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id(""));
        for bad in [
            "a.b",
            "a/b",
            "a*",
            "#",
            "a+b",
            "a b",
            "a\tb",
            "a\u{0}b",
            "a\u{7f}",
            "%55%31",
            "%73ystem",
            "{sub}",
            "{app_id}",
            "a}",
            "a\u{FFFD}",
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
            assert_eq!(UserId::parse(bad), Err(RejectReason::InvalidId));
        }
    }

    #[test]
    fn an_id_reads_as_its_text() {
        let u = UserId::parse("U1").unwrap();
        assert_eq!(u, "U1");
        assert_eq!(format!("{u} {u:?}"), "U1 \"U1\"");
        let set: std::collections::HashSet<UserId> = [u.clone()].into();
        assert!(set.contains("U1"), "looked up by &str");
        assert_eq!(serde_json::to_value(&u).unwrap(), serde_json::json!("U1"));
    }
}
