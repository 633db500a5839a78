//! Message-level vocabulary: ids, status codes and the fixed set of rejection reasons.

/// Chat21 message status codes (PROTOCOL §0).
pub mod status {
    pub const FAILED: i64 = -100;
    pub const SENDING: i64 = 0;
    pub const SENT: i64 = 100;
    pub const DELIVERED: i64 = 150;
    pub const RECEIVED: i64 = 200;
    pub const RETURN_RECEIPT: i64 = 250;
    pub const SEEN: i64 = 300;
}

/// Longest id we accept (bytes). Ids longer than this would make many routing keys exceed
/// the broker's 255-byte limit anyway.
pub const MAX_ID_BYTES: usize = 128;

/// A valid id: 1..128 bytes of UTF-8, none of `. / * # +`, no whitespace or control chars
/// (PROTOCOL §0). `.` would split an AMQP word, `/` is an MQTT level separator, `* # +` are
/// wildcards: an id containing them could never be routed to or subscribed exactly.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id
            .chars()
            .any(|c| matches!(c, '.' | '/' | '*' | '#' | '+') || c.is_whitespace() || c.is_control())
}

/// Why an input was rejected. A fixed set: it is a metrics label, never free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The routing key does not match any input the engine understands.
    BadTopic,
    /// The key names an id that is not valid (§0).
    InvalidId,
    /// The body is not JSON.
    NotJson,
    /// The body is JSON but not an object.
    NotObject,
    /// An outbound routing key would exceed 255 bytes.
    KeyTooLong,
    /// A valid input this engine does not handle (e.g. presence while PRESENCE_ENABLED is off).
    Unsupported,
    /// Well-formed but asks for nothing the protocol does (e.g. a receipt with a status
    /// other than 200).
    Ignored,
    /// A group payload that is not usable: `group` or `members` not an object, no `uid`,
    /// `notify_to` not an object (§4.4).
    BadGroup,
    /// An inline group with more members than `MAX_INLINE_GROUP_MEMBERS` (§4.2).
    TooManyMembers,
    /// The sender is not a member of the stored group it writes to (§4.1, fix D19).
    NotAMember,
    /// A field the input needs has the wrong type (e.g. `typing` not a boolean, a replayed
    /// message without a valid `message_id`).
    BadPayload,
    /// The sender is over its rate limit (§10); the sender is told.
    RateLimited,
    /// The content filter refused the text (too long, or a deny pattern with action
    /// `reject`); the sender is told.
    ContentRejected,
}

impl RejectReason {
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::BadTopic,
        RejectReason::InvalidId,
        RejectReason::NotJson,
        RejectReason::NotObject,
        RejectReason::KeyTooLong,
        RejectReason::Unsupported,
        RejectReason::Ignored,
        RejectReason::BadGroup,
        RejectReason::TooManyMembers,
        RejectReason::NotAMember,
        RejectReason::BadPayload,
        RejectReason::RateLimited,
        RejectReason::ContentRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadTopic => "bad_topic",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::NotJson => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::KeyTooLong => "key_too_long",
            RejectReason::Unsupported => "unsupported",
            RejectReason::Ignored => "ignored",
            RejectReason::BadGroup => "bad_group",
            RejectReason::TooManyMembers => "too_many_members",
            RejectReason::NotAMember => "not_a_member",
            RejectReason::BadPayload => "bad_payload",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::ContentRejected => "content_rejected",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
        for bad in ["a.b", "a/b", "a*", "#", "a+b", "a b", "a\tb", "a\u{0}b", "a\u{7f}"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
