//! The shapes of fields that more than one service checks, and that the gateway's `OpenAPI`
//! document states: one definition, so that the document and the checks agree.

/// The email addresses accepted: an ASCII local part of 1 to 64 of RFC 5322's `atext`
/// characters and dots, `@`, and a domain of two or more labels of letters, digits and inner
/// hyphens (1 to 63 each); 254 characters at most. [`email_ok`] checks it.
pub const EMAIL_PATTERN: &str = "^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

/// Text a person reads (a name): no control character, and at least one character that is not
/// white space. Its length is the field's own.
pub const VISIBLE_TEXT_PATTERN: &str =
    "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$";

/// Whether `email` is one of [`EMAIL_PATTERN`]'s.
#[must_use]
pub fn email_ok(email: &str) -> bool {
    const ATEXT: &[u8] = b"!#$%&'*+/=?^_`{|}~.-";
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    email.len() <= 254
        && (1..=64).contains(&local.len())
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || ATEXT.contains(&b))
        && domain.split('.').count() >= 2
        && domain.split('.').all(label_ok)
}

/// Whether `text` is one of [`VISIBLE_TEXT_PATTERN`]'s.
#[must_use]
pub fn visible_text_ok(text: &str) -> bool {
    !text.trim().is_empty() && !text.chars().any(char::is_control)
}

/// For `#[serde(default, deserialize_with = "shop_common::fields::present")]` on an optional
/// field that may be left out but not sent as `null` (the document says so: one meaning per
/// shape).
///
/// # Errors
///
/// `null`, or a value that is not a `T`.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// For `#[serde(deserialize_with = "shop_common::fields::whole_number")]` on an `i64`: JSON
/// Schema's `integer` is any number without a fractional part, so `203.0` is one, and `203.5`
/// is not (nor anything outside `i64`).
///
/// # Errors
///
/// Not a number, a fractional one, or one outside `i64`.
pub fn whole_number<'de, D>(deserializer: D) -> Result<i64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(whole) = number.as_i64() {
        return Ok(whole);
    }
    match number.as_f64() {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the value is whole and within i64, checked first"
        )]
        Some(float) if float.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&float) => {
            Ok(float as i64)
        }
        _ => Err(D::Error::custom(format!(
            "invalid value: {number}, expected a whole number"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Input {
        #[serde(default, deserialize_with = "present")]
        name: Option<String>,
        #[serde(default, deserialize_with = "whole_number")]
        price: i64,
    }

    #[test]
    fn null_is_not_absent_and_whole_floats_are_integers() {
        let parse = |json: &str| serde_json::from_str::<Input>(json);
        assert_eq!(parse(r#"{"price": 203}"#).unwrap().price, 203);
        assert_eq!(parse(r#"{"price": 203.0}"#).unwrap().price, 203);
        assert!(parse(r#"{"price": 29.99}"#).is_err());
        assert!(parse(r#"{"price": 1e300}"#).is_err());
        assert_eq!(parse("{}").unwrap().name, None);
        assert_eq!(
            parse(r#"{"name": "a"}"#).unwrap().name.as_deref(),
            Some("a")
        );
        assert!(parse(r#"{"name": null}"#).is_err());
    }

    #[test]
    fn emails_are_the_patterns() {
        for good in [
            "a@b.co",
            "o'brien+x--@mail-1.example.com",
            "A.B@EXAMPLE.ORG",
        ] {
            assert!(email_ok(good), "{good}");
        }
        for bad in [
            "a@b",
            " a@b.co",
            "a b@c.co",
            "a@-b.co",
            "a@b..co",
            "é@b.co",
            "a\"b@c.co",
        ] {
            assert!(!email_ok(bad), "{bad}");
        }
        assert!(visible_text_ok(" Bob "));
        assert!(!visible_text_ok("   "));
        assert!(!visible_text_ok("Bo\u{7}b"));
    }
}
