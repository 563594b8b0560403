//! Validation of what clients send: every field error named, all at once.

use shop_common::FieldErrors as Errors;

/// The longest password any account can have, in bytes (128 characters of up to 4 bytes).
pub(crate) const MAX_PASSWORD_BYTES: usize = 128 * 4;

/// The email, lower-cased, if it is one of [`EMAIL_PATTERN`](shop_common::fields::EMAIL_PATTERN)'s;
/// an error on `errors` otherwise. Checked as sent (no trimming): the contract is the pattern.
pub(crate) fn email(raw: &str, errors: &mut Errors) -> String {
    if !shop_common::fields::email_ok(raw) {
        errors.add(
            "email",
            "must be an email address such as alice@example.com",
        );
        return String::new();
    }
    raw.to_ascii_lowercase()
}

/// The name without surrounding white space, if it is one of
/// [`VISIBLE_TEXT_PATTERN`](shop_common::fields::VISIBLE_TEXT_PATTERN)'s; an error on `errors` otherwise.
pub(crate) fn name(raw: &str, errors: &mut Errors) -> String {
    let chars = raw.chars().count();
    if !(1..=100).contains(&chars) || raw.trim().is_empty() {
        errors.add("name", "must be 1 to 100 characters, not all white space");
    } else if !shop_common::fields::visible_text_ok(raw) {
        errors.add("name", "must not contain control characters");
    }
    raw.trim().to_owned()
}

/// Checks a new password's length (OWASP: at least 12 without MFA; at most 128 so that
/// hashing cost stays bounded).
pub(crate) fn password(raw: &str, errors: &mut Errors) {
    let chars = raw.chars().count();
    if chars < 12 {
        errors.add("password", "must be at least 12 characters");
    } else if chars > 128 {
        errors.add("password", "must be at most 128 characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        let mut errors = Errors::new();
        assert_eq!(email("Alice@Example.COM", &mut errors), "alice@example.com");
        assert_eq!(
            email("o'brien+x--@mail-1.example.com", &mut errors),
            "o'brien+x--@mail-1.example.com"
        );
        assert!(errors.check(http::StatusCode::BAD_REQUEST, "").is_ok());
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "a b@example.com",
            "a@b@c.com",
            " alice@example.com",
            "al\"ice@example.com",
            "alice@-example.com",
            "alice@example..com",
            "élise@example.com",
        ] {
            let mut errors = Errors::new();
            email(bad, &mut errors);
            let problem = errors.check(http::StatusCode::BAD_REQUEST, "").unwrap_err();
            assert_eq!(
                problem.extensions["errors"].as_array().unwrap().len(),
                1,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_failing_field_is_reported() {
        let mut errors = Errors::new();
        email("nope", &mut errors);
        name("", &mut errors);
        password("short", &mut errors);
        let problem = errors
            .check(
                http::StatusCode::UNPROCESSABLE_ENTITY,
                "the request has invalid fields",
            )
            .unwrap_err();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.extensions["errors"].as_array().unwrap().len(), 3);
    }
}
