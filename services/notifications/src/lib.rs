//! The notifications service: tells users what became of their orders (confirmed, rejected
//! with the reason, shipped, delivered) by e-mail, SMS and push.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /notifications?limit=N` | signed in | the caller's notifications, the newest first (N: 1 to 100, default 20) |
//! | `GET /notifications/preferences` | signed in | the caller's channels |
//! | `PUT /notifications/preferences` | signed in | sets them: `{"email": true, "sms": false, "push": true}` |
//! | `GET /admin/notifications/dead-letters?channel=C` | role `admin` | the dead notifications, and how many per channel |
//! | `POST /admin/notifications/dead-letters/replay?channel=C` | role `admin` | queues them again, with their attempts reset |
//! | `PUT /admin/notifications/channels/{channel}` | role `admin` | the channel's failure knob: `{"failing": true}` (only with `NOTIFICATIONS_FAILURE_KNOBS`: a demo or test system) |
//!
//! How a message travels:
//!
//! 1. The consumer `notifications` reads `orders.events`, `shipping.events` and
//!    `users.events` through the event backbone, with its inbox: each event is handled once.
//!    Users' events keep each user's address and name; order events render a message for
//!    each channel the user wants (minijinja templates, [`templates`]) and store it as
//!    `QUEUED`, in the transaction of the inbox record.
//! 2. The dispatcher hands each queued notification's id to its channel's work queue
//!    ([`queue`]: RabbitMQ in production, in process on the embedded default) and marks it.
//! 3. A channel's workers take ids from its queue, claim the notification in the store (so that
//!    it is sent once, however often its id arrives), and make one attempt ([`send`]). A
//!    failed attempt puts the notification back, due after a doubling wait with jitter, and
//!    frees the worker; the dispatcher hands it over again when it is due. When its attempts
//!    run out (or the failure is permanent, such as an address that is not one) it is `DEAD`
//!    and its id goes to the channel's dead letters (RabbitMQ's dead-letter exchange). A
//!    replay queues the dead ones again.
//!
//! Every move of a claimed notification names the claim's token, so a worker whose lease ran
//! out cannot mark what another worker now holds. A worker that stops mid-send leaves its
//! claim to run out; the dispatcher then takes the notification back. A send that succeeded
//! just before such a stop, or whose record the store refused for seconds, is repeated:
//! receivers can tell by its id (the e-mail's `Message-ID`).

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod queue;
pub mod send;
pub mod store;
pub mod templates;
mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use mainstay_auth::Validator;
use serde::Serialize;
use serde_json::json;
use shop_common::store::{Database, StoreError, Tx};
use shop_messaging::contracts::{
    EmailChanged, ORDERS_EVENTS, OrderConfirmed, OrderDelivered, OrderPlaced, OrderRejected,
    OrderShipped, SHIPPING_EVENTS, USERS_EVENTS, UserRegistered, check_order_id,
};
use shop_messaging::{ConsumerConfig, HandleError, Handler, Inbound, Outcome};
use tokio::sync::Notify;

pub use self::api::router;
pub use self::config::NotificationsConfig;
use self::queue::ChannelQueue;
use self::send::{Knobs, Sender};
use self::store::{Notification, NotificationStore};
use self::templates::{Templates, money, reason};

/// The longest notification id a queue may carry.
pub const MAX_ID: usize = 128;

/// How long after an order event the service waits for its user's address to arrive (on
/// `users.events`, another stream) before it tells the user without e-mail.
pub const ADDRESS_WAIT_MS: i64 = 60_000;

/// A channel messages go out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// E-mail.
    Email,
    /// SMS.
    Sms,
    /// Push messages to the user's devices.
    Push,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Self; 3] = [Self::Email, Self::Sms, Self::Push];

    /// Its name: `email`, `sms` or `push`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Push => "push",
        }
    }

    /// The channel named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|channel| channel.as_str() == name)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Email => 0,
            Self::Sms => 1,
            Self::Push => 2,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the workers send and retry.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Attempts before the dead letters.
    pub max_attempts: u32,
    /// The first wait between attempts.
    pub retry: std::time::Duration,
    /// The longest wait between attempts.
    pub retry_max: std::time::Duration,
    /// How long one attempt may take.
    pub send_timeout: std::time::Duration,
}

/// The service's state.
#[derive(Clone)]
pub struct Notifications(Arc<Inner>);

