//! The users API, the same suite on SQLite and on PostgreSQL.

mod common;

use http::{Method, Request, StatusCode, header};
use serde_json::json;
use shop_common::store::Database;

use common::*;

const ALICE: (&str, &str) = ("alice@example.com", "alice-in-wonderland");
const ADMIN: (&str, &str) = ("admin@example.com", "admin-change-me-now");

async fn sqlite() -> Database {
    Database::connect("sqlite::memory:").await.unwrap()
}

shop_common::on_both_stores!(
    a_retried_refresh_is_answered_again_not_taken_for_reuse,
    register_login_and_profile,
    bad_input_is_rejected_precisely,
    sql_metacharacters_are_stored_verbatim,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_signs_out_the_login,
    admin_routes_need_the_admin_role,
    keys_rotate_without_signing_anyone_out,
    logins_are_limited_per_account,
    a_rotation_on_one_replica_reaches_the_others,
    a_pending_email_change_ends_alike_whether_the_next_address_is_taken_or_free,
    concurrent_email_changes_leave_one_pending,
    signing_keys_rest_wrapped_and_plain_ones_are_wrapped_at_start,
);

/// The signing keys rest wrapped with the key-encryption key; a key stored plain (from before
/// keys were wrapped) is wrapped when the service starts and keeps signing; and another
/// key-encryption key cannot start the service.
async fn signing_keys_rest_wrapped_and_plain_ones_are_wrapped_at_start(
    database: &Database,
    url: &str,
) {
    use shop_common::seal::SealKey;
    let kek = SealKey::generate();
    let client = Client::start(database, config(url, &[("SIGNING_KEY_KEK", kek.expose())])).await;
    let (token, _) = client.login(ALICE.0, ALICE.1).await;
    let at_rest = || async {
        let rows: Vec<(String, Vec<u8>)> = shop_common::on_db!(database, pool => sqlx::query_as(
            "SELECT kid, pkcs8 FROM signing_keys",
        )
        .fetch_all(pool)
        .await)
        .unwrap();
        rows
    };
    let rows = at_rest().await;
    assert_eq!(rows.len(), 1);
    let (kid, wrapped) = &rows[0];
    let sealed = wrapped.strip_prefix(b"kek1:").expect("wrapped at rest");
    let pkcs8 = kek
        .open(sealed, format!("signing-key\n{kid}").as_bytes())
        .unwrap();
    let key = mainstay_auth::SigningKey::from_pkcs8_der(
        mainstay_auth::jsonwebtoken::Algorithm::EdDSA,
        &pkcs8,
    )
    .unwrap();
    assert_eq!(key.kid(), kid);
    assert!(!wrapped.windows(pkcs8.len()).any(|w| w == pkcs8.as_slice()));

    // As a service before wrapping left it: plain.
    shop_common::on_db!(database, pool => sqlx::query("UPDATE signing_keys SET pkcs8 = $1")
        .bind(&pkcs8)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
    .unwrap();
    let again = Client::start(database, config(url, &[("SIGNING_KEY_KEK", kek.expose())])).await;
    let rows = at_rest().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0].0, kid);
    assert!(rows[0].1.starts_with(b"kek1:"), "wrapped at start");
    assert_eq!(again.get("/me", &token).await.status, StatusCode::OK);
    assert!(!again.login(ALICE.0, ALICE.1).await.0.is_empty());

    let other = config(url, &[("SIGNING_KEY_KEK", SealKey::generate().expose())]);
    match shop_users::Users::start(other, database).await {
        Err(shop_users::StartError::Unwrap { kid: refused }) => assert_eq!(&refused, kid),
        other => panic!("started with another key-encryption key: {other:?}"),
    }
}

