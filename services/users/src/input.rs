//! Validation of what clients send: every field error named, all at once.

use shop_common::FieldErrors as Errors;

/// The longest password any account can have, in bytes (128 characters of up to 4 bytes).
pub(crate) const MAX_PASSWORD_BYTES: usize = 128 * 4;

/// The normalised email (trimmed, lower-cased, at most 254 bytes: RFC 5321), or an error on
/// `errors`. An over-long input is refused before it is copied.
pub(crate) fn email(raw: &str, errors: &mut Errors) -> String {
    let raw = raw.trim();
    if raw.len() > 254 {
        errors.add(
            "email",
            "must be an email address such as alice@example.com",
        );
        return String::new();
    }
    let email = raw.to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        errors.add(
            "email",
            "must be an email address such as alice@example.com",
        );
    }
    email
}

/// The trimmed name, or an error on `errors`.
pub(crate) fn name(raw: &str, errors: &mut Errors) -> String {
    let name = raw.trim().to_owned();
    let chars = name.chars().count();
    if chars == 0 || chars > 100 {
        errors.add("name", "must be 1 to 100 characters");
    } else if name.chars().any(char::is_control) {
        errors.add("name", "must not contain control characters");
    }
    name
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
        assert_eq!(
            email("  Alice@Example.COM ", &mut errors),
            "alice@example.com"
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
