//! Where messages go: a [`Sender`] per channel. On the embedded default every channel writes
//! to a [`Sink`] (a JSON line per message in a file per channel, or the log); in production
//! e-mail goes out by SMTP ([`Smtp`], lettre) and SMS and push to the sink, for want of a
//! provider.
//!
//! Each channel has a failure knob ([`Knobs`]): while it is on, every send on that channel
//! fails, which is how the dead-letter path is shown and tested.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::Channel;

/// A message on its way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outgoing {
    /// The notification's id: receivers that see it twice can tell (it is the e-mail's
    /// `Message-ID`).
    pub id: String,
    /// The channel.
    pub channel: Channel,
    /// The address: an e-mail address, or the user's id for SMS and push.
    pub to: String,
    /// The subject.
    pub subject: String,
    /// The text.
    pub body: String,
}

/// A message could not be sent: tried again later, then dead-lettered; or, `permanent`
/// (an address that is not one, a server that refuses the recipient), dead-lettered at once.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again cannot help.
    pub permanent: bool,
}

impl SendError {
    /// A failure that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that trying again cannot mend.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Sends messages on a channel.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    /// Sends `message`.
    ///
    /// # Errors
    ///
    /// It was not sent (the worker tries again later).
    async fn send(&self, message: &Outgoing) -> Result<(), SendError>;
}

/// Writes each message as a JSON line to `<dir>/<channel>.jsonl` (a mail catcher's inbox on
/// disk), or, without a directory, to the log.
#[derive(Debug, Clone)]
pub struct Sink {
    dir: Option<PathBuf>,
    write: Arc<tokio::sync::Mutex<()>>,
}

impl Sink {
    /// A sink writing to files in `dir`, or (`None`) to the log.
    #[must_use]
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            write: Arc::default(),
        }
    }

    /// The file the messages of `channel` go to, if any.
    #[must_use]
    pub fn file(&self, channel: Channel) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.jsonl", channel.as_str())))
    }
}

#[async_trait]
impl Sender for Sink {
    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let Some(path) = self.file(message.channel) else {
            tracing::info!(
                id = %message.id,
                channel = message.channel.as_str(),
                subject = %message.subject,
                "notification sent (log sink)"
            );
            return Ok(());
        };
        let failed =
            |error: std::io::Error| SendError::transient(format!("{}: {error}", path.display()));
        let mut line =
            serde_json::to_vec(message).map_err(|e| SendError::permanent(e.to_string()))?;
        line.push(b'\n');
        let _one_at_a_time = self.write.lock().await;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(failed)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(failed)?;
        file.write_all(&line).await.map_err(failed)?;
        file.flush().await.map_err(failed)
    }
}

/// Sends e-mail through an SMTP server (a relay, or a mail catcher), without TLS: the server
/// is on the local network.
#[derive(Clone)]
pub struct Smtp {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Smtp {
    /// An SMTP sender to `host:port`, from `from`, giving up on one message after `timeout`.
    ///
    /// # Errors
    ///
    /// `from` is not an e-mail address.
    pub fn new(
        host: &str,
        port: u16,
        from: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, SendError> {
        let from = from.parse().map_err(|error| {
            SendError::permanent(format!("the sender address {from:?}: {error}"))
        })?;
        let transport =
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
                .port(port)
                .timeout(Some(timeout))
                .build();
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Sender for Smtp {
    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        use lettre::AsyncTransport;
        let to = message.to.parse().map_err(|error| {
            SendError::permanent(format!("the address {:?}: {error}", message.to))
        })?;
        let email = lettre::Message::builder()
            .message_id(Some(format!("<{}@notifications.mainstay>", message.id)))
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.clone())
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|error| {
                SendError::permanent(format!("the message does not build: {error}"))
            })?;
        self.transport.send(email).await.map(drop).map_err(|error| {
            // 5xx: the server refuses this message for good (a recipient it does not know).
            if error.is_permanent() {
                SendError::permanent(format!("SMTP: {error}"))
            } else {
                SendError::transient(format!("SMTP: {error}"))
            }
        })
    }
}

/// The failure knob of each channel: while one is on, sends on its channel fail. Clones share
/// the knobs. The admin API turns them only when they are [`enabled`](Self::enabled) (a demo
/// or test system; never a production one, where a knob would dead-letter real messages).
#[derive(Debug, Clone, Default)]
pub struct Knobs(Arc<([AtomicBool; 3], AtomicBool)>);

impl Knobs {
    /// Lets the admin API turn the knobs.
    pub fn enable(&self) {
        self.0.1.store(true, Ordering::Relaxed);
    }

    /// Whether the admin API may turn the knobs.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.0.1.load(Ordering::Relaxed)
    }

    /// Whether sends on `channel` fail.
    #[must_use]
    pub fn failing(&self, channel: Channel) -> bool {
        self.0.0[channel.index()].load(Ordering::Relaxed)
    }

    /// Makes sends on `channel` fail (`true`) or go through again.
    pub fn set_failing(&self, channel: Channel, failing: bool) {
        self.0.0[channel.index()].store(failing, Ordering::Relaxed);
    }
}