/// A pending change is replaced by the next request, to a free address or a taken one alike:
/// otherwise the old token's fate (still confirmable or not) tells whether an address has an
/// account.
async fn a_pending_email_change_ends_alike_whether_the_next_address_is_taken_or_free(
    database: &Database,
    url: &str,
) {
    let client = Client::start(database, config(url, &[])).await;
    let (token, _) = client.login(ALICE.0, ALICE.1).await;
    let mut mails = client.watch(shop_users::events::MAIL_SUBJECT).await;
    for next in [ADMIN.0, "somebody-new@example.com"] {
        let first = client
            .call(
                Method::PATCH,
                "/me",
                Some(&token),
                Some(json!({"email": "mine@example.com"})),
            )
            .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        let (kind, requested) = client.next(&mut mails).await;
        assert_eq!(kind, "SendEmailConfirmation");
        let first_token = client.token_of(&requested);

        let second = client
            .call(
                Method::PATCH,
                "/me",
                Some(&token),
                Some(json!({"email": next})),
            )
            .await;
        assert_eq!(second.status, StatusCode::OK, "{}", second.body);
        assert_eq!(second.body["pending_email"], next);
        client.skip(&mut mails).await;

        let confirm = client
            .post("/email/confirm", json!({ "token": first_token }))
            .await;
        assert_eq!(
            confirm.status,
            StatusCode::NOT_FOUND,
            "next {next}: {}",
            confirm.body
        );
    }
    assert_eq!(client.get("/me", &token).await.body["email"], ALICE.0);
}

/// Changes requested at once by one user: all answered, exactly one left to confirm.
async fn concurrent_email_changes_leave_one_pending(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let (token, _) = client.login(ALICE.0, ALICE.1).await;
    let mut mails = client.watch(shop_users::events::MAIL_SUBJECT).await;
    let change = |email: &'static str| {
        client.call(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(json!({"email": email})),
        )
    };
    let (a, b, c, d) = tokio::join!(
        change("one@example.com"),
        change("two@example.com"),
        change("three@example.com"),
        change("four@example.com"),
    );
    let replies = [a, b, c, d];
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let mut confirmed = 0;
    while let Some((kind, command)) = client.try_next(&mut mails).await {
        assert_eq!(kind, "SendEmailConfirmation");
        let token = client.token_of(&command);
        let reply = client
            .post("/email/confirm", json!({ "token": token }))
            .await;
        match reply.status {
            StatusCode::OK => confirmed += 1,
            StatusCode::NOT_FOUND => {}
            other => panic!("{other}: {}", reply.body),
        }
    }
    assert_eq!(confirmed, 1);
}

async fn a_rotation_on_one_replica_reaches_the_others(database: &Database, url: &str) {
    let a = Client::start(database, config(url, &[])).await;
    let b = Client::start(database, config(url, &[])).await;
    let (admin, _) = a.login(ADMIN.0, ADMIN.1).await;
    let rotated = a
        .call(Method::POST, "/admin/keys/rotate", Some(&admin), None)
        .await;
    let new_kid = rotated.body["kid"].as_str().unwrap().to_owned();

    // A signs with the new key; B has never seen it, and still accepts A's token: its
    // validator meets an unknown kid and reloads the keys from the database.
    let (from_a, _) = a.login(ALICE.0, ALICE.1).await;
    assert_eq!(b.get("/me", &from_a).await.status, StatusCode::OK);

    // After B's reload (every 30 s, or the one above), B publishes and signs with the new key.
    b.users.reload_keys().await.unwrap();
    let jwks = b
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(jwks.body["keys"][0]["kid"], new_kid.as_str());
    let (from_b, _) = b.login(ALICE.0, ALICE.1).await;
    let header = mainstay_auth::jsonwebtoken::decode_header(&from_b).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
}

