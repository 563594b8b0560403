//! The payments service, the same suites on SQLite and on PostgreSQL: each saga command
//! carried out once per step, under one provider key per operation; declines, voids that come
//! first, a provider that fails or hangs, expiry; and the admin read.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Method, StatusCode};
use mainstay_auth::AccessClaims;
use shop_common::config::{ServiceConfig, Vars};
use shop_common::seal::SealKey;
use shop_common::store::Database;
use shop_common::testing::call;
use shop_messaging::contracts::{
    AuthorizePayment, CaptureFailed, CapturePayment, DeclineReason, PaymentAuthorized,
    PaymentCaptured, PaymentDeclined, PaymentRefunded, PaymentVoided, RefundPayment, VoidPayment,
    seal_card,
};
use shop_messaging::saga::testing::reply_to;
use shop_messaging::{HandleError, Message};
use shop_payments::provider::{
    APPROVED_CARD, Authorization, DECLINED_CARD, Knobs, Provider, ProviderError, TIMEOUT_CARD,
    TestCards,
};
use shop_payments::{Payments, PaymentsConfig, router};

shop_common::on_both_stores!(
    a_payment_is_authorised_captured_and_refunded_once,
    declines_and_voids_end_where_the_saga_expects,
    a_provider_that_fails_or_hangs_has_the_step_retried_under_one_key,
    an_authorisation_never_captured_expires,
    an_admin_reads_a_payment,
);

/// The test cards, counting the calls by key, and failing the first `fail_first` calls.
#[derive(Default)]
struct Counted {
    cards: TestCards,
    calls: Mutex<Vec<String>>,
    fail_first: Mutex<usize>,
}

impl Counted {
    fn failing(times: usize) -> Self {
        Self {
            fail_first: Mutex::new(times),
            ..Self::default()
        }
    }

    fn called(&self, key: &str) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(key.to_owned());
        let mut failing = self.fail_first.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return Err(ProviderError::Unavailable("connection reset".into()));
        }
        Ok(())
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provider for Counted {
    async fn authorize(
        &self,
        key: &str,
        amount_minor: i64,
        currency: &str,
        card: &str,
    ) -> Result<Authorization, ProviderError> {
        self.called(key)?;
        self.cards
            .authorize(key, amount_minor, currency, card)
            .await
    }

    async fn capture(&self, key: &str, reference: &str) -> Result<(), ProviderError> {
        self.called(key)?;
        self.cards.capture(key, reference).await
    }

    async fn void(&self, key: &str, reference: &str) -> Result<(), ProviderError> {
        self.called(key)?;
        self.cards.void(key, reference).await
    }

    async fn void_authorization(&self, key: &str) -> Result<(), ProviderError> {
        self.called(key)?;
        self.cards.void_authorization(key).await
    }

    async fn refund(&self, key: &str, reference: &str, amount: i64) -> Result<(), ProviderError> {
        self.called(key)?;
        self.cards.refund(key, reference, amount).await
    }
}

fn config(url: &str) -> PaymentsConfig {
    let key = card_key();
    let pairs = [
        ("DATABASE_URL", url),
        ("PAYMENT_TIMEOUT_MS", "100"),
        ("CARD_SEAL_KEY", key.expose()),
    ];
    let vars = Vars(|var: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    });
    let service = ServiceConfig::from_vars("payments", 0, &vars).unwrap();
    PaymentsConfig::from_vars(service, &vars).unwrap()
}

async fn start(database: &Database, url: &str, provider: Arc<dyn Provider>) -> Payments {
    let (_, validator) = shop_common::testing::users_tokens();
    Payments::start(&config(url), database, provider, validator, card_key())
        .await
        .unwrap()
}

/// The key orders seals cards with, in these tests.
fn card_key() -> SealKey {
    SealKey::from_bytes(&[7; 32]).unwrap()
}

/// Hands `message` (as step `step`) to the participant; returns the reply it wrote, as `R`.
async fn step<M: Message, R: Message + serde::de::DeserializeOwned>(
    payments: &Payments,
    message: &M,
    step: &str,
) -> Result<R, HandleError> {
    let database = payments.store().database();
    reply_to(&payments.participant(), database, message, step).await
}

