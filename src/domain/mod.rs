//! The typed domain: ids validated once where they enter, the message with its engine-owned
//! fields, groups, and the fixed set of rejection reasons. Pure data; no I/O.

pub mod commands;
pub mod conversation;
pub mod group;
pub mod ids;
pub mod message;
pub mod rejection;

pub use conversation::Conversation;
pub use group::Group;
pub use ids::{is_valid_id, AppId, ClientId, MessageId, UserId, MAX_ID_BYTES};
pub use message::{status, Message, Sealed};
pub use rejection::RejectReason;