struct Inner {
    store: NotificationStore,
    queue: Arc<dyn ChannelQueue>,
    senders: [Arc<dyn Sender>; 3],
    knobs: Knobs,
    templates: Templates,
    retries: Retries,
    validator: Validator,
    /// Wakes the dispatcher when a handler stored new notifications.
    queued: Notify,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("retries", &self.0.retries)
            .field("durable_queues", &self.0.queue.durable())
            .finish_non_exhaustive()
    }
}

impl Notifications {
    /// Opens the store (and the backbone's tables beside it), on `queue`, sending through
    /// `senders` (by channel: e-mail, SMS, push). Routes trust tokens `validator` accepts.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn start(
        database: &Database,
        queue: Arc<dyn ChannelQueue>,
        senders: [Arc<dyn Sender>; 3],
        retries: Retries,
        validator: Validator,
    ) -> Result<Self, StoreError> {
        let store = NotificationStore::open(database).await?;
        shop_messaging::migrate(database).await?;
        Ok(Self(Arc::new(Inner {
            store,
            queue,
            senders,
            knobs: Knobs::default(),
            templates: Templates::new(),
            retries,
            validator,
            queued: Notify::new(),
        })))
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &NotificationStore {
        &self.0.store
    }

    /// The failure knobs.
    #[must_use]
    pub fn knobs(&self) -> &Knobs {
        &self.0.knobs
    }

    /// The work queues.
    #[must_use]
    pub fn queue(&self) -> &Arc<dyn ChannelQueue> {
        &self.0.queue
    }

    /// The consumer of the events notifications tell of: `notifications` on
    /// [`ORDERS_EVENTS`], [`SHIPPING_EVENTS`] and [`USERS_EVENTS`].
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new(
            "notifications",
            &[ORDERS_EVENTS, SHIPPING_EVENTS, USERS_EVENTS],
        )
    }

    /// The handler of those events.
    #[must_use]
    pub fn events(&self) -> Events {
        Events(self.clone())
    }

    /// Starts the dispatcher and a worker per channel under `tasks`.
    pub fn run(&self, tasks: &shop_common::tasks::Supervisor) {
        worker::start(self, tasks);
    }

    /// Queues the dead notifications (of `channel`, or of all) again, with their attempts
    /// reset: empties the channels' dead letters, and hands the notifications to the
    /// dispatcher. Returns how many.
    ///
    /// # Errors
    ///
    /// The queue or the database fails.
    pub async fn replay(&self, channel: Option<Channel>) -> Result<u64, ReplayError> {
        for each in Channel::ALL {
            if channel.is_none_or(|channel| channel == each) {
                // The store is the truth: a broker that cannot purge now keeps ids whose
                // notifications are queued again (harmless), and the replay goes on.
                if let Err(error) = self.0.queue.purge_dead(each).await {
                    tracing::warn!(%error, "dead letters not purged; replaying from the store");
                }
            }
        }
        let replayed = self.0.store.replay(channel).await?;
        self.0.queued.notify_one();
        Ok(replayed)
    }
}

/// A replay failed: the store did.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReplayError(#[from] StoreError);

/// Handles the events notifications tell of (see [`Notifications::events`]).
#[derive(Debug, Clone)]
pub struct Events(Notifications);

