//! The payments service: one payment per order, authorised, captured, voided or refunded on a
//! card provider, each step of the checkout saga carried out once.
//!
//! | route | auth | what |
//! | --- | --- | --- |
//! | `GET /admin/payments/{order_id}` | role `admin` | an order's payment |
//!
//! The saga's steps arrive as commands on `payments.commands` ([`shop_messaging::contracts`]):
//!
//! - `AuthorizePayment` asks the provider under the key `<order_id>:authorize` and records the
//!   answer (`PaymentAuthorized` or `PaymentDeclined`). A provider that fails or does not
//!   answer within `PAYMENT_TIMEOUT_MS` has the command retried, under the same key, so a lost
//!   answer never authorises twice; the orchestrator's deadline ends a provider that never
//!   answers (its void then refuses a late authorisation).
//! - `CapturePayment` (the pivot) takes `AUTHORIZED` to `CAPTURED`, then asks the provider; it
//!   answers `CaptureFailed` only when it can never succeed (declined, voided, expired).
//! - `VoidPayment` and `RefundPayment` give the money back, and answer also when there is
//!   nothing to give.
//!
//! The provider is [`provider::TestCards`] (see its cards and knobs). A sweeper voids
//! authorisations never captured within `PAYMENT_AUTH_EXPIRY_MS`. A provider call is made
//! inside the step's transaction: a slow provider holds a database connection that long.

#![forbid(unsafe_code)]

mod api;
pub mod config;
pub mod provider;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mainstay_auth::Validator;
use shop_common::seal::SealKey;
use shop_common::store::{Database, StoreError, Tx};
use shop_common::tasks::{Stage, Supervisor};
use shop_messaging::contracts::{
    AuthorizePayment, CaptureFailed, CapturePayment, DeclineReason, MAX_SEALED_CARD,
    PAYMENTS_COMMANDS, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    PaymentVoided, RefundPayment, VoidPayment, check_order_id, open_card,
};
use shop_messaging::saga::{self, Participant, Reply};
use shop_messaging::{ConsumerConfig, HandleError, Inbound, Poison, SagaRef};

pub use self::api::router;
pub use self::config::PaymentsConfig;
use self::provider::{Authorization, Provider, ProviderError};
use self::store::PaymentStore;

pub use shop_messaging::contracts::MAX_ORDER_ID;
/// The largest amount one payment may be for, in minor units.
pub const MAX_AMOUNT: i64 = 100_000_000;

/// The most stale authorisations one sweep voids.
const SWEEP_BATCH: i64 = 100;

/// The service's state.
#[derive(Clone)]
pub struct Payments(Arc<Inner>);