fn authorize(order_id: &str, card: &str) -> AuthorizePayment {
    AuthorizePayment {
        order_id: order_id.to_owned(),
        amount_minor: 4_999,
        currency: "EUR".to_owned(),
        sealed_card: seal_card(&card_key(), order_id, card),
    }
}

async fn a_payment_is_authorised_captured_and_refunded_once(database: &Database, url: &str) {
    let provider = Arc::new(Counted::default());
    let payments = start(database, url, provider.clone()).await;
    let authorized: PaymentAuthorized =
        step(&payments, &authorize("o1", APPROVED_CARD), "authorize")
            .await
            .unwrap();
    // The same step again, and another step authorising the same order: one authorisation.
    let again: PaymentAuthorized = step(&payments, &authorize("o1", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    let other: PaymentAuthorized = step(&payments, &authorize("o1", APPROVED_CARD), "authorize-2")
        .await
        .unwrap();
    assert_eq!(again, authorized);
    assert_eq!(other.payment_id, authorized.payment_id);
    // A card sealed for another order, or with another key, never reaches the provider: a
    // dead letter to replay once the keys agree.
    let moved = AuthorizePayment {
        order_id: "o2".into(),
        ..authorize("o1", APPROVED_CARD)
    };
    let foreign = AuthorizePayment {
        sealed_card: seal_card(&SealKey::generate(), "o3", APPROVED_CARD),
        ..authorize("o3", APPROVED_CARD)
    };
    for unopenable in [moved, foreign] {
        assert!(matches!(
            step::<_, PaymentAuthorized>(&payments, &unopenable, "authorize").await,
            Err(HandleError::Poison(_))
        ));
    }
    // The card travels sealed: the message never holds its digits.
    let sent = serde_json::to_string(&authorize("o4", APPROVED_CARD)).unwrap();
    assert!(!sent.contains(APPROVED_CARD), "{sent}");
    let capture = CapturePayment {
        order_id: "o1".into(),
    };
    let captured: PaymentCaptured = step(&payments, &capture, "capture").await.unwrap();
    assert_eq!(captured.amount_minor, 4_999);
    let twice: PaymentCaptured = step(&payments, &capture, "capture-again").await.unwrap();
    assert_eq!(twice, captured);
    let refund = RefundPayment {
        order_id: "o1".into(),
    };
    let refunded: PaymentRefunded = step(&payments, &refund, "refund").await.unwrap();
    assert_eq!(refunded.amount_minor, 4_999);
    let refunded: PaymentRefunded = step(&payments, &refund, "refund-again").await.unwrap();
    assert_eq!(refunded.amount_minor, 4_999);
    assert_eq!(
        provider.calls(),
        ["o1:authorize", "o1:capture", "o1:refund"],
        "each operation once"
    );
    assert_eq!(provider.cards.dangling(), Vec::<String>::new());
    let payment = payments.store().get("o1").await.unwrap().unwrap();
    assert_eq!(
        (
            payment.status.as_str(),
            payment.captured_minor,
            payment.refunded_minor
        ),
        ("REFUNDED", 4_999, 4_999)
    );
}

async fn declines_and_voids_end_where_the_saga_expects(database: &Database, url: &str) {
    let provider = Arc::new(Counted::default());
    let payments = start(database, url, provider.clone()).await;
    let declined: PaymentDeclined = step(&payments, &authorize("d", DECLINED_CARD), "authorize")
        .await
        .unwrap();
    assert_eq!(declined.reason, DeclineReason::Declined);
    let invalid: PaymentDeclined = step(&payments, &authorize("i", "4242"), "authorize")
        .await
        .unwrap();
    assert_eq!(invalid.reason, DeclineReason::InvalidCard);
    let failed: CaptureFailed = step(
        &payments,
        &CapturePayment {
            order_id: "d".into(),
        },
        "capture",
    )
    .await
    .unwrap();
    assert_eq!(failed.reason, "the payment was declined");

    // Voided after it was authorised: the capture can never succeed.
    step::<_, PaymentAuthorized>(&payments, &authorize("v", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    let voided: PaymentVoided = step(
        &payments,
        &VoidPayment {
            order_id: "v".into(),
        },
        "void",
    )
    .await
    .unwrap();
    assert!(voided.voided);
    let failed: CaptureFailed = step(
        &payments,
        &CapturePayment {
            order_id: "v".into(),
        },
        "capture",
    )
    .await
    .unwrap();
    assert_eq!(failed.reason, "the authorisation was voided");

    // Voided before it was authorised (the orchestrator's deadline passed): the late
    // authorisation is refused, and the provider is told to refuse it too.
    let voided: PaymentVoided = step(
        &payments,
        &VoidPayment {
            order_id: "late".into(),
        },
        "void",
    )
    .await
    .unwrap();
    assert!(!voided.voided);
    let refused: PaymentDeclined = step(&payments, &authorize("late", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    assert_eq!(refused.reason, DeclineReason::Voided);
    let late: Vec<String> = provider
        .calls()
        .into_iter()
        .filter(|key| key.starts_with("late:"))
        .collect();
    assert_eq!(
        late,
        ["late:authorize"],
        "the void of the key, and no authorisation"
    );

    // An authorisation whose answer was lost (it timed out after the provider approved), then
    // the orchestrator's void: the approval is voided at the provider, and the retried
    // authorisation declines. Nothing is left authorised at the provider.
    let lost = provider
        .cards
        .authorize("lost:authorize", 4_999, "EUR", APPROVED_CARD)
        .await
        .unwrap();
    assert!(matches!(lost, Authorization::Approved { .. }));
    assert_eq!(provider.cards.dangling().len(), 1);
    step::<_, PaymentVoided>(
        &payments,
        &VoidPayment {
            order_id: "lost".into(),
        },
        "void",
    )
    .await
    .unwrap();
    let retried: PaymentDeclined = step(&payments, &authorize("lost", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    assert_eq!(retried.reason, DeclineReason::Voided);
    assert_eq!(provider.cards.dangling(), Vec::<String>::new());

    // The provider refuses a capture (voided there behind our back): the capture fails for
    // good, and the payment is void.
    let authorized: PaymentAuthorized =
        step(&payments, &authorize("gone", APPROVED_CARD), "authorize")
            .await
            .unwrap();
    let reference = payments
        .store()
        .get("gone")
        .await
        .unwrap()
        .unwrap()
        .reference
        .unwrap();
    provider.cards.void("x", &reference).await.unwrap();
    let failed: CaptureFailed = step(
        &payments,
        &CapturePayment {
            order_id: "gone".into(),
        },
        "capture",
    )
    .await
    .unwrap();
    assert!(
        failed
            .reason
            .starts_with("the provider refused the capture"),
        "{failed:?}"
    );
    let gone = payments.store().get("gone").await.unwrap().unwrap();
    assert_eq!(
        (gone.status.as_str(), gone.payment_id),
        ("VOIDED", authorized.payment_id)
    );

    // A malformed command is poison.
    let mut free = authorize("f", APPROVED_CARD);
    free.amount_minor = 0;
    assert!(matches!(
        step::<_, PaymentAuthorized>(&payments, &free, "authorize").await,
        Err(HandleError::Poison(_))
    ));
}

async fn a_provider_that_fails_or_hangs_has_the_step_retried_under_one_key(
    database: &Database,
    url: &str,
) {
    let provider = Arc::new(Counted::failing(1));
    let payments = start(database, url, provider.clone()).await;
    // Down once: transient, nothing recorded; the retry asks under the same key.
    assert!(matches!(
        step::<_, PaymentAuthorized>(&payments, &authorize("o", APPROVED_CARD), "authorize").await,
        Err(HandleError::Transient(_))
    ));
    assert!(payments.store().get("o").await.unwrap().is_none());
    step::<_, PaymentAuthorized>(&payments, &authorize("o", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    assert_eq!(provider.calls(), ["o:authorize", "o:authorize"]);
    // A capture that fails rolls its move back: still authorised, and captured on the retry.
    *provider.fail_first.lock().unwrap() = 1;
    let capture = CapturePayment {
        order_id: "o".into(),
    };
    assert!(matches!(
        step::<_, PaymentCaptured>(&payments, &capture, "capture").await,
        Err(HandleError::Transient(_))
    ));
    assert_eq!(
        payments.store().get("o").await.unwrap().unwrap().status,
        "AUTHORIZED"
    );
    step::<_, PaymentCaptured>(&payments, &capture, "capture")
        .await
        .unwrap();
    // A provider that never answers: transient once the timeout (100 ms here) passes.
    assert!(matches!(
        step::<_, PaymentAuthorized>(&payments, &authorize("t", TIMEOUT_CARD), "authorize").await,
        Err(HandleError::Transient(_))
    ));
    assert!(payments.store().get("t").await.unwrap().is_none());
}

async fn an_authorisation_never_captured_expires(database: &Database, url: &str) {
    let provider = Arc::new(Counted::default());
    let payments = start(database, url, provider.clone()).await;
    step::<_, PaymentAuthorized>(&payments, &authorize("old", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    step::<_, PaymentAuthorized>(&payments, &authorize("paid", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    step::<_, PaymentCaptured>(
        &payments,
        &CapturePayment {
            order_id: "paid".into(),
        },
        "capture",
    )
    .await
    .unwrap();
    let later = shop_common::unix_millis() + 1;
    assert_eq!(payments.sweep(later - 60_000).await.unwrap(), 0, "young");
    assert_eq!(
        payments.sweep(later).await.unwrap(),
        1,
        "the captured one stays"
    );
    assert_eq!(payments.sweep(later).await.unwrap(), 0, "once");
    let failed: CaptureFailed = step(
        &payments,
        &CapturePayment {
            order_id: "old".into(),
        },
        "capture",
    )
    .await
    .unwrap();
    assert_eq!(failed.reason, "the authorisation expired");
    assert!(provider.calls().contains(&"old:void".to_owned()));
}

async fn an_admin_reads_a_payment(database: &Database, url: &str) {
    let (issuer, validator) = shop_common::testing::users_tokens();
    let provider = Arc::new(TestCards::new(Knobs::default()));
    let payments = Payments::start(&config(url), database, provider, validator, card_key())
        .await
        .unwrap();
    step::<_, PaymentAuthorized>(&payments, &authorize("o", APPROVED_CARD), "authorize")
        .await
        .unwrap();
    let app = router(payments);
    let token = |role: &str| {
        issuer
            .issue(&AccessClaims::new(format!("{role}-1")).role(role))
            .unwrap()
            .token
    };
    let get = async |path: &str, token: Option<&str>| {
        call(&app, Method::GET, path, token, None, None).await
    };
    assert_eq!(
        get("/admin/payments/o", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/admin/payments/o", Some(&token("customer")))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let admin = token("admin");
    let read = get("/admin/payments/o", Some(&admin)).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["status"], "AUTHORIZED");
    assert_eq!(read.body["amount_minor"], 4_999);
    assert!(read.body.get("card").is_none(), "the card is never kept");
    let missing = get("/admin/payments/none", Some(&admin)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.headers["content-type"], "application/problem+json");
}

/// A void racing the authorisation it compensates (PostgreSQL): it waits for the
/// authorisation's row, then voids it, here and at the provider, rather than finding nothing
/// and leaving the approval behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_racing_its_authorisation_waits_and_voids_it() {
    use shop_messaging::{Handler, Inbound, SagaRef};
    let Some(db) = shop_common::testing::PgTestDb::create_or_skip("pay_race").await else {
        return;
    };
    let database = Database::connect(&db.url).await.unwrap();
    let provider = Arc::new(Counted::default());
    let payments = start(&database, &db.url, provider.clone()).await;
    let saga = |step: &str| {
        Some(SagaRef {
            saga_id: "x".into(),
            step: step.into(),
        })
    };
    let participant = payments.participant();
    let mut authorizing = database.begin().await.unwrap();
    let authorize = Inbound::of(&authorize("x", APPROVED_CARD), saga("authorize")).unwrap();
    participant
        .handle(&authorize, &mut authorizing)
        .await
        .unwrap();
    let voiding = {
        let (database, participant) = (database.clone(), payments.participant());
        tokio::spawn(async move {
            let void = Inbound::of(
                &VoidPayment {
                    order_id: "x".into(),
                },
                saga("void"),
            )
            .unwrap();
            let mut tx = database.begin().await.unwrap();
            participant.handle(&void, &mut tx).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    shop_common::testing::until_one_waits_on_a_lock(&database, &voiding, "the void did not wait")
        .await;
    authorizing.commit().await.unwrap();
    voiding.await.unwrap();
    let payment = payments.store().get("x").await.unwrap().unwrap();
    assert_eq!(payment.status, "VOIDED");
    assert_eq!(provider.cards.dangling(), Vec::<String>::new());
    if let Database::Postgres(pool) = database {
        pool.close().await;
    }
    db.drop_database().await.unwrap();
}