impl Events {
    /// Renders `kind` for each channel `user_id` wants and stores it, within `tx`.
    async fn notify(
        &self,
        message: &Inbound,
        tx: &mut Tx,
        user_id: &str,
        order_id: &str,
        kind: &str,
        mut context: serde_json::Value,
    ) -> Result<(), HandleError> {
        let mut preferences = NotificationStore::preferences_in(tx, user_id).await?;
        let recipient = NotificationStore::recipient_in(tx, user_id).await?;
        if preferences.email && recipient.as_ref().is_none_or(|r| r.email.is_empty()) {
            let age = shop_common::unix_millis() - message.envelope.occurred_at_ms;
            if age < ADDRESS_WAIT_MS {
                // users.events is another stream: the account's announcement may be on its way.
                return Err(HandleError::Transient(
                    format!("no address known yet for user {user_id:?}").into(),
                ));
            }
            tracing::warn!(
                user = user_id,
                "no e-mail address known: told on the other channels"
            );
            preferences.email = false;
        }
        let name = recipient
            .map(|recipient| recipient.name)
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "there".to_owned());
        context["name"] = json!(name);
        context["order_id"] = json!(order_id);
        let now = shop_common::unix_millis();
        let mut added = false;
        for channel in Channel::ALL {
            if !preferences.wants(channel) {
                continue;
            }
            let rendered = self
                .0
                .0
                .templates
                .render(kind, channel, &context)
                .map_err(|error| HandleError::Transient(error.to_string().into()))?;
            let notification = Notification {
                id: format!("{}.{}", message.envelope.id, channel.as_str()),
                user_id: user_id.to_owned(),
                channel: channel.as_str().to_owned(),
                kind: kind.to_owned(),
                order_id: Some(order_id.to_owned()),
                subject: rendered.subject,
                body: rendered.body,
                status: "QUEUED".to_owned(),
                attempts: 0,
                last_error: None,
                created_at_ms: now,
                sent_at_ms: None,
            };
            added |= NotificationStore::add(tx, &notification).await?;
        }
        if added {
            let state = self.0.clone();
            tx.after_commit(move || state.0.queued.notify_one());
        }
        Ok(())
    }

    async fn owner(tx: &mut Tx, order_id: &str) -> Result<String, HandleError> {
        NotificationStore::owner_in(tx, order_id)
            .await?
            .ok_or_else(|| {
                // Its order's events come on another subject: they may not have arrived yet.
                HandleError::Transient(
                    format!("whose order {order_id:?} is is not known yet").into(),
                )
            })
    }
}

/// Whether `value` (the event's `field`) is 1 to `most` bytes without control characters:
/// it may end up in a message's text.
fn text_ok(field: &str, value: &str, most: usize) -> Result<(), shop_messaging::Poison> {
    if (1..=most).contains(&value.len()) && !value.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(shop_messaging::Poison(format!(
            "{field} of {} bytes (1 to {most}, no control characters)",
            value.len()
        )))
    }
}

fn user_ok(user_id: &str) -> Result<(), shop_messaging::Poison> {
    text_ok("a user id", user_id, 128)
}

/// The most lines of an order a message lists.
const MAX_LINES: usize = 100;

fn confirmed_ok(confirmed: &OrderConfirmed) -> Result<(), shop_messaging::Poison> {
    let currency = &confirmed.currency;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(shop_messaging::Poison(
            "a currency that is not an ISO 4217 code".to_owned(),
        ));
    }
    if confirmed.lines.len() > MAX_LINES {
        return Err(shop_messaging::Poison(format!(
            "{} lines (at most {MAX_LINES})",
            confirmed.lines.len()
        )));
    }
    for line in &confirmed.lines {
        text_ok("a product id", &line.product_id, 64)?;
    }
    Ok(())
}

