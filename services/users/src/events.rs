//! The messages the users service writes to its outbox (ARCHITECTURE.md §4), in the same
//! transaction as the change each announces; the relay publishes them. Their types live in
//! `shop_messaging::contracts`, where their consumers find them.
//!
//! [`AddressClaimAttempted`] is for the owner of an address, and only the owner: the API answers
//! a registration or an email change the same whether or not the address has an account
//! (OWASP's authentication cheat sheet), and the notifications service mails the owner
//! instead.
//!
//! A secret never travels in the clear on the event stream, which every service may read and
//! which is kept: the token that confirms an email change goes to the mailer alone, as the
//! command [`SendEmailConfirmation`] on [`MAIL_SUBJECT`], sealed with the mail key.

pub use shop_messaging::contracts::{
    AddressClaimAttempted, ClaimedBy, EmailChangeRequested, EmailChanged, SendEmailConfirmation,
    UserRegistered,
};

/// The subject every users event is published on.
pub const SUBJECT: &str = shop_messaging::contracts::USERS_EVENTS;

/// The notifications service's commands: the mails this service asks it to send.
pub const MAIL_SUBJECT: &str = shop_messaging::contracts::NOTIFICATIONS_COMMANDS;
