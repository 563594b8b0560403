//! Every kind of bad token the validator must refuse, each by name.

mod common;

use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mainstay_auth::jsonwebtoken::{Algorithm, AlgorithmFamily};
use mainstay_auth::{AuthError, KeySet, SigningKey, Validator, VerifyingKey};
use serde_json::json;

use common::*;

fn validator_for(keys: KeySet) -> Validator {
    Validator::builder()
        .issuer(ISS)
        .audience(AUD)
        .require_claim("roles")
        .keys(keys)
        .build()
        .unwrap()
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[test]
fn a_valid_token_of_every_algorithm_passes() {
    for algorithm in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let key = SigningKey::generate(algorithm).unwrap();
        let validator = validator_for(KeySet::new().with(key.verifying_key()));
        let principal = validator.validate_static(&sign(&key, &claims())).unwrap();
        assert_eq!(principal.subject(), "user-1");
        assert!(principal.has_role("customer") && principal.has_scope("orders:read"));
        // Every claim is there for the handler, decoded on demand.
        assert_eq!(principal.claim::<String>("aud").as_deref(), Some(AUD));
        assert_eq!(
            principal.claims().len(),
            claims().as_object().unwrap().len()
        );
    }
    let secret = [9u8; 32];
    let validator =
        validator_for(KeySet::new().with(VerifyingKey::hmac(Algorithm::HS256, &secret).unwrap()));
    assert!(
        validator
            .validate_static(&sign_hmac(&secret, None, &claims()))
            .is_ok()
    );
}

#[test]
fn alg_none_is_refused() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": key.kid()});
        let token = format!("{}.{}.", b64(&header), b64(&claims()));
        assert_eq!(
            validator.validate_static(&token).unwrap_err(),
            AuthError::Malformed,
            "{alg}"
        );
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    for algorithm in [Algorithm::RS256, Algorithm::ES256] {
        let key = SigningKey::generate(algorithm).unwrap();
        let validator = validator_for(KeySet::new().with(key.verifying_key()));
        // The attacker knows the public key (it is published) and uses it as an HMAC secret,
        // in both the PEM and the DER forms a naive verifier might hand to HMAC.
        let spki: Vec<u8> = if algorithm.family() == AlgorithmFamily::Rsa {
            use aws_lc_rs::signature::KeyPair;
            let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
            let der: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
                pair.public_key().as_der().unwrap();
            der.as_ref().to_vec()
        } else {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8_der())
                .unwrap();
            let der: aws_lc_rs::encoding::PublicKeyX509Der<'_> =
                pair.public_key().as_der().unwrap();
            der.as_ref().to_vec()
        };
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        for secret in [pem.as_bytes(), &spki[..]] {
            let token = sign_hmac(secret, Some(key.kid()), &claims());
            assert_eq!(
                validator.validate_static(&token).unwrap_err(),
                AuthError::AlgorithmNotAllowed,
                "{algorithm:?}"
            );
        }
    }
}

#[test]
fn time_and_audience_claims_are_enforced() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    let with = |name: &str, value: serde_json::Value| {
        let mut c = claims();
        c[name] = value;
        validator.validate_static(&sign(&key, &c)).unwrap_err()
    };
    // Beyond the 30 s leeway.
    assert_eq!(with("exp", json!(now() - 31)), AuthError::Expired);
    assert_eq!(with("nbf", json!(now() + 3600)), AuthError::NotYetValid);
    assert_eq!(
        with("iss", json!("https://evil.test")),
        AuthError::InvalidIssuer
    );
    assert_eq!(
        with("aud", json!("another-shop")),
        AuthError::InvalidAudience
    );
    assert_eq!(with("aud", json!(["x", "y"])), AuthError::InvalidAudience);
    // Within the leeway, an expired token still passes (clock skew).
    let mut c = claims();
    c["exp"] = json!(now() - 5);
    assert!(validator.validate_static(&sign(&key, &c)).is_ok());
}

#[test]
fn required_claims_are_required() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    for claim in ["sub", "iss", "aud", "exp", "roles"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(
            validator.validate_static(&sign(&key, &c)).unwrap_err(),
            AuthError::MissingClaim(claim.to_owned()),
        );
    }
}

#[test]
fn unknown_keys_are_refused() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    assert_eq!(
        validator
            .validate_static(&sign(&stranger, &claims()))
            .unwrap_err(),
        AuthError::UnknownKey
    );
    // The stranger's token under our kid: the signature fails.
    let mut header = mainstay_auth::jsonwebtoken::Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid().to_owned());
    let forged =
        mainstay_auth::jsonwebtoken::encode(&header, &claims(), &encoding_key(&stranger)).unwrap();
    assert_eq!(
        validator.validate_static(&forged).unwrap_err(),
        AuthError::InvalidSignature
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    let token = sign(&key, &claims());
    let (head, rest) = token.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();

    for bad in [
        String::new(),
        "not a token".to_owned(),
        format!("{head}.{payload}"), // signature part missing
        format!("{head}!!.{payload}.{signature}"), // not base64url
        head.to_owned(),
        format!(
            "{}.{payload}.{signature}",
            URL_SAFE_NO_PAD.encode("{not json")
        ),
    ] {
        assert_eq!(
            validator.validate_static(&bad).unwrap_err(),
            AuthError::Malformed,
            "{bad:?}"
        );
    }
    // Truncated signature.
    let truncated = &token[..token.len() - 10];
    assert!(matches!(
        validator.validate_static(truncated).unwrap_err(),
        AuthError::InvalidSignature | AuthError::Malformed
    ));
}

#[test]
fn a_tampered_payload_fails_the_signature() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    let token = sign(&key, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut promoted = claims();
    promoted["roles"] = json!(["admin"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(&promoted), parts[2]);
    assert_eq!(
        validator.validate_static(&tampered).unwrap_err(),
        AuthError::InvalidSignature
    );
}

#[test]
fn huge_kids_and_huge_tokens_are_refused_before_any_lookup() {
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let validator = validator_for(KeySet::new().with(key.verifying_key()));
    let header = json!({"alg": "EdDSA", "kid": "k".repeat(4000)});
    let token = format!("{}.{}.sig", b64(&header), b64(&claims()));
    assert_eq!(
        validator.validate_static(&token).unwrap_err(),
        AuthError::Malformed
    );

    let mut big = claims();
    big["padding"] = json!("x".repeat(10_000));
    assert_eq!(
        validator.validate_static(&sign(&key, &big)).unwrap_err(),
        AuthError::TooLarge { limit: 8192 }
    );
}

#[test]
fn the_builder_requires_issuer_audience_and_keys() {
    use mainstay_auth::ConfigError;
    let keys = KeySet::new();
    assert_eq!(
        Validator::builder()
            .audience(AUD)
            .keys(keys.clone())
            .build()
            .unwrap_err(),
        ConfigError::NoIssuer
    );
    assert_eq!(
        Validator::builder()
            .issuer(ISS)
            .keys(keys)
            .build()
            .unwrap_err(),
        ConfigError::NoAudience
    );
    assert_eq!(
        Validator::builder()
            .issuer(ISS)
            .audience(AUD)
            .build()
            .unwrap_err(),
        ConfigError::NoKeys
    );
}
