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

/// A message could not be sent; it is tried again, then dead-lettered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

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
                to = %message.to,
                subject = %message.subject,
                "notification sent (log sink)"
            );
            return Ok(());
        };
        let failed = |error: std::io::Error| SendError(format!("{}: {error}", path.display()));
        let mut line = serde_json::to_vec(message).map_err(|e| SendError(e.to_string()))?;
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
        let from = from
            .parse()
            .map_err(|error| SendError(format!("the sender address {from:?}: {error}")))?;
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
        let to = message
            .to
            .parse()
            .map_err(|error| SendError(format!("the address {:?}: {error}", message.to)))?;
        let email = lettre::Message::builder()
            .message_id(Some(format!("<{}@notifications.mainstay>", message.id)))
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.clone())
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|error| SendError(format!("the message does not build: {error}")))?;
        self.transport
            .send(email)
            .await
            .map(drop)
            .map_err(|error| SendError(format!("SMTP: {error}")))
    }
}

/// The failure knob of each channel: while one is on, sends on its channel fail. Clones share
/// the knobs.
#[derive(Debug, Clone, Default)]
pub struct Knobs(Arc<[AtomicBool; 3]>);

impl Knobs {
    /// Whether sends on `channel` fail.
    #[must_use]
    pub fn failing(&self, channel: Channel) -> bool {
        self.0[channel.index()].load(Ordering::Relaxed)
    }

    /// Makes sends on `channel` fail (`true`) or go through again.
    pub fn set_failing(&self, channel: Channel, failing: bool) {
        self.0[channel.index()].store(failing, Ordering::Relaxed);
    }
}
