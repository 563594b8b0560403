//! Who made the request: the verified claims of its token.

use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::AuthError;

/// The verified identity of a request, put in its extensions by [`JwtLayer`](crate::JwtLayer).
///
/// Cheap to clone (one reference count). Scopes come from the `scope` claim (space-separated,
/// RFC 8693) or `scp` (a string or an array); roles from `roles` (an array) or `role` (a string).
#[derive(Clone)]
pub struct Principal(Arc<Inner>);

struct Inner {
    subject: String,
    issuer: String,
    expires_at: u64,
    /// Granted scopes, space-separated (the `scope` claim's own form).
    scope: String,
    roles: Vec<String>,
    /// The verified payload (base64url), decoded into `claims` on first use: most requests
    /// never look past subject, scopes and roles.
    payload: Box<str>,
    claims: OnceLock<Map<String, Value>>,
}

/// The claims authorization reads, decoded straight from the verified payload. Every field is
/// optional so that a missing one is reported by name by the validation, not as bad JSON.
#[derive(Deserialize)]
pub(crate) struct Standard {
    sub: Option<String>,
    iss: Option<String>,
    exp: Option<u64>,
    scope: Option<Value>,
    scp: Option<Value>,
    roles: Option<Value>,
    role: Option<Value>,
}

fn present(value: Option<String>, name: &str) -> Result<String, AuthError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| AuthError::InvalidClaim(name.to_owned()))
}

impl Principal {
    /// Builds a principal from verified claims.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidClaim`] when `sub`, `iss` or `exp` is missing or of the wrong type,
    /// or when `scope`, `scp`, `roles` or `role` is not a string or an array of strings.
    pub fn from_claims(claims: Map<String, Value>) -> Result<Self, AuthError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let standard = Standard {
            sub: text("sub"),
            iss: text("iss"),
            exp: claims.get("exp").and_then(Value::as_u64),
            scope: claims.get("scope").cloned(),
            scp: claims.get("scp").cloned(),
            roles: claims.get("roles").cloned(),
            role: claims.get("role").cloned(),
        };
        let principal = Self::from_standard(standard, "")?;
        // Only this principal holds the Arc: set succeeds.
        let _ = principal.0.claims.set(claims);
        Ok(principal)
    }

    /// Builds a principal from the standard claims of a verified token and its payload.
    pub(crate) fn from_standard(standard: Standard, payload: &str) -> Result<Self, AuthError> {
        let subject = present(standard.sub, "sub")?;
        let issuer = present(standard.iss, "iss")?;
        let expires_at = standard
            .exp
            .ok_or_else(|| AuthError::InvalidClaim("exp".to_owned()))?;
        let mut scope = String::new();
        for (value, name) in [(standard.scope, "scope"), (standard.scp, "scp")] {
            for granted in strings(value, name)? {
                if !scope.is_empty() {
                    scope.push(' ');
                }
                scope.push_str(&granted);
            }
        }
        let mut roles = strings(standard.roles, "roles")?;
        roles.extend(strings(standard.role, "role")?);
        Ok(Self(Arc::new(Inner {
            subject,
            issuer,
            expires_at,
            scope,
            roles,
            payload: payload.into(),
            claims: OnceLock::new(),
        })))
    }

    /// The `sub` claim: who the token speaks for.
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The `iss` claim.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.0.issuer
    }

    /// The `exp` claim, in seconds since the Unix epoch.
    #[must_use]
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.0.scope.split_ascii_whitespace()
    }

    /// Whether `scope` was granted.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The roles.
    #[must_use]
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// Whether the principal has `role`.
    #[must_use]
    pub fn has_role(&self, role: &str) -> bool {
        self.0.roles.iter().any(|r| r == role)
    }

    /// Every claim of the token, as verified (decoded on first call).
    #[must_use]
    pub fn claims(&self) -> &Map<String, Value> {
        self.0.claims.get_or_init(|| {
            // The payload was verified and parsed as a JSON object already: this cannot fail.
            URL_SAFE_NO_PAD
                .decode(self.0.payload.as_bytes())
                .ok()
                .and_then(|json| serde_json::from_slice(&json).ok())
                .unwrap_or_default()
        })
    }

    /// One claim, deserialized.
    #[must_use]
    pub fn claim<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        T::deserialize(self.claims().get(name)?).ok()
    }
}

impl fmt::Debug for Principal {
    // Claims may hold personal data: print what authorization decisions use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.0.subject)
            .field("issuer", &self.0.issuer)
            .field("expires_at", &self.0.expires_at)
            .field("scope", &self.0.scope)
            .field("roles", &self.0.roles)
            .finish_non_exhaustive()
    }
}

/// The strings of a claim that is a space-separated string or an array of strings.
fn strings(value: Option<Value>, name: &str) -> Result<Vec<String>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if !s.contains(char::is_whitespace) => Ok(vec![s]),
        Some(Value::String(s)) => Ok(s.split_ascii_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(AuthError::InvalidClaim(name.to_owned())),
            })
            .collect(),
        Some(_) => Err(AuthError::InvalidClaim(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn scopes_and_roles_come_from_every_usual_claim() {
        let p = Principal::from_claims(claims(json!({
            "sub": "u1", "iss": "users", "exp": 10,
            "scope": "orders:read orders:write", "scp": ["carts:read"],
            "roles": ["customer"], "role": "admin",
        })))
        .unwrap();
        assert!(p.has_scope("orders:write") && p.has_scope("carts:read"));
        assert!(!p.has_scope("orders"));
        assert!(p.has_role("customer") && p.has_role("admin"));
        assert_eq!(p.subject(), "u1");
        assert_eq!(p.expires_at(), 10);
    }

    #[test]
    fn claims_of_the_wrong_type_are_rejected_by_name() {
        let err = Principal::from_claims(claims(json!({"sub": 7, "iss": "i", "exp": 1})));
        assert_eq!(err.unwrap_err(), AuthError::InvalidClaim("sub".into()));
        let err = Principal::from_claims(claims(json!({
            "sub": "u", "iss": "i", "exp": 1, "roles": [1]
        })));
        assert_eq!(err.unwrap_err(), AuthError::InvalidClaim("roles".into()));
    }

    #[test]
    fn debug_does_not_print_other_claims() {
        let p = Principal::from_claims(claims(json!({
            "sub": "u", "iss": "i", "exp": 1, "email": "alice@example.com"
        })))
        .unwrap();
        assert!(!format!("{p:?}").contains("alice"));
    }
}
