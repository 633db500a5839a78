//! Why an input was rejected: a fixed set of reasons, used as a metrics label, a log field and
//! the `error.code` a refused sender is told. What a handler or policy stage *does* with a
//! reason (drop the input, or refuse it and tell the sender) is [`crate::plan::Rejection`].

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
    /// The body is larger than `MAX_MESSAGE_BYTES`, or a message would fan out to more than
    /// `MAX_FANOUT_BYTES` (body size × copies); a sender is told.
    TooLarge,
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
        RejectReason::TooLarge,
    ];

    /// The reason a code names (the inverse of [`RejectReason::as_str`]).
    pub fn parse(code: &str) -> Option<RejectReason> {
        RejectReason::ALL.iter().copied().find(|r| r.as_str() == code)
    }

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
            RejectReason::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
