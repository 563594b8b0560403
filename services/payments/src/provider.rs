//! The card provider the payments service calls, and the test card scheme this system runs
//! with ([`TestCards`]).
//!
//! Every call carries an idempotency key (`<order_id>:<operation>`): a provider answers a key
//! it has seen with its first answer, as real ones do, so that a call repeated after a lost
//! answer (a timeout, a crash before the commit) has one effect.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use shop_messaging::contracts::DeclineReason;

/// A card that is approved.
pub const APPROVED_CARD: &str = "4242424242424242";
/// A card that is declined.
pub const DECLINED_CARD: &str = "4000000000000002";
/// A card whose authorisation never gets an answer (the provider hangs).
pub const TIMEOUT_CARD: &str = "4000000000000119";

/// What an authorisation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Approved, under the provider's reference.
    Approved {
        /// The provider's reference, for the capture, void and refund.
        reference: String,
    },
    /// Declined.
    Declined(DeclineReason),
}

/// The provider could not be asked, or said no for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// It failed, or did not answer: ask again, under the same key.
    #[error("the card provider is unavailable: {0}")]
    Unavailable(String),
    /// It refused the operation for what it is (a capture of a voided authorisation, a void
    /// of a captured one): asking again cannot succeed.
    #[error("the card provider refused: {0}")]
    Refused(String),
}

/// A card provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Authorises `amount_minor` of `currency` on `card`.
    async fn authorize(
        &self,
        key: &str,
        amount_minor: i64,
        currency: &str,
        card: &str,
    ) -> Result<Authorization, ProviderError>;

    /// Captures the authorisation `reference`.
    async fn capture(&self, key: &str, reference: &str) -> Result<(), ProviderError>;

    /// Voids the authorisation `reference`.
    async fn void(&self, key: &str, reference: &str) -> Result<(), ProviderError>;

    /// Voids whatever was authorised under the authorisation key `key`, if anything, and
    /// refuses any later authorisation under it: for a void whose authorisation's answer was
    /// lost (a timeout), so that no approval is left behind at the provider.
    async fn void_authorization(&self, key: &str) -> Result<(), ProviderError>;

    /// Refunds `amount_minor` of the captured `reference`.
    async fn refund(
        &self,
        key: &str,
        reference: &str,
        amount_minor: i64,
    ) -> Result<(), ProviderError>;
}

/// The knobs of [`TestCards`], for demos and the chaos suite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    /// The share (0 to 1) of authorisations of other valid cards that are declined.
    pub decline_rate: f64,
    /// The share (0 to 1) of calls that fail as if the provider were down (not remembered: the
    /// same key asked again may succeed).
    pub failure_rate: f64,
    /// Added to every call.
    pub latency: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            decline_rate: 0.0,
            failure_rate: 0.0,
            latency: Duration::ZERO,
        }
    }
}

/// The test card scheme: [`APPROVED_CARD`] is approved, [`DECLINED_CARD`] declined,
/// [`TIMEOUT_CARD`] never answered; any other number that passes the Luhn check is approved
/// (or declined at the [`Knobs::decline_rate`]), and anything else is an invalid card. Answers
/// are remembered by key, in memory.
#[derive(Debug, Default)]
pub struct TestCards {
    knobs: Knobs,
    answers: Mutex<HashMap<String, Authorization>>,
    /// What became of each approved authorisation, by reference.
    states: Mutex<HashMap<String, State>>,
    /// How many captures still fail as if the provider were down ([`fail_captures`]).
    ///
    /// [`fail_captures`]: TestCards::fail_captures
    failing_captures: std::sync::atomic::AtomicU32,
}

/// An approved authorisation's state at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Approved, not yet captured or voided.
    Authorized,
    /// Captured.
    Captured,
    /// Voided.
    Voided,
    /// Refunded.
    Refunded,
}

