//! Why a request was refused, and the response that says so.

use bytes::Bytes;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Response, StatusCode};
use jsonwebtoken::errors::ErrorKind;

/// A refused request. Every variant maps to one status: 401 for a missing or invalid token
/// (with `WWW-Authenticate: Bearer`, RFC 6750), 403 for a valid token without the needed scope
/// or role, 503 when the signing keys cannot be fetched.
///
/// The message names the reason and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries no bearer token.
    #[error("the request has no bearer token")]
    MissingToken,
    /// The token is longer than the configured limit.
    #[error("the token is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The token is not a well-formed JWS compact serialization.
    #[error("the token is malformed")]
    Malformed,
    /// No key is known for the token's `kid` (after one refresh of a JWKS).
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The token's `alg` is not the algorithm pinned for its key.
    #[error("the token's algorithm is not allowed for its key")]
    AlgorithmNotAllowed,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    InvalidSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not an accepted issuer.
    #[error("the token's issuer is not accepted")]
    InvalidIssuer,
    /// `aud` names no accepted audience.
    #[error("the token's audience is not accepted")]
    InvalidAudience,
    /// A required claim is absent.
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    /// A claim has the wrong type or value.
    #[error("the token's claim `{0}` is invalid")]
    InvalidClaim(String),
    /// The token is valid but lacks a scope.
    #[error("the token lacks the scope `{0}`")]
    MissingScope(String),
    /// The token is valid but its subject lacks a role.
    #[error("the principal lacks the role `{0}`")]
    MissingRole(String),
    /// The keys could not be fetched and none are cached: the fault is ours, not the client's.
    #[error("the signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// The HTTP status of the rejection.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingScope(_) | Self::MissingRole(_) => StatusCode::FORBIDDEN,
            Self::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), if the status calls for one.
    #[must_use]
    pub fn challenge(&self) -> Option<HeaderValue> {
        let value = match self {
            // No credentials at all: no error code (RFC 6750 §3.1).
            Self::MissingToken => "Bearer".to_owned(),
            Self::MissingScope(scope) => {
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                    quoted(scope)
                )
            }
            Self::MissingRole(_) => "Bearer error=\"insufficient_scope\"".to_owned(),
            Self::KeysUnavailable(_) => return None,
            other => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted(&other.to_string())
            ),
        };
        HeaderValue::from_str(&value).ok()
    }

    /// The rejection as an RFC 9457 `application/problem+json` response with its challenge.
    #[must_use]
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = mainstay_problem::Problem::new(self.status())
            .detail(self.to_string())
            .to_response::<String>()
            .map(|body| B::from(Bytes::from(body)));
        if let Some(challenge) = self.challenge() {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        response
    }

    pub(crate) fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Self::InvalidSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => Self::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(claim) => Self::MissingClaim(claim.clone()),
            ErrorKind::InvalidClaimFormat(claim) => Self::InvalidClaim(claim.clone()),
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::InvalidIssuer,
            ErrorKind::InvalidAudience => Self::InvalidAudience,
            ErrorKind::InvalidSubject => Self::InvalidClaim("sub".to_owned()),
            _ => Self::Malformed,
        }
    }
}

/// Escapes a quoted-string (RFC 9110 §5.6.4).
fn quoted(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            _ => vec![c],
        })
        .collect()
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for AuthError {
    fn into_response(self) -> axum::response::Response {
        self.to_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750() {
        let get = |e: AuthError| e.challenge().unwrap().to_str().unwrap().to_owned();
        assert_eq!(get(AuthError::MissingToken), "Bearer");
        assert_eq!(
            get(AuthError::Expired),
            "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
        );
        assert_eq!(
            get(AuthError::MissingScope("orders:write".into())),
            "Bearer error=\"insufficient_scope\", scope=\"orders:write\""
        );
        assert!(
            AuthError::KeysUnavailable("down".into())
                .challenge()
                .is_none()
        );
    }

    #[test]
    fn a_claim_name_cannot_break_the_header() {
        let challenge = AuthError::MissingClaim("a\"b\r\nX: y".into())
            .challenge()
            .unwrap();
        assert_eq!(
            challenge.to_str().unwrap(),
            "Bearer error=\"invalid_token\", error_description=\"the token lacks the required claim `a\\\"bX: y`\""
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(AuthError::Malformed.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AuthError::MissingRole("admin".into()).status(),
            StatusCode::FORBIDDEN
        );
        let response: Response<String> = AuthError::Expired
            .to_response::<Bytes>()
            .map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(response.body().contains("\"status\":401"));
    }
}
