//! Who made the request: the verified claims of its token.

use std::fmt;
use std::sync::Arc;

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
    scopes: Vec<String>,
    roles: Vec<String>,
    claims: Map<String, Value>,
}

impl Principal {
    /// Builds a principal from verified claims.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidClaim`] when `sub`, `iss` or `exp` is missing or of the wrong type,
    /// or when `scope`, `scp`, `roles` or `role` is not a string or an array of strings.
    pub fn from_claims(claims: Map<String, Value>) -> Result<Self, AuthError> {
        let subject = string_claim(&claims, "sub")?;
        let issuer = string_claim(&claims, "iss")?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::InvalidClaim("exp".to_owned()))?;
        let mut scopes = Vec::new();
        for name in ["scope", "scp"] {
            strings(&claims, name, &mut scopes)?;
        }
        let mut roles = Vec::new();
        for name in ["roles", "role"] {
            strings(&claims, name, &mut roles)?;
        }
        Ok(Self(Arc::new(Inner {
            subject,
            issuer,
            expires_at,
            scopes,
            roles,
            claims,
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
    #[must_use]
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// Whether `scope` was granted.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| s == scope)
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

    /// Every claim of the token, as verified.
    #[must_use]
    pub fn claims(&self) -> &Map<String, Value> {
        &self.0.claims
    }

    /// One claim, deserialized.
    #[must_use]
    pub fn claim<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        T::deserialize(self.0.claims.get(name)?).ok()
    }
}

impl fmt::Debug for Principal {
    // Claims may hold personal data: print what authorization decisions use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.0.subject)
            .field("issuer", &self.0.issuer)
            .field("expires_at", &self.0.expires_at)
            .field("scopes", &self.0.scopes)
            .field("roles", &self.0.roles)
            .finish_non_exhaustive()
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<String, AuthError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(AuthError::InvalidClaim(name.to_owned())),
    }
}

fn strings(
    claims: &Map<String, Value>,
    name: &str,
    out: &mut Vec<String>,
) -> Result<(), AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            out.extend(s.split_ascii_whitespace().map(str::to_owned));
            Ok(())
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err(AuthError::InvalidClaim(name.to_owned())),
                }
            }
            Ok(())
        }
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