async fn register_login_and_profile(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let reply = client
        .post("/register", json!({"email": "Bob@Example.com", "password": "a long enough password", "name": "Bob"}))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert!(reply.body.get("password_hash").is_none());

    // Emails are unique after normalisation, and a taken one gets the very same answer: the
    // caller learns nothing, and the account is untouched (its password still works below).
    let again = client
        .post("/register", json!({"email": "BOB@example.com", "password": "another long password", "name": "Bob 2"}))
        .await;
    assert_eq!(again.status, reply.status);
    assert_eq!(again.body, reply.body);
    let hijack = client
        .post(
            "/login",
            json!({"email": "bob@example.com", "password": "another long password"}),
        )
        .await;
    assert_eq!(hijack.status, StatusCode::UNAUTHORIZED);

    let login = client
        .post(
            "/login",
            json!({"email": "bob@EXAMPLE.com", "password": "a long enough password"}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(login.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 900);
    let token = login.body["access_token"].as_str().unwrap();

    let me = client.get("/me", token).await;
    assert_eq!(
        (me.status, me.body["name"].clone()),
        (StatusCode::OK, json!("Bob"))
    );

    let patched = client
        .call(
            Method::PATCH,
            "/me",
            Some(token),
            Some(json!({"name": "  Robert "})),
        )
        .await;
    assert_eq!(patched.body["name"], "Robert");
    assert_eq!(client.get("/me", token).await.body["name"], "Robert");

    // A new email waits for its owner's confirmation, and the answer is the same whether the
    // address is alice's or free: nobody learns who has an account.
    let mut events = client.watch(shop_users::events::SUBJECT).await;
    let mut mails = client.watch(shop_users::events::MAIL_SUBJECT).await;
    let change = |email: &'static str| {
        client.call(
            Method::PATCH,
            "/me",
            Some(token),
            Some(json!({"email": email})),
        )
    };
    let taken = change(ALICE.0).await;
    let free = change("robert@example.com").await;
    assert_eq!(taken.status, StatusCode::OK);
    assert_eq!(free.status, StatusCode::OK);
    for (reply, asked) in [(&taken, ALICE.0), (&free, "robert@example.com")] {
        assert_eq!(reply.body["email"], "bob@example.com", "{}", reply.body);
        assert_eq!(reply.body["pending_email"], asked);
    }
    let (alice_token, _) = client.login(ALICE.0, ALICE.1).await;
    let alice_id = client.get("/me", &alice_token).await.body["id"].clone();
    // Both requests are facts alike; Alice is told; the free address, and only the mailer,
    // gets the token that confirms the change: no secret on the event stream.
    let bob_id = client.get("/me", token).await.body["id"].clone();
    assert_eq!(client.next(&mut events).await.0, "EmailChangeRequested");
    let (kind, owner_word) = client.next(&mut events).await;
    assert_eq!(kind, "AddressClaimAttempted");
    assert_eq!(
        owner_word,
        json!({"user_id": alice_id, "email": ALICE.0, "by": "email_change"})
    );
    let (kind, fact) = client.next(&mut events).await;
    assert_eq!(kind, "EmailChangeRequested");
    assert_eq!(fact["user_id"], bob_id);
    assert!(
        fact.get("token").is_none() && fact.get("email").is_none(),
        "{fact}"
    );
    assert!(
        client.try_next(&mut events).await.is_none(),
        "one event each"
    );
    let (kind, requested) = client.next(&mut mails).await;
    assert_eq!(kind, "SendEmailConfirmation");
    assert_eq!(requested["email"], "robert@example.com");
    // Sealed for the mailer: the outbox and the stream never hold the token in the clear, and
    // the mail key opens it for this account and address only.
    let confirmation = client.token_of(&requested);
    assert!(requested.get("token").is_none(), "{requested}");
    assert!(
        !requested.to_string().contains(&confirmation),
        "{requested}"
    );
    let mut moved = requested.clone();
    moved["email"] = json!("mallory@example.com");
    assert!(client.open_token(&moved).is_err());
    assert!(
        client.try_next(&mut mails).await.is_none(),
        "the taken address is not sent a token"
    );
    assert_eq!(
        client.get("/me", token).await.body["email"],
        "bob@example.com"
    );

    let confirm = |token: String| client.post("/email/confirm", json!({ "token": token }));
    let confirmed = confirm(confirmation.clone()).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    assert_eq!(confirmed.body["email"], "robert@example.com");
    assert_eq!(client.next(&mut events).await.0, "EmailChanged");
    // A token confirms once; a made-up one, never.
    for (token, status) in [
        (confirmation, StatusCode::NOT_FOUND),
        ("x".repeat(43), StatusCode::NOT_FOUND),
        ("short".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let reply = confirm(token).await;
        assert_eq!(reply.status, status, "{}", reply.body);
    }
    client
        .login("robert@example.com", "a long enough password")
        .await;

    // An address taken between the request and the confirmation: the token's holder is told.
    change("carol@example.com").await;
    let (_, requested) = client.next(&mut mails).await;
    let carol = json!({"email": "carol@example.com", "password": "a long enough password", "name": "Carol"});
    assert_eq!(
        client.post("/register", carol).await.status,
        StatusCode::ACCEPTED
    );
    let late = confirm(client.token_of(&requested)).await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.body);
    assert_eq!(
        client.get("/me", token).await.body["email"],
        "robert@example.com"
    );

    // Wrong password and unknown account: the same 401, word for word.
    let wrong = client
        .post(
            "/login",
            json!({"email": "bob@example.com", "password": "not the password"}),
        )
        .await;
    let unknown = client
        .post(
            "/login",
            json!({"email": "nobody@example.com", "password": "not the password"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body, unknown.body);

    assert_eq!(
        client.call(Method::GET, "/me", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn bad_input_is_rejected_precisely(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let reply = client
        .post(
            "/register",
            json!({"email": "nope", "password": "short", "name": ""}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "name", "password"]);

    // Missing field, wrong type, unknown field: 422 from the JSON extractor.
    for body in [
        json!({"email": "a@b.co", "password": "a long enough password"}),
        json!({"email": 5, "password": "a long enough password", "name": "A"}),
        json!({"email": "a@b.co", "password": "a long enough password", "name": "A", "role": "admin"}),
    ] {
        assert_eq!(
            client.post("/register", body).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    let malformed = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body("{\"email\": ".into())
        .unwrap();
    let reply = client.raw(malformed).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );

    let no_type = Request::post("/login").body("{}".into()).unwrap();
    assert_eq!(
        client.raw(no_type).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );

    let huge = format!(
        "{{\"email\": \"{}\", \"password\": \"x\"}}",
        "a".repeat(2 << 20)
    );
    let oversized = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(huge.into())
        .unwrap();
    assert_eq!(
        client.raw(oversized).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // A password longer than 128 characters is refused before hashing.
    let long = client
        .post(
            "/register",
            json!({"email": "long@example.com", "password": "p".repeat(129), "name": "L"}),
        )
        .await;
    assert_eq!(long.body["errors"][0]["field"], "password");
}

async fn sql_metacharacters_are_stored_verbatim(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let name = "Robert'); DROP TABLE users;--";
    let email = "o'brien+x--@example.com";
    let reply = client
        .post(
            "/register",
            json!({"email": email, "password": "a long enough password", "name": name}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let (token, _) = client.login(email, "a long enough password").await;
    let me = client.get("/me", &token).await;
    assert_eq!(me.body["name"], name);
    assert_eq!(me.body["email"], email);
    // The table is still there, and so is everyone in it.
    client.login(ALICE.0, ALICE.1).await;
    let injected_login = client
        .post(
            "/login",
            json!({"email": "' OR '1'='1", "password": "' OR '1'='1"}),
        )
        .await;
    assert_eq!(injected_login.status, StatusCode::UNPROCESSABLE_ENTITY);
    let injected_login = client
        .post(
            "/login",
            json!({"email": "x'OR'1'='1@example.com", "password": "' OR '1'='1"}),
        )
        .await;
    assert_eq!(injected_login.status, StatusCode::UNAUTHORIZED);
}

/// The gateway retries a keyed POST whose answer it did not get: the service gives the first
/// answer again instead of seeing the refresh token used twice and revoking the login.
async fn a_retried_refresh_is_answered_again_not_taken_for_reuse(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let (_, first) = client.login(ALICE.0, ALICE.1).await;
    let refresh = || {
        shop_common::testing::call(
            &client.app,
            Method::POST,
            "/token/refresh",
            None,
            Some(json!({"refresh_token": first})),
            Some(("idempotency-key", "refresh-7f3a")),
        )
    };
    let sent = refresh().await;
    let retried = refresh().await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.headers["idempotent-replayed"], "true");
    assert_eq!(retried.body, sent.body);
    // The login lives on: its new refresh token works.
    let next = client
        .post(
            "/token/refresh",
            json!({"refresh_token": sent.body["refresh_token"]}),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
}

async fn refresh_rotates_and_reuse_revokes_the_family(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let (_, first) = client.login(ALICE.0, ALICE.1).await;
    let (_, other_login) = client.login(ALICE.0, ALICE.1).await;

    let rotated = client
        .post("/token/refresh", json!({"refresh_token": first}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let second = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(
        client
            .get("/me", rotated.body["access_token"].as_str().unwrap())
            .await
            .status,
        StatusCode::OK
    );

    // The first token again: reuse. Refused, and its whole family with it.
    let reused = client
        .post("/token/refresh", json!({"refresh_token": first}))
        .await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert!(
        reused.body["detail"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    let dead = client
        .post("/token/refresh", json!({"refresh_token": second}))
        .await;
    assert_eq!(dead.status, StatusCode::UNAUTHORIZED);
    // Another login's family is untouched.
    assert_eq!(
        client
            .post("/token/refresh", json!({"refresh_token": other_login}))
            .await
            .status,
        StatusCode::OK
    );

    for bad in [json!("forged"), json!("x".repeat(43)), json!("")] {
        let reply = client
            .post("/token/refresh", json!({"refresh_token": bad}))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
}

async fn logout_signs_out_the_login(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let (_, refresh) = client.login(ALICE.0, ALICE.1).await;
    let rotated = client
        .post("/token/refresh", json!({"refresh_token": refresh}))
        .await;
    let current = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        client
            .post("/logout", json!({"refresh_token": current}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        client
            .post("/token/refresh", json!({"refresh_token": current}))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Twice, or with nonsense: still 204.
    assert_eq!(
        client
            .post("/logout", json!({"refresh_token": current}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        client
            .post("/logout", json!({"refresh_token": "nonsense"}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

async fn admin_routes_need_the_admin_role(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let (alice, _) = client.login(ALICE.0, ALICE.1).await;
    let (admin, _) = client.login(ADMIN.0, ADMIN.1).await;
    let refused = client.get("/users", &alice).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers[header::WWW_AUTHENTICATE],
        "Bearer error=\"insufficient_scope\""
    );
    let page = client.get("/users?limit=1", &admin).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["total"], 2);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert!(page.body["items"][0].get("password_hash").is_none());
    assert_eq!(
        client.get("/users?limit=0", &admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client.get("/users?limit=ten", &admin).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client
            .call(Method::POST, "/admin/keys/rotate", Some(&alice), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

async fn keys_rotate_without_signing_anyone_out(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[])).await;
    let (before, _) = client.login(ALICE.0, ALICE.1).await;
    let (admin, _) = client.login(ADMIN.0, ADMIN.1).await;
    let jwks = client
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks.body["keys"][0]["alg"], "EdDSA");
    assert_eq!(jwks.headers[header::CACHE_CONTROL], "public, max-age=300");
    let old_kid = jwks.body["keys"][0]["kid"].as_str().unwrap().to_owned();

    let rotated = client
        .call(Method::POST, "/admin/keys/rotate", Some(&admin), None)
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_eq!(rotated.body["previous"], old_kid.as_str());
    let new_kid = rotated.body["kid"].as_str().unwrap().to_owned();

    let jwks = client
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    let kids: Vec<&str> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);

    // The token signed before still works; new tokens carry the new kid.
    assert_eq!(client.get("/me", &before).await.status, StatusCode::OK);
    let (after, _) = client.login(ALICE.0, ALICE.1).await;
    let header = mainstay_auth::jsonwebtoken::decode_header(&after).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(client.get("/me", &after).await.status, StatusCode::OK);

    // A restart on the same database serves the same keys and still honours both tokens.
    let restarted = Client::start(database, config(url, &[])).await;
    let jwks = restarted
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 2);
    assert_eq!(restarted.get("/me", &before).await.status, StatusCode::OK);
    assert_eq!(restarted.get("/me", &after).await.status, StatusCode::OK);
}

async fn logins_are_limited_per_account(database: &Database, url: &str) {
    let client = Client::start(database, config(url, &[("LOGIN_PER_ACCOUNT", "3/60")])).await;
    for _ in 0..3 {
        let reply = client
            .post(
                "/login",
                json!({"email": ALICE.0, "password": "guessing wrong"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    // The fourth guess, even with the right password, waits: the limit is on the account.
    let limited = client
        .post(
            "/login",
            json!({"email": "ALICE@example.com", "password": ALICE.1}),
        )
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers[header::RETRY_AFTER], "20");
    assert_eq!(
        limited.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    // Other accounts are not affected.
    client.login(ADMIN.0, ADMIN.1).await;
}

#[tokio::test]
async fn a_login_email_is_checked_before_it_keys_a_limit_or_a_lookup() {
    let database = sqlite().await;
    let client = Client::start(
        &database,
        config("sqlite::memory:", &[("LOGIN_PER_ACCOUNT", "1/60")]),
    )
    .await;
    let tracked = || client.users.login_limit_keys();
    let before = tracked();
    for size in [255, 100_000] {
        let reply = client
            .post(
                "/login",
                json!({"email": format!("{}@example.com", "a".repeat(size)), "password": "whatever guess"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.body["errors"][0]["field"], "email");
    }
    let reply = client
        .post(
            "/login",
            json!({"email": ALICE.0, "password": "p".repeat(600)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(tracked(), before, "an invalid login became a limiter key");

    // A valid one is limited, and its answers say how much is left (the draft's headers).
    let reply = client
        .post("/login", json!({"email": ALICE.0, "password": ALICE.1}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["ratelimit-policy"], r#""default";q=1;w=60"#);
    assert_eq!(reply.headers["ratelimit"], r#""default";r=0;t=60"#);
    assert_eq!(tracked(), before + 1);
}

#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    use axum::extract::connect_info::MockConnectInfo;
    let database = sqlite().await;
    let client = Client::start(
        &database,
        config("sqlite::memory:", &[("LOGIN_PER_IP", "2/60")]),
    )
    .await;
    let from = |ip: &str| {
        let address: std::net::IpAddr = ip.parse().unwrap();
        client
            .app
            .clone()
            .layer(MockConnectInfo(std::net::SocketAddr::new(address, 4000)))
    };
    // Two addresses of one /64 share its budget; another /64 has its own.
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::ffff"] {
        assert_eq!(
            login_via(&from(ip), "198.51.100.1").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_via(&from("2001:db8:1:2:abcd::9"), "198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_via(&from("2001:db8:1:3::1"), "198.51.100.1").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn registration_is_limited_per_address_and_tells_nobody_who_has_an_account() {
    use axum::extract::connect_info::MockConnectInfo;
    let database = sqlite().await;
    let client = Client::start(
        &database,
        config("sqlite::memory:", &[("REGISTER_PER_IP", "2/3600")]),
    )
    .await;
    let app = client
        .app
        .clone()
        .layer(MockConnectInfo(std::net::SocketAddr::from((
            [203, 0, 113, 7],
            4000,
        ))));
    let register = |email: &str| {
        let request = http::Request::post("/register")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({"email": email, "password": "a long enough password", "name": "Eve"})
                    .to_string(),
            ))
            .unwrap();
        shop_common::testing::send(&app, request)
    };
    // A taken email and a free one: the same status, body and headers a client can read.
    let mut events = client.watch(shop_users::events::SUBJECT).await;
    let hashed = client.users.passwords_hashed();
    let taken = register(ALICE.0).await;
    // The same work, on the same queue: a taken email is hashed too, so no timing tells.
    assert_eq!(client.users.passwords_hashed(), hashed + 1);
    let free = register("new@example.com").await;
    assert_eq!(client.users.passwords_hashed(), hashed + 2);
    // Alice is told by mail; the new account is announced.
    let (kind, payload) = client.next(&mut events).await;
    assert_eq!(kind, "AddressClaimAttempted");
    assert_eq!(payload["by"], "registration");
    assert_eq!(payload["email"], ALICE.0);
    let (kind, payload) = client.next(&mut events).await;
    assert_eq!(kind, "UserRegistered");
    assert_eq!(payload["email"], "new@example.com");
    assert_eq!(taken.status, StatusCode::ACCEPTED);
    assert_eq!((taken.status, &taken.body), (free.status, &free.body));
    let names = |reply: &Reply| {
        let mut names: Vec<String> = reply
            .headers
            .keys()
            .filter(|name| !name.as_str().starts_with("ratelimit"))
            .map(ToString::to_string)
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&taken), names(&free));
    // Alice's account is untouched.
    client.login(ALICE.0, ALICE.1).await;

    // The address's third registration within the hour is refused, before any work.
    let limited = register("third@example.com").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key("retry-after"));
    let login = client
        .post(
            "/login",
            json!({"email": "third@example.com", "password": "a long enough password"}),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_first_admin_gets_a_generated_password_unless_one_is_set() {
    // Unset: generated, so the documented one of old does not work.
    let database = sqlite().await;
    let mut generated = config("sqlite::memory:", &[]);
    generated.admin_password = None;
    let client = Client::start(&database, generated).await;
    let reply = client
        .post("/login", json!({"email": ADMIN.0, "password": ADMIN.1}))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Set: that one, and a restart keeps the account it made.
    let database = sqlite().await;
    let chosen = config(
        "sqlite::memory:",
        &[("ADMIN_PASSWORD", "a chosen admin password")],
    );
    let client = Client::start(&database, chosen.clone()).await;
    client.login(ADMIN.0, "a chosen admin password").await;
    let restarted = Client::start(&database, chosen).await;
    restarted.login(ADMIN.0, "a chosen admin password").await;
}

#[tokio::test]
async fn logins_are_limited_per_address() {
    use axum::extract::connect_info::MockConnectInfo;
    let database = sqlite().await;
    let client = Client::start(
        &database,
        config("sqlite::memory:", &[("LOGIN_PER_IP", "2/60")]),
    )
    .await;
    let app = client
        .app
        .clone()
        .layer(MockConnectInfo(std::net::SocketAddr::from((
            [203, 0, 113, 9],
            4000,
        ))));
    let client = Client { app, ..client };
    for email in ["a@example.com", "b@example.com"] {
        let reply = client
            .post(
                "/login",
                json!({"email": email, "password": "whatever guess"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let limited = client
        .post(
            "/login",
            json!({"email": "c@example.com", "password": "whatever guess"}),
        )
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let spoofed = login_via(&client.app, "198.51.100.1").await;
    assert_eq!(spoofed, StatusCode::TOO_MANY_REQUESTS);
}

/// A failed login as forwarded for `client` by whoever the app's peer is.
async fn login_via(app: &axum::Router, client: &str) -> StatusCode {
    let request = http::Request::post("/login")
        .header("content-type", "application/json")
        .header("x-forwarded-for", client)
        .body(axum::body::Body::from(
            json!({"email": "d@example.com", "password": "whatever guess"}).to_string(),
        ))
        .unwrap();
    shop_common::testing::send(app, request).await.status
}

#[tokio::test]
async fn behind_the_gateway_logins_are_limited_per_forwarded_client() {
    use axum::extract::connect_info::MockConnectInfo;
    let database = sqlite().await;
    let client = Client::start(
        &database,
        config("sqlite::memory:", &[("LOGIN_PER_IP", "1/60")]),
    )
    .await;
    // The gateway on loopback, trusted by default.
    let app = client
        .app
        .clone()
        .layer(MockConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            4000,
        ))));
    assert_eq!(
        login_via(&app, "203.0.113.1").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_via(&app, "203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same gateway has its own budget.
    assert_eq!(
        login_via(&app, "203.0.113.2").await,
        StatusCode::UNAUTHORIZED
    );
}

/// No caller makes the service mail without end: an account asks for few email changes, and an
/// address is mailed a few times an hour at most, whatever asks (a change, a registration).
#[tokio::test]
async fn email_changes_are_limited_per_account_and_mails_per_address() {
    let database = sqlite().await;
    let client = Client::start(
        &database,
        config(
            "sqlite::memory:",
            &[
                ("EMAIL_CHANGE_PER_ACCOUNT", "3/3600"),
                ("MAIL_PER_ADDRESS", "1/3600"),
            ],
        ),
    )
    .await;
    let (token, _) = client.login(ALICE.0, ALICE.1).await;
    let mut events = client.watch(shop_users::events::SUBJECT).await;
    let mut mails = client.watch(shop_users::events::MAIL_SUBJECT).await;
    let change = |email: &'static str| {
        client.call(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(json!({"email": email})),
        )
    };
    // The first request mails the address; the second is answered alike and mails nothing.
    for _ in 0..2 {
        let reply = change("target@example.com").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["pending_email"], "target@example.com");
    }
    assert_eq!(client.next(&mut mails).await.0, "SendEmailConfirmation");
    assert!(
        client.try_next(&mut mails).await.is_none(),
        "the address was mailed twice"
    );
    client.skip(&mut events).await;
    // A registration that would notify the same address's owner is throttled alike: the admin
    // was told once, by the first.
    let register = |email: &'static str| {
        client.post(
            "/register",
            json!({"email": email, "password": "a long enough password", "name": "Mallory"}),
        )
    };
    for _ in 0..2 {
        assert_eq!(register(ADMIN.0).await.status, StatusCode::ACCEPTED);
    }
    assert_eq!(client.next(&mut events).await.0, "AddressClaimAttempted");
    assert!(client.try_next(&mut events).await.is_none());

    // The account's third change is its last this hour; the fourth is refused, changing nothing.
    assert_eq!(change("other@example.com").await.status, StatusCode::OK);
    let refused = client
        .call(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(json!({"email": "third@example.com", "name": "Not applied"})),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(client.get("/me", &token).await.body["name"], "Alice");
    // A name alone is not limited.
    let renamed = client
        .call(
            Method::PATCH,
            "/me",
            Some(&token),
            Some(json!({"name": "Alicia"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK);
}
