//! JWT done right for tower and axum services: validation, authorization and issuance.
//!
//! * [`Validator`] checks a bearer token's size, shape, key, algorithm (pinned per key, never
//!   taken from the token), signature and claims (`exp`/`nbf` with leeway; `iss`, `aud`,
//!   `sub` and `exp` required; more claims on request), and remembers verified tokens
//!   until they expire, so a hot token skips the signature check.
//! * Keys come from PEM or a shared secret ([`KeySet`]), or from a JWKS document ([`Jwks`]):
//!   cached, refreshed ahead of expiry, refetched on an unknown `kid` at most once per
//!   interval.
//! * [`JwtLayer`] puts a [`Principal`] in the request's extensions (an axum extractor with the
//!   `axum` feature); [`RequireScopeLayer`] and [`RequireRoleLayer`] authorize. Refusals are
//!   `application/problem+json`: 401 with `WWW-Authenticate: Bearer error="invalid_token"`,
//!   403 with `insufficient_scope`.
//! * [`TokenIssuer`] signs access tokens (`EdDSA` by default; `ES256`/`RS256` too), publishes the
//!   JWKS, and rotates keys; [`refresh`] rotates opaque refresh tokens with reuse detection.
//!
//! # Crypto backend
//!
//! jsonwebtoken is built with its `aws_lc_rs` backend only. If another crate in your build
//! enables jsonwebtoken's `rust_crypto` backend too, jsonwebtoken panics at the first
//! signature; install one provider at startup to settle it:
//! `jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default()`.
//!
//! # Order in a server stack
//!
//! request id → trace → metrics → body limit → timeout → load shed → **`JwtLayer`** →
//! **`RequireScopeLayer`/`RequireRoleLayer`** → handler. Authentication sits inside the
//! limits, so a flood of bad tokens is shed like any other load and still counted.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use jsonwebtoken::Algorithm;
//! use mainstay_auth::{
//!     AccessClaims, JwtLayer, Principal, RequireRoleLayer, SigningKey, TokenIssuer, Validator,
//! };
//!
//! # #[cfg(not(feature = "axum"))] fn main() {}
//! # #[cfg(feature = "axum")] // the `Principal` extractor
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let issuer = TokenIssuer::new("https://users.example", "shop", SigningKey::generate(Algorithm::EdDSA)?);
//! let validator = Validator::builder()
//!     .issuer("https://users.example")
//!     .audience("shop")
//!     .keys(issuer.key_set()) // or .jwks(Jwks::from_url("https://users.example/.well-known/jwks.json")?)
//!     .build()?;
//!
//! let admin = Router::new()
//!     .route("/users", get(|| async { "[]" }))
//!     .layer(RequireRoleLayer::new("admin"));
//! let app: Router = Router::new()
//!     .route("/me", get(|p: Principal| async move { p.subject().to_owned() }))
//!     .merge(admin)
//!     .layer(JwtLayer::new(validator));
//!
//! let token = issuer.issue(&AccessClaims::new("user-1").role("customer"))?;
//! # let _ = (app, token);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
#[cfg(feature = "axum")]
mod extract;
mod issue;
mod jwks;
mod keys;
mod layer;
mod principal;
pub mod refresh;
mod require;
mod validator;

pub use self::error::AuthError;
pub use self::issue::{AccessClaims, AccessToken, IssueError, SigningKey, TokenIssuer};
pub use self::jwks::{FetchError, FetchJwks, Fetched, Jwks, JwksBuilder};
pub use self::keys::{KeyError, KeySet, VerifyingKey};
pub use self::layer::{Jwt, JwtLayer, ResponseFuture, bearer_token};
pub use self::principal::Principal;
pub use self::require::{Require, RequireFuture, RequireRoleLayer, RequireScopeLayer};
pub use self::validator::{ConfigError, Validator, ValidatorBuilder};

/// Seconds since the Unix epoch, the unit of `exp`, `nbf` and `iat` (0 before 1970).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The jsonwebtoken crate this one is built on (for [`jsonwebtoken::Algorithm`] and JWK types).
pub use jsonwebtoken;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(all(doctest, feature = "axum", feature = "remote-jwks"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