impl TestCards {
    /// The scheme, turned by `knobs`.
    #[must_use]
    pub fn new(knobs: Knobs) -> Self {
        Self {
            knobs,
            answers: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            failing_captures: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Makes the next `count` captures fail as if the provider were down (for the tests and
    /// the chaos suite: after the pivot the capture is asked again until it succeeds).
    pub fn fail_captures(&self, count: u32) {
        self.failing_captures
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many of the captures [`fail_captures`](Self::fail_captures) asked to fail are still
    /// to come.
    pub fn failing_captures(&self) -> u32 {
        self.failing_captures
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What became of the authorisation `reference` (for tests and the invariants' checker).
    pub fn state(&self, reference: &str) -> Option<State> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(reference)
            .copied()
    }

    /// The references of approved authorisations left neither captured nor voided.
    pub fn dangling(&self) -> Vec<String> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, state)| **state == State::Authorized)
            .map(|(reference, _)| reference.clone())
            .collect()
    }

    /// Moves `reference` from `from` to `to`; refused when it is in another state (the same
    /// move twice is allowed: an operation asked again).
    fn change(&self, reference: &str, from: State, to: State) -> Result<(), ProviderError> {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match states.get(reference).copied() {
            Some(state) if state == from => {
                states.insert(reference.to_owned(), to);
                Ok(())
            }
            Some(state) if state == to => Ok(()),
            Some(state) => Err(ProviderError::Refused(format!(
                "the authorisation is {state:?}, not {from:?}"
            ))),
            None => Err(ProviderError::Refused("no such authorisation".to_owned())),
        }
    }

    async fn call(&self) -> Result<(), ProviderError> {
        if !self.knobs.latency.is_zero() {
            tokio::time::sleep(self.knobs.latency).await;
        }
        if self.knobs.failure_rate > 0.0 && fastrand::f64() < self.knobs.failure_rate {
            return Err(ProviderError::Unavailable(
                "injected failure (PAYMENT_FAILURE_RATE)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Whether `card` is 12 to 19 digits that pass the Luhn check.
#[must_use]
pub fn valid_card(card: &str) -> bool {
    if !(12..=19).contains(&card.len()) || !card.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = card
        .bytes()
        .rev()
        .enumerate()
        .map(|(n, b)| {
            let digit = u32::from(b - b'0');
            if n % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[async_trait]
impl Provider for TestCards {
    async fn authorize(
        &self,
        key: &str,
        _: i64,
        _: &str,
        card: &str,
    ) -> Result<Authorization, ProviderError> {
        if card == TIMEOUT_CARD {
            std::future::pending::<()>().await;
        }
        self.call().await?;
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(answer) = answers.get(key) {
            return Ok(answer.clone());
        }
        let answer = if !valid_card(card) {
            Authorization::Declined(DeclineReason::InvalidCard)
        } else if card == DECLINED_CARD
            || (card != APPROVED_CARD && fastrand::f64() < self.knobs.decline_rate)
        {
            Authorization::Declined(DeclineReason::Declined)
        } else {
            let reference = format!("test_{}", uuid::Uuid::new_v4().simple());
            self.states
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(reference.clone(), State::Authorized);
            Authorization::Approved { reference }
        };
        answers.insert(key.to_owned(), answer.clone());
        Ok(answer)
    }

    async fn capture(&self, _: &str, reference: &str) -> Result<(), ProviderError> {
        self.call().await?;
        let failing = self.failing_captures.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |left| left.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(ProviderError::Unavailable(
                "injected capture failure (TestCards::fail_captures)".to_owned(),
            ));
        }
        self.change(reference, State::Authorized, State::Captured)
    }

    async fn void(&self, _: &str, reference: &str) -> Result<(), ProviderError> {
        self.call().await?;
        self.change(reference, State::Authorized, State::Voided)
    }

    async fn void_authorization(&self, key: &str) -> Result<(), ProviderError> {
        self.call().await?;
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match answers.get(key).cloned() {
            Some(Authorization::Approved { reference }) => {
                drop(answers);
                self.change(&reference, State::Authorized, State::Voided)
            }
            Some(Authorization::Declined(_)) => Ok(()),
            None => {
                answers.insert(
                    key.to_owned(),
                    Authorization::Declined(DeclineReason::Voided),
                );
                Ok(())
            }
        }
    }

    async fn refund(&self, _: &str, reference: &str, _: i64) -> Result<(), ProviderError> {
        self.call().await?;
        self.change(reference, State::Captured, State::Refunded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_pass_the_luhn_check_and_others_do_not() {
        for card in [APPROVED_CARD, DECLINED_CARD, TIMEOUT_CARD, "79927398713"] {
            assert_eq!(valid_card(card), card.len() >= 12, "{card}");
        }
        assert!(!valid_card("4242424242424241"));
        assert!(!valid_card("4242-4242-4242-4242"));
        assert!(!valid_card(""));
    }

    #[tokio::test]
    async fn a_key_is_answered_alike_and_the_test_cards_do_what_they_say() {
        // Every other card declined: only a remembered key keeps its approval.
        let cards = TestCards::new(Knobs {
            decline_rate: 1.0,
            ..Knobs::default()
        });
        let approved = cards
            .authorize("o1:authorize", 100, "EUR", APPROVED_CARD)
            .await;
        assert!(matches!(approved, Ok(Authorization::Approved { .. })));
        assert_eq!(
            cards
                .authorize("o1:authorize", 100, "EUR", APPROVED_CARD)
                .await,
            approved,
            "the same key, the same answer"
        );
        assert_eq!(
            cards
                .authorize("o2:authorize", 100, "EUR", DECLINED_CARD)
                .await,
            Ok(Authorization::Declined(DeclineReason::Declined))
        );
        assert_eq!(
            cards
                .authorize("o3:authorize", 100, "EUR", "5555555555554444")
                .await,
            Ok(Authorization::Declined(DeclineReason::Declined)),
            "declined at the rate"
        );
        assert_eq!(
            cards.authorize("o4:authorize", 100, "EUR", "1234").await,
            Ok(Authorization::Declined(DeclineReason::InvalidCard))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_card_is_never_answered() {
        let cards = TestCards::default();
        let asked = tokio::time::timeout(
            Duration::from_secs(3600),
            cards.authorize("o:authorize", 100, "EUR", TIMEOUT_CARD),
        )
        .await;
        assert!(asked.is_err());
    }

    #[tokio::test]
    async fn injected_failures_are_not_remembered() {
        let cards = TestCards::new(Knobs {
            failure_rate: 1.0,
            ..Knobs::default()
        });
        assert!(cards.capture("o:capture", "ref").await.is_err());
        assert!(
            cards
                .authorize("o:authorize", 1, "EUR", APPROVED_CARD)
                .await
                .is_err()
        );
        assert!(cards.answers.lock().unwrap().is_empty());
    }
}