struct Inner {
    store: PaymentStore,
    provider: Arc<dyn Provider>,
    timeout: Duration,
    validator: Validator,
    /// Opens the card orders sealed.
    card_key: SealKey,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

impl Payments {
    /// Opens the store (and the backbone's tables beside it), over `provider`, whose calls
    /// may take `config.provider_timeout`. Admin routes trust tokens `validator` accepts.
    ///
    /// # Errors
    ///
    /// The database fails.
    pub async fn start(
        config: &PaymentsConfig,
        database: &Database,
        provider: Arc<dyn Provider>,
        validator: Validator,
        card_key: SealKey,
    ) -> Result<Self, StoreError> {
        let store = PaymentStore::open(database).await?;
        shop_messaging::migrate(database).await?;
        Ok(Self(Arc::new(Inner {
            store,
            provider,
            timeout: config.provider_timeout,
            validator,
            card_key,
        })))
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &PaymentStore {
        &self.0.store
    }

    /// The consumer of the saga's commands: `payments` on [`PAYMENTS_COMMANDS`].
    #[must_use]
    pub fn consumer_config() -> ConsumerConfig {
        ConsumerConfig::new("payments", &[PAYMENTS_COMMANDS])
    }

    /// The handler of those commands: each saga step carried out once, and replied to.
    #[must_use]
    pub fn participant(&self) -> saga::Steps<PaymentParticipant> {
        saga::Steps::new("payments", PaymentParticipant(self.clone()))
    }

    /// Asks the provider, within the timeout: a provider that fails or does not answer is
    /// transient (asked again, under the same key); a refusal is the caller's to read.
    async fn ask_for<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<Result<T, String>, HandleError> {
        match tokio::time::timeout(self.0.timeout, call).await {
            Ok(Ok(answer)) => Ok(Ok(answer)),
            Ok(Err(ProviderError::Refused(reason))) => Ok(Err(reason)),
            Ok(Err(error)) => Err(HandleError::Transient(Box::new(error))),
            Err(_) => Err(HandleError::Transient(
                format!(
                    "the card provider did not answer within {} ms",
                    self.0.timeout.as_millis()
                )
                .into(),
            )),
        }
    }

    /// [`ask_for`](Self::ask_for), where a refusal is transient too (retried, then a dead
    /// letter for an operator).
    async fn ask<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, HandleError> {
        self.ask_for(call).await?.map_err(|reason| {
            HandleError::Transient(format!("the card provider refused: {reason}").into())
        })
    }

    /// Voids the authorisations given before `before_ms` and never captured, each in its own
    /// transaction; returns how many.
    ///
    /// # Errors
    ///
    /// The database fails (what was voided before stays voided).
    pub async fn sweep(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut voided = 0;
        for order_id in self.0.store.stale(before_ms, SWEEP_BATCH).await? {
            let mut tx = self.0.store.database().begin_read_committed().await?;
            let Some(payment) = PaymentStore::get_in(&mut tx, &order_id).await? else {
                continue;
            };
            if !PaymentStore::moved(&mut tx, &order_id, "AUTHORIZED", "VOIDED", Some("expired"))
                .await?
            {
                continue;
            }
            let key = format!("{order_id}:void");
            let reference = payment.reference.unwrap_or_default();
            if let Err(error) = self.ask(self.0.provider.void(&key, &reference)).await {
                // Rolled back: the next sweep tries again.
                tracing::warn!(%order_id, %error, "an expired authorisation could not be voided");
                continue;
            }
            tx.commit().await?;
            tracing::warn!(%order_id, "an authorisation never captured expired: voided");
            voided += 1;
        }
        Ok(voided)
    }

    /// Runs [`sweep`](Self::sweep) every `every` under `tasks`, voiding what is older than
    /// `expiry`.
    pub fn run_sweeper(&self, tasks: &Supervisor, every: Duration, expiry: Duration) {
        let payments = self.clone();
        let expiry = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
        tasks.every("authorisation-sweeper", Stage::Sweepers, every, move || {
            let payments = payments.clone();
            async move {
                let before = shop_common::unix_millis().saturating_sub(expiry);
                if let Err(error) = payments.sweep(before).await {
                    tracing::warn!(%error, "the authorisation sweep failed: tried again next time");
                }
            }
        });
    }
}

/// The payments side of the checkout saga (see the crate's documentation).
#[derive(Debug, Clone)]
pub struct PaymentParticipant(Payments);

impl PaymentParticipant {
    async fn authorize(
        &self,
        tx: &mut Tx,
        command: AuthorizePayment,
    ) -> Result<Reply, HandleError> {
        check_order_id(&command.order_id)?;
        if !(1..=MAX_AMOUNT).contains(&command.amount_minor)
            || command.currency.len() != 3
            || !command.currency.bytes().all(|b| b.is_ascii_uppercase())
            || command.sealed_card.len() > MAX_SEALED_CARD
        {
            return Err(Poison(format!(
                "an amount of {} {:?} (1 to {MAX_AMOUNT}, an ISO 4217 code), or a sealed card \
                 of {} bytes (at most {MAX_SEALED_CARD})",
                command.amount_minor,
                command.currency.chars().take(8).collect::<String>(),
                command.sealed_card.len()
            ))
            .into());
        }
        // Opened before anything else: a card sealed with another key (two services
        // configured apart) is a dead letter to replay once the keys agree, not a decline.
        let card = open_card(&self.0.0.card_key, &command.order_id, &command.sealed_card).map_err(
            |error| {
                Poison(format!(
                    "order {}: its card cannot be opened ({error}): is CARD_SEAL_KEY the \
                     orders service's?",
                    command.order_id
                ))
            },
        )?;
        let order_id = command.order_id;
        if let Some(payment) = PaymentStore::get_in(tx, &order_id).await? {
            return Ok(match payment.status.as_str() {
                "AUTHORIZED" | "CAPTURED" | "REFUNDED" => Reply::of(&PaymentAuthorized {
                    order_id,
                    payment_id: payment.payment_id,
                })?,
                "VOIDED" => Reply::of(&PaymentDeclined {
                    order_id,
                    reason: DeclineReason::Voided,
                })?,
                _ => Reply::of(&PaymentDeclined {
                    order_id,
                    reason: DeclineReason::Declined,
                })?,
            });
        }
        let key = format!("{order_id}:authorize");
        let provider = &self.0.0.provider;
        let answer = self
            .0
            .ask(provider.authorize(&key, command.amount_minor, &command.currency, &card))
            .await?;
        let (status, reference, reason) = match &answer {
            Authorization::Approved { reference } => ("AUTHORIZED", Some(reference.as_str()), None),
            Authorization::Declined(reason) => ("DECLINED", None, Some(decline_text(*reason))),
        };
        let recorded = PaymentStore::record(
            tx,
            &order_id,
            command.amount_minor,
            &command.currency,
            status,
            reference,
            reason,
        )
        .await?;
        let Some(payment_id) = recorded else {
            // A void of this order came first, meanwhile: give back what the provider just
            // approved, and decline.
            if let Authorization::Approved { reference } = &answer {
                let key = format!("{order_id}:void");
                self.0.ask(self.0.0.provider.void(&key, reference)).await?;
            }
            return Ok(Reply::of(&PaymentDeclined {
                order_id,
                reason: DeclineReason::Voided,
            })?);
        };
        Ok(match answer {
            Authorization::Approved { .. } => Reply::of(&PaymentAuthorized {
                order_id,
                payment_id,
            })?,
            Authorization::Declined(reason) => Reply::of(&PaymentDeclined { order_id, reason })?,
        })
    }

