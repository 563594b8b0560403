//! The events the users service publishes on [`SUBJECT`] (ARCHITECTURE.md §4). Each is an
//! [`Envelope`](shop_common::bus::Envelope) whose `kind` is the struct's name.
//!
//! Two of them are for the owner of an address, and only the owner: the API answers a
//! registration or an email change the same whether or not the address has an account
//! (OWASP's authentication cheat sheet), and the notifications service mails the owner
//! instead ([`AddressClaimAttempted`], [`EmailChangeRequested`]).
//!
//! They are published after the change is written, without an outbox (yet): a crash between
//! the two loses the mail, not the change.

use serde::{Deserialize, Serialize};

/// The subject every users event is published on.
pub const SUBJECT: &str = "users.events";

/// A new account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// The account's id.
    pub user_id: String,
    /// Its email address.
    pub email: String,
    /// Its name.
    pub name: String,
}

/// How an address was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimedBy {
    /// A registration with the address.
    Registration,
    /// Another account asked to move to the address.
    EmailChange,
}

/// Someone tried to register with, or move another account to, an address that already has an
/// account: mail its owner (who may have forgotten the account, or may be targeted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressClaimAttempted {
    /// The account that owns the address.
    pub user_id: String,
    /// The address.
    pub email: String,
    /// How it was claimed.
    pub by: ClaimedBy,
}

/// An account asked to change its email to a free address: mail the new address the token
/// that confirms it (`POST /email/confirm`). The token is a secret for that mailbox only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChangeRequested {
    /// The account.
    pub user_id: String,
    /// The new address, to mail.
    pub email: String,
    /// The confirmation token.
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

/// An account's email changed (confirmed by the new address's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChanged {
    /// The account.
    pub user_id: String,
    /// The new address.
    pub email: String,
}