#[async_trait]
impl Handler for Events {
    async fn handle(&self, message: &Inbound, tx: &mut Tx) -> Result<Outcome, HandleError> {
        if message.is::<UserRegistered>() {
            let user: UserRegistered = message.decode()?;
            user_ok(&user.user_id)?;
            text_ok("an e-mail address", &user.email, 320)?;
            text_ok("a name", &user.name, 200)?;
            NotificationStore::set_recipient(
                tx,
                &user.user_id,
                Some(&user.email),
                Some(&user.name),
            )
            .await?;
        } else if message.is::<EmailChanged>() {
            let changed: EmailChanged = message.decode()?;
            user_ok(&changed.user_id)?;
            text_ok("an e-mail address", &changed.email, 320)?;
            NotificationStore::set_recipient(tx, &changed.user_id, Some(&changed.email), None)
                .await?;
        } else if message.is::<OrderPlaced>() {
            let placed: OrderPlaced = message.decode()?;
            check_order_id(&placed.order_id)?;
            user_ok(&placed.user_id)?;
            NotificationStore::set_owner(tx, &placed.order_id, &placed.user_id).await?;
        } else if message.is::<OrderConfirmed>() {
            let confirmed: OrderConfirmed = message.decode()?;
            check_order_id(&confirmed.order_id)?;
            user_ok(&confirmed.user_id)?;
            confirmed_ok(&confirmed)?;
            NotificationStore::set_owner(tx, &confirmed.order_id, &confirmed.user_id).await?;
            let currency = &confirmed.currency;
            let lines: Vec<_> = confirmed
                .lines
                .iter()
                .map(|line| {
                    json!({
                        "product_id": line.product_id,
                        "quantity": line.quantity,
                        "unit_price": money(line.unit_price_minor, currency),
                    })
                })
                .collect();
            let context = json!({
                "total": money(confirmed.total_minor, currency),
                "lines": lines,
            });
            self.notify(
                message,
                tx,
                &confirmed.user_id,
                &confirmed.order_id,
                "order_confirmed",
                context,
            )
            .await?;
        } else if message.is::<OrderRejected>() {
            let rejected: OrderRejected = message.decode()?;
            check_order_id(&rejected.order_id)?;
            user_ok(&rejected.user_id)?;
            NotificationStore::set_owner(tx, &rejected.order_id, &rejected.user_id).await?;
            let context = json!({"reason": reason(&rejected.reason)});
            self.notify(
                message,
                tx,
                &rejected.user_id,
                &rejected.order_id,
                "order_rejected",
                context,
            )
            .await?;
        } else if message.is::<OrderShipped>() {
            let shipped: OrderShipped = message.decode()?;
            check_order_id(&shipped.order_id)?;
            text_ok("a tracking id", &shipped.tracking_id, 64)?;
            let user_id = Self::owner(tx, &shipped.order_id).await?;
            let context = json!({"tracking_id": shipped.tracking_id});
            self.notify(
                message,
                tx,
                &user_id,
                &shipped.order_id,
                "order_shipped",
                context,
            )
            .await?;
        } else if message.is::<OrderDelivered>() {
            let delivered: OrderDelivered = message.decode()?;
            check_order_id(&delivered.order_id)?;
            let user_id = Self::owner(tx, &delivered.order_id).await?;
            self.notify(
                message,
                tx,
                &user_id,
                &delivered.order_id,
                "order_delivered",
                json!({}),
            )
            .await?;
        }
        Ok(Outcome::Ack)
    }
}

/// The senders `config` names, by channel: SMTP for e-mail when `SMTP_URL` is set, the sink
/// for the rest.
///
/// # Errors
///
/// `MAIL_FROM` is not an address.
pub fn senders(config: &NotificationsConfig) -> std::io::Result<[Arc<dyn Sender>; 3]> {
    let sink: Arc<dyn Sender> = Arc::new(send::Sink::new(config.sink_dir.clone()));
    let email: Arc<dyn Sender> = match &config.smtp {
        Some((host, port)) => Arc::new(
            send::Smtp::new(host, *port, &config.mail_from, config.send_timeout)
                .map_err(std::io::Error::other)?,
        ),
        None => sink.clone(),
    };
    Ok([email, sink.clone(), sink])
}

/// The notifications service as its binary runs it, on `transport`, without serving: its kit
/// (to serve with `shop_common::serve`, or `serve_until` in the one-process system), its whole
/// app, and its state.
///
/// # Errors
///
/// The database, the transport or the broker cannot be opened, or the service cannot start
/// on them.
pub async fn launch(
    config: NotificationsConfig,
    transport: &shop_messaging::config::TransportConfig,
) -> std::io::Result<(shop_common::Kit, axum::Router, Notifications)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let queue: Arc<dyn ChannelQueue> = match &config.amqp_url {
        Some(url) => {
            let rabbit = Arc::new(
                queue::Rabbit::connect(url.expose(), &config.namespace)
                    .await
                    .map_err(std::io::Error::other)?,
            );
            let check = rabbit.clone();
            service.kit.health.add_check("amqp", move || {
                let connected = check.connected();
                async move {
                    if connected {
                        Ok(())
                    } else {
                        Err("the RabbitMQ connection is down")
                    }
                }
            });
            rabbit
        }
        None => Arc::new(queue::Local::new()),
    };
    let retries = Retries {
        max_attempts: config.max_attempts,
        retry: config.retry,
        retry_max: config.retry_max,
        send_timeout: config.send_timeout,
    };
    let notifications = Notifications::start(
        &service.database,
        queue,
        senders(&config)?,
        retries,
        validator.clone(),
    )
    .await
    .map_err(std::io::Error::other)?;
    if config.failure_knobs {
        notifications.knobs().enable();
    }
    for channel in &config.failing {
        notifications.knobs().set_failing(*channel, true);
    }
    service.consume(Notifications::consumer_config(), notifications.events());
    notifications.run(&service.kit.tasks);
    let (kit, app) = service.launch(router(notifications.clone()), validator);
    Ok((kit, app, notifications))
}