    async fn capture(&self, tx: &mut Tx, order_id: String) -> Result<Reply, HandleError> {
        let failed = |order_id: String, reason: &str| {
            Reply::of(&CaptureFailed {
                order_id,
                reason: reason.to_owned(),
            })
        };
        let Some(payment) = PaymentStore::get_in(tx, &order_id).await? else {
            return Ok(failed(order_id, "no payment was authorised")?);
        };
        match payment.status.as_str() {
            "CAPTURED" | "REFUNDED" => {}
            "AUTHORIZED" => {
                if !PaymentStore::moved(tx, &order_id, "AUTHORIZED", "CAPTURED", None).await? {
                    return Err(HandleError::Transient("the payment moved meanwhile".into()));
                }
                let key = format!("{order_id}:capture");
                let reference = payment.reference.clone().unwrap_or_default();
                let captured = self
                    .0
                    .ask_for(self.0.0.provider.capture(&key, &reference))
                    .await?;
                if let Err(refusal) = captured {
                    // The provider will never capture it (voided or expired there): the
                    // payment is void, and the orchestrator compensates.
                    PaymentStore::moved(
                        tx,
                        &order_id,
                        "CAPTURED",
                        "VOIDED",
                        Some("capture refused"),
                    )
                    .await?;
                    return Ok(failed(
                        order_id,
                        &format!("the provider refused the capture: {refusal}"),
                    )?);
                }
            }
            "VOIDED" => {
                let reason = match payment.reason.as_deref() {
                    Some("expired") => "the authorisation expired",
                    _ => "the authorisation was voided",
                };
                return Ok(failed(order_id, reason)?);
            }
            _ => return Ok(failed(order_id, "the payment was declined")?),
        }
        Ok(Reply::of(&PaymentCaptured {
            order_id,
            payment_id: payment.payment_id,
            amount_minor: payment.amount_minor,
        })?)
    }

