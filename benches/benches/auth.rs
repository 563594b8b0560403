//! Bearer token validation per request, beside raw `jsonwebtoken::decode`, in one run:
//!
//! ```sh
//! cargo bench -p mainstay-benches --bench auth
//! ```
//!
//! * `auth/raw/<alg>`: `jsonwebtoken::decode` into a typed claims struct with the same checks
//!   (algorithm, `iss`, `aud`, `exp`, `nbf`, required claims): what a hand-written middleware
//!   pays.
//! * `auth/cold/<alg>`: our `Validator` with its cache off: every call checks the signature.
//! * `auth/hot/<alg>`: our `Validator` hitting the verified-token cache.
//! * `auth/layer_hot`: the whole `JwtLayer` around a ready service, cache hit.
//! * `auth/login_verify`: one argon2id verification at OWASP parameters, the bound on login
//!   throughput.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mainstay_auth::{JwtLayer, KeySet, SigningKey, Validator, VerifyingKey};
use serde::Deserialize;
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};

/// The claims a hand-written middleware would decode into.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    exp: u64,
    nbf: u64,
    roles: Vec<String>,
    scope: String,
}

struct Case {
    name: &'static str,
    token: String,
    raw_key: DecodingKey,
    verifying: VerifyingKey,
    algorithm: Algorithm,
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": "https://users.example", "aud": "shop", "sub": "7c3e9a4e-3d1f-4d3b-9a55-0e2d1c9b8f11",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "q8a1wVQ9kYdPp1mJ0xS2Yw",
        "roles": ["customer"], "scope": "profile orders:read orders:write carts:read carts:write",
    })
}

fn asymmetric(name: &'static str, algorithm: Algorithm) -> Case {
    let key = SigningKey::generate(algorithm).unwrap();
    let encoding = match algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_der(key.pkcs8_der()),
        Algorithm::ES256 => EncodingKey::from_ec_der(key.pkcs8_der()),
        _ => {
            use base64::Engine;
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(key.pkcs8_der())
            );
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
        }
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(key.kid().to_owned());
    Case {
        name,
        token: jsonwebtoken::encode(&header, &claims(), &encoding).unwrap(),
        raw_key: DecodingKey::from_jwk(key.public_jwk()).unwrap(),
        verifying: key.verifying_key(),
        algorithm,
    }
}

fn hmac() -> Case {
    let secret = [42u8; 32];
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".to_owned());
    Case {
        name: "HS256",
        token: jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret))
            .unwrap(),
        raw_key: DecodingKey::from_secret(&secret),
        verifying: VerifyingKey::hmac(Algorithm::HS256, &secret)
            .unwrap()
            .with_kid("hs"),
        algorithm: Algorithm::HS256,
    }
}

fn validator(case: &Case, cache: u64) -> Validator {
    Validator::builder()
        .issuer("https://users.example")
        .audience("shop")
        .keys(KeySet::new().with(case.verifying.clone()))
        .cache_capacity(cache)
        .build()
        .unwrap()
}

fn validation(case: &Case) -> Validation {
    let mut v = Validation::new(case.algorithm);
    v.set_issuer(&["https://users.example"]);
    v.set_audience(&["shop"]);
    v.leeway = 30;
    v.validate_nbf = true;
    v.required_spec_claims = ["exp", "iss", "aud", "sub"]
        .into_iter()
        .map(str::to_owned)
        .collect::<HashSet<_>>();
    v
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let cases = [
        asymmetric("EdDSA", Algorithm::EdDSA),
        asymmetric("ES256", Algorithm::ES256),
        asymmetric("RS256", Algorithm::RS256),
        hmac(),
    ];
    {
        let mut group = c.benchmark_group("auth");
        for case in &cases {
            let validation = validation(case);
            group.bench_function(format!("raw/{}", case.name), |b| {
                b.iter(|| {
                    jsonwebtoken::decode::<Claims>(
                        black_box(&case.token),
                        &case.raw_key,
                        &validation,
                    )
                    .unwrap()
                });
            });
            let cold = validator(case, 0);
            group.bench_function(format!("cold/{}", case.name), |b| {
                b.iter(|| cold.validate_static(black_box(&case.token)).unwrap());
            });
            let hot = validator(case, 10_000);
            hot.validate_static(&case.token).unwrap();
            group.bench_function(format!("hot/{}", case.name), |b| {
                b.iter(|| hot.validate_static(black_box(&case.token)).unwrap());
            });
        }

        // The whole layer around a ready service, cache hit (EdDSA token).
        let case = &cases[0];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut service =
            JwtLayer::new(validator(case, 10_000)).layer(service_fn(|_: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::empty()))
            }));
        let bearer = format!("Bearer {}", case.token);
        group.bench_function("layer_hot", |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = Request::get("/me")
                        .header("authorization", &bearer)
                        .body(())
                        .unwrap();
                    service.ready().await.unwrap().call(request).await.unwrap()
                })
            });
        });
        group.finish();
    }
    {
        let mut group = c.benchmark_group("auth_login");
        group.sample_size(10);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let passwords = shop_users::password::Passwords::new();
        let hash = runtime
            .block_on(passwords.hash("alice-in-wonderland".to_owned()))
            .unwrap();
        group.bench_function("argon2id_verify", |b| {
            b.iter(|| {
                runtime.block_on(
                    passwords.verify("alice-in-wonderland".to_owned(), Some(hash.clone())),
                )
            });
        });
        group.finish();
    }
    c.final_summary();
}
