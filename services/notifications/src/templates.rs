//! The messages' texts: a minijinja template per kind of message (`templates/*.txt`, compiled
//! into the binary), each with a `subject`, an `email` body and a `short` text for SMS and
//! push. Undefined variables are errors, so a template that names a field the event lacks fails
//! its test instead of sending a blank.

use minijinja::value::{Serde, Value};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::Channel;

/// The kinds of message, and their templates.
pub const KINDS: [(&str, &str); 4] = [
    (
        "order_confirmed",
        include_str!("../templates/order_confirmed.txt"),
    ),
    (
        "order_rejected",
        include_str!("../templates/order_rejected.txt"),
    ),
    (
        "order_shipped",
        include_str!("../templates/order_shipped.txt"),
    ),
    (
        "order_delivered",
        include_str!("../templates/order_delivered.txt"),
    ),
];

/// A message rendered for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Its subject.
    pub subject: String,
    /// Its text: the e-mail body, or the short text of an SMS or a push message.
    pub body: String,
}

/// A template could not render (a bug of the template or of its context, never of the input).
#[derive(Debug, thiserror::Error)]
#[error("the template {kind:?}: {source}")]
pub struct RenderError {
    kind: String,
    #[source]
    source: minijinja::Error,
}

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// Compiles the templates of [`KINDS`].
    ///
    /// # Panics
    ///
    /// A template does not compile (they are compiled into the binary, and tested).
    #[must_use]
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (kind, source) in KINDS {
            #[allow(clippy::expect_used)]
            env.add_template(kind, source)
                .expect("the notification templates compile");
        }
        Self { env }
    }

    /// Renders the message `kind` for `channel` from `context`.
    ///
    /// # Errors
    ///
    /// No such kind, or the context lacks what the template uses.
    pub fn render(
        &self,
        kind: &str,
        channel: Channel,
        context: &impl Serialize,
    ) -> Result<Rendered, RenderError> {
        let failed = |source| RenderError {
            kind: kind.to_owned(),
            source,
        };
        let template = self.env.get_template(kind).map_err(failed)?;
        let mut captured = template
            .render_captured(Value::from(Serde(context)))
            .map_err(failed)?;
        let body_block = match channel {
            Channel::Email => "email",
            Channel::Sms | Channel::Push => "short",
        };
        let (subject, body) = captured
            .with_state_mut(|state| {
                Ok::<_, minijinja::Error>((
                    state.render_block("subject")?,
                    state.render_block(body_block)?,
                ))
            })
            .map_err(failed)?;
        Ok(Rendered {
            subject: subject.trim().to_owned(),
            body: body.trim().to_owned(),
        })
    }
}

/// An amount in minor units as a reader sees it: `12.34 EUR`.
#[must_use]
pub fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", minor / 100, minor % 100)
}

/// Why an order was rejected, as a reader is told.
#[must_use]
pub fn reason(code: &str) -> &'static str {
    match code {
        "OUT_OF_STOCK" => "some of its items are out of stock",
        "PAYMENT_DECLINED" => "the payment was declined",
        "PAYMENT_TIMEOUT" | "INVENTORY_TIMEOUT" | "SHIPPING_TIMEOUT" => {
            "it could not be completed in time"
        }
        "UNDELIVERABLE" => "we cannot deliver to that address",
        "CAPTURE_FAILED" => "the payment could not be taken",
        _ => "it could not be completed",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_renders_for_every_channel_and_a_missing_field_is_an_error() {
        let templates = Templates::new();
        let context = json!({
            "order_id": "o-1",
            "name": "Alice",
            "total": money(12_345, "EUR"),
            "lines": [{"quantity": 2, "product_id": "tea", "unit_price": money(450, "EUR")}],
            "reason": reason("OUT_OF_STOCK"),
            "tracking_id": "TRK1",
        });
        for (kind, _) in KINDS {
            for channel in Channel::ALL {
                let rendered = templates.render(kind, channel, &context).unwrap();
                assert!(rendered.subject.contains("o-1"), "{kind}: {rendered:?}");
                assert!(rendered.body.contains("o-1"), "{kind}: {rendered:?}");
                assert!(!rendered.subject.contains('\n'));
            }
        }
        let confirmed = templates
            .render("order_confirmed", Channel::Email, &context)
            .unwrap();
        assert!(confirmed.body.starts_with("Hello Alice,"));
        assert!(
            confirmed.body.contains("2 x tea at 4.50 EUR"),
            "{confirmed:?}"
        );
        assert!(confirmed.body.contains("123.45 EUR"));
        let short = templates
            .render("order_rejected", Channel::Sms, &context)
            .unwrap();
        assert_eq!(
            short.body,
            "Your order o-1 could not be completed: some of its items are out of stock."
        );
        let missing = templates.render("order_shipped", Channel::Push, &json!({"order_id": "o"}));
        assert!(missing.is_err(), "tracking_id is undefined");
        assert!(
            templates
                .render("nothing", Channel::Push, &context)
                .is_err()
        );
    }

    #[test]
    fn amounts_read_as_money() {
        assert_eq!(money(0, "EUR"), "0.00 EUR");
        assert_eq!(money(5, "USD"), "0.05 USD");
        assert_eq!(money(-1_999, "EUR"), "-19.99 EUR");
        assert_eq!(money(i64::MIN, "X").len(), "-92233720368547758.08 X".len());
    }
}