    async fn void(&self, tx: &mut Tx, order_id: String) -> Result<Reply, HandleError> {
        // Claimed first: an authorisation of this order in flight is waited for, then voided;
        // with none, the claim refuses a late one.
        let claimed = PaymentStore::record(
            tx,
            &order_id,
            0,
            "XXX",
            "VOIDED",
            None,
            Some("voided first"),
        )
        .await?
        .is_some();
        let voided = if claimed {
            // An earlier authorisation whose answer was lost may have reached the provider.
            let key = format!("{order_id}:authorize");
            self.0
                .ask(self.0.0.provider.void_authorization(&key))
                .await?;
            false
        } else {
            match PaymentStore::get_in(tx, &order_id).await? {
                Some(payment) if payment.status == "AUTHORIZED" => {
                    if !PaymentStore::moved(tx, &order_id, "AUTHORIZED", "VOIDED", Some("voided"))
                        .await?
                    {
                        return Err(HandleError::Transient("the payment moved meanwhile".into()));
                    }
                    let key = format!("{order_id}:void");
                    let reference = payment.reference.unwrap_or_default();
                    self.0.ask(self.0.0.provider.void(&key, &reference)).await?;
                    true
                }
                _ => false,
            }
        };
        Ok(Reply::of(&PaymentVoided { order_id, voided })?)
    }

    async fn refund(&self, tx: &mut Tx, order_id: String) -> Result<Reply, HandleError> {
        let amount_minor = match PaymentStore::get_in(tx, &order_id).await? {
            Some(payment) if payment.status == "CAPTURED" => {
                if !PaymentStore::moved(tx, &order_id, "CAPTURED", "REFUNDED", None).await? {
                    return Err(HandleError::Transient("the payment moved meanwhile".into()));
                }
                let key = format!("{order_id}:refund");
                let reference = payment.reference.unwrap_or_default();
                self.0
                    .ask(
                        self.0
                            .0
                            .provider
                            .refund(&key, &reference, payment.captured_minor),
                    )
                    .await?;
                payment.captured_minor
            }
            Some(payment) if payment.status == "REFUNDED" => payment.refunded_minor,
            _ => 0,
        };
        Ok(Reply::of(&PaymentRefunded {
            order_id,
            amount_minor,
        })?)
    }
}

fn decline_text(reason: DeclineReason) -> &'static str {
    match reason {
        DeclineReason::Declined => "declined",
        DeclineReason::InvalidCard => "invalid card",
        DeclineReason::Voided => "voided",
    }
}

#[async_trait]
impl Participant for PaymentParticipant {
    async fn execute(
        &self,
        command: &Inbound,
        _: &SagaRef,
        tx: &mut Tx,
    ) -> Result<Reply, HandleError> {
        if command.is::<AuthorizePayment>() {
            self.authorize(tx, command.decode()?).await
        } else if command.is::<CapturePayment>() {
            let capture: CapturePayment = command.decode()?;
            check_order_id(&capture.order_id)?;
            self.capture(tx, capture.order_id).await
        } else if command.is::<VoidPayment>() {
            let void: VoidPayment = command.decode()?;
            check_order_id(&void.order_id)?;
            self.void(tx, void.order_id).await
        } else if command.is::<RefundPayment>() {
            let refund: RefundPayment = command.decode()?;
            check_order_id(&refund.order_id)?;
            self.refund(tx, refund.order_id).await
        } else {
            Err(Poison(format!(
                "{} is not a payments command",
                command.envelope.kind
            ))
            .into())
        }
    }
}

/// The the payments service, asking `provider`, as its binary runs it, on `transport`, without serving: its kit (to serve
/// with `shop_common::serve`, or `serve_until` in the one-process system), its whole app, and
/// its state.
///
/// # Errors
///
/// The database or the transport cannot be opened, or the service cannot start on them.
pub async fn launch(
    config: PaymentsConfig,
    transport: &shop_messaging::config::TransportConfig,
    provider: Arc<dyn provider::Provider>,
) -> std::io::Result<(shop_common::Kit, axum::Router, Payments)> {
    let validator = config.tokens.validator()?;
    let mut service =
        shop_messaging::service::Service::start_with(config.service.clone(), transport).await?;
    let card_key = shop_common::seal::key_or_file(
        config.card_key.as_ref(),
        std::path::Path::new(shop_messaging::contracts::CARD_KEY_FILE),
    )
    .map_err(std::io::Error::other)?;
    let payments = Payments::start(
        &config,
        &service.database,
        provider,
        validator.clone(),
        card_key,
    )
    .await
    .map_err(std::io::Error::other)?;
    service.consume(Payments::consumer_config(), payments.participant());
    payments.run_sweeper(
        &service.kit.tasks,
        Duration::from_secs(60),
        config.auth_expiry,
    );
    let (kit, app) = service.launch(router(payments.clone()), validator);
    Ok((kit, app, payments))
}
