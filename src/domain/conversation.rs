//! A conversation (PROTOCOL §6): one timeline's exchange with one partner (a user or a
//! group), represented by its last message.

use super::ids::UserId;
use super::message::Message;

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub timeline_of: UserId,
    pub convers_with: UserId,
    /// The newest message of the conversation, as stored.
    pub last: Message,
    /// New (unread) for `timeline_of`.
    pub is_new: bool,
    pub archived: bool,
}
