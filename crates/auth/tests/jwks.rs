//! The JWKS cache under paused time: first fetch, refresh on unknown `kid` at most once per
//! interval, single flight, refresh ahead of expiry, outages, revocation.

mod common;

use std::time::Duration;

use mainstay_auth::jsonwebtoken::Algorithm;
use mainstay_auth::{AuthError, Jwks, SigningKey, Validator};

use common::*;

fn validator(source: &Source) -> Validator {
    let jwks = Jwks::builder()
        .min_refresh_interval(Duration::from_secs(10))
        .default_max_age(Duration::from_secs(300))
        .refresh_ahead(Duration::from_secs(60))
        .build(source.clone());
    Validator::builder()
        .issuer(ISS)
        .audience(AUD)
        .jwks(jwks)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_first_token_fetches_once_for_everyone() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let source = Source::serving(&[&key]);
    let validator = validator(&source);
    let token = sign(&key, &claims());
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (validator, token) = (validator.clone(), token.clone());
            tokio::spawn(async move { validator.validate(&token).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().subject(), "user-1");
    }
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_refetches_at_most_once_per_interval() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let source = Source::serving(&[&key]);
    let validator = validator(&source);
    validator.validate(&sign(&key, &claims())).await.unwrap();
    assert_eq!(source.fetches(), 1);

    // Tokens with made-up kids: within the interval, no fetch at all.
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..100 {
        let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let err = validator
            .validate(&sign(&stranger, &claims()))
            .await
            .unwrap_err();
        assert_eq!(err, AuthError::UnknownKey);
    }
    assert_eq!(
        source.fetches(),
        2,
        "one refetch for a hundred unknown kids"
    );

    // The issuer rotates: the new kid is fetched once the interval has passed.
    let next = SigningKey::generate(Algorithm::EdDSA).unwrap();
    source.set(&[&key, &next]);
    let rotated = sign(&next, &claims());
    assert_eq!(
        validator.validate(&rotated).await.unwrap_err(),
        AuthError::UnknownKey
    );
    assert_eq!(source.fetches(), 2);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        validator.validate(&rotated).await.unwrap().subject(),
        "user-1"
    );
    assert_eq!(source.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn keys_are_refreshed_in_the_background_before_they_expire() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let source = Source::serving(&[&key]);
    let validator = validator(&source);
    let token = sign(&key, &claims());
    validator.validate(&token).await.unwrap();

    // 300 s max age, 60 s ahead: nothing at 200 s...
    tokio::time::advance(Duration::from_secs(200)).await;
    validator.validate(&token).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(source.fetches(), 1);
    // ...one background fetch at 250 s, while validation goes on with the cached keys.
    tokio::time::advance(Duration::from_secs(50)).await;
    validator.validate(&token).await.unwrap();
    validator.validate(&token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_the_cached_keys_and_no_keys_at_all_is_503() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let source = Source::serving(&[&key]);
    *source.failing.lock().unwrap() = true;
    let validator = validator(&source);
    let token = sign(&key, &claims());
    let err = validator.validate(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable(_)));
    assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);

    *source.failing.lock().unwrap() = false;
    tokio::time::advance(Duration::from_secs(10)).await;
    validator.validate(&token).await.unwrap();

    // The JWKS goes down after the keys expire: cached keys keep working.
    *source.failing.lock().unwrap() = true;
    tokio::time::advance(Duration::from_secs(600)).await;
    validator.validate(&token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    validator.validate(&token).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cached_token_is_refused_once_its_key_leaves_the_jwks() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let next = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let source = Source::serving(&[&key]);
    let validator = validator(&source);
    let token = sign(&key, &claims());
    validator.validate(&token).await.unwrap();
    validator.validate(&token).await.unwrap(); // from the cache

    // The key is withdrawn (compromised, say), and the JWKS is refetched.
    source.set(&[&next]);
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = validator.validate(&sign(&next, &claims())).await.unwrap();
    assert_eq!(
        validator.validate(&token).await.unwrap_err(),
        AuthError::UnknownKey
    );
}
