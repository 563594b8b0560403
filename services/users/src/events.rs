//! The events the users service publishes on [`SUBJECT`] (ARCHITECTURE.md §4). Each is an
//! [`Envelope`](shop_common::bus::Envelope) whose `kind` is the struct's name.
//!
//! [`AddressClaimAttempted`] is for the owner of an address, and only the owner: the API answers
//! a registration or an email change the same whether or not the address has an account
//! (OWASP's authentication cheat sheet), and the notifications service mails the owner
//! instead.
//!
//! A secret never travels on an event stream, which every service may read and which is kept:
//! the token that confirms an email change goes to the mailer alone, as the command
//! [`SendEmailConfirmation`] on [`MAIL_SUBJECT`] (ARCHITECTURE.md §4: `<service>.commands`).
//!
//! They are published after the change is written, without an outbox (yet): a crash between
//! the two loses the mail, not the change.

use serde::{Deserialize, Serialize};

/// The subject every users event is published on.
pub const SUBJECT: &str = "users.events";

/// The notifications service's commands: the mails this service asks it to send.
pub const MAIL_SUBJECT: &str = "notifications.commands";

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

/// An account asked to change its email to a free address, pending confirmation. (Neither
/// the address nor the token: the mailer gets those in [`SendEmailConfirmation`].)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChangeRequested {
    /// The account.
    pub user_id: String,
    /// Unix seconds after which the change can no longer be confirmed.
    pub expires_at: i64,
}

/// A command on [`MAIL_SUBJECT`]: mail `email` the token that confirms the change
/// (`POST /email/confirm`). The token is a secret of that mailbox: the mailer sends it and
/// keeps it nowhere.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmailConfirmation {
    /// The account.
    pub user_id: String,
    /// The new address, to mail.
    pub email: String,
    /// The confirmation token.
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

impl std::fmt::Debug for SendEmailConfirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendEmailConfirmation")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An account's email changed (confirmed by the new address's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailChanged {
    /// The account.
    pub user_id: String,
    /// The new address.
    pub email: String,
}
