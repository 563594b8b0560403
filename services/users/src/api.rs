//! The HTTP API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::header::{CACHE_CONTROL, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mainstay_auth::refresh::{self, RefreshError, RefreshStore, RefreshToken};
use mainstay_auth::{AccessClaims, JwtLayer, Principal, RequireRoleLayer, SigningKey};
use mainstay_resilience::http::{problem_response, set_rate_limit_headers};
use mainstay_resilience::rate_limit::Status;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_common::{FieldErrors, Json, Problem};
use shop_messaging::Outbox;

use crate::events::{
    AddressClaimAttempted, ClaimedBy, EmailChangeRequested, EmailChanged, SendEmailConfirmation,
    UserRegistered,
};
use crate::input;
use crate::store::{EmailChange, User, UserStore, Write};
use crate::{Users, stored};

type Reply = Result<Response, Refusal>;

/// The error side of a handler: a response, boxed so that `Result`s stay small.
struct Refusal(Box<Response>);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<Response> for Refusal {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Self {
        Self(Box::new(problem.into_response()))
    }
}

fn internal(error: &dyn std::error::Error) -> Refusal {
    Problem::internal(error).into()
}

/// A transaction on the service's database: for a change and the messages announcing it.
async fn begin(users: &Users) -> Result<shop_common::store::Tx, Refusal> {
    users
        .0
        .store
        .database()
        .begin()
        .await
        .map_err(|e| internal(&e))
}

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(users: Users) -> Router {
    let admin = Router::new()
        .route("/users", get(list_users))
        .route("/admin/keys/rotate", post(rotate_keys))
        .layer(RequireRoleLayer::new("admin"));
    let signed_in = Router::new()
        .route("/me", get(me).patch(update_me))
        .merge(admin)
        .layer(JwtLayer::new(users.0.validator.clone()));
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/token/refresh", post(refresh_tokens))
        .route("/logout", post(logout))
        .route("/email/confirm", post(confirm_email))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(signed_in)
        .with_state(users)
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Serialize)]
struct UserView {
    id: String,
    email: String,
    name: String,
    role: String,
    created_at: i64,
    /// An email change waiting for its confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_email: Option<String>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            role: user.role,
            created_at: user.created_at,
            pending_email: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    email: String,
    password: String,
    name: String,
}

/// What every registration is answered, whether or not the email had an account: the
/// answer must not tell an attacker which emails are registered (OWASP).
#[derive(Debug, Serialize)]
struct Registered {
    status: &'static str,
    detail: &'static str,
}

const REGISTERED: Registered = Registered {
    status: "accepted",
    detail: "if this email can be registered, its account is ready: sign in with the password \
             you chose",
};

fn registered(limit: &Status) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(REGISTERED)).into_response();
    set_rate_limit_headers(limit, response.headers_mut());
    response
}

/// The longest a registration waits for a hashing slot before it is answered 503.
const REGISTRATION_QUEUE: Duration = Duration::from_secs(2);

async fn register(
    State(users): State<Users>,
    ClientIp(peer): ClientIp,
    headers: axum::http::HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Reply {
    // Everything the client sent is checked before it keys a limit or a lookup.
    let mut errors = FieldErrors::new();
    let email = input::email(&body.email, &mut errors);
    let name = input::name(&body.name, &mut errors);
    input::password(&body.password, &mut errors);
    errors.check(
        StatusCode::UNPROCESSABLE_ENTITY,
        "the request has invalid fields",
    )?;
    let ip = shop_common::client_ip(peer, &headers, &users.0.config.trusted_proxies);
    let limit = users
        .0
        .register_per_ip
        .check(&shop_common::limit_key(ip))
        .map_err(|limited| {
            tracing::warn!(%ip, "registration limit per address reached");
            Refusal::from(problem_response::<axum::body::Body>(&limited))
        })?;

    // Registrations hash apart from logins: a flood of them queues here, not before a login.
    // A taken email queues the same, so that a flood tells nothing either.
    let Ok(Ok(_slot)) =
        tokio::time::timeout(REGISTRATION_QUEUE, users.0.registrations.acquire()).await
    else {
        let mut busy = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("too many registrations at once; try again shortly")
            .into_response();
        busy.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("2"));
        return Err(busy.into());
    };

    // A taken email is answered after the same work as a free one, a hash queued on the same
    // permits (a sleep of the typical hash time would leave out the queue behind logins, which
    // a caller could time); its owner is told (a mail), never the caller.
    if let Some(existing) = users
        .0
        .store
        .by_email(&email)
        .await
        .map_err(|e| internal(&e))?
    {
        let _discarded = users.0.passwords.hash(body.password).await;
        tracing::info!(user = %existing.id, "registration attempted for an existing account");
        if users.may_mail(&email, "AddressClaimAttempted") {
            let mut tx = begin(&users).await?;
            Outbox::enqueue(
                &mut tx,
                &AddressClaimAttempted {
                    user_id: existing.id,
                    email: email.clone(),
                    by: ClaimedBy::Registration,
                },
            )
            .await
            .map_err(|e| internal(&e))?;
            tx.commit().await.map_err(|e| internal(&e))?;
        }
        return Ok(registered(&limit));
    }

    let hash = users
        .0
        .passwords
        .hash(body.password)
        .await
        .map_err(|e| internal(&std::io::Error::other(e.to_string())))?;
    let now = shop_common::unix_seconds();
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        email,
        name,
        password_hash: hash,
        role: "customer".to_owned(),
        created_at: now,
        updated_at: now,
    };
    // The account and the event that announces it, in one transaction.
    let mut tx = begin(&users).await?;
    match UserStore::create_in(&mut tx, &user)
        .await
        .map_err(|e| internal(&e))?
    {
        Write::Done(user) => {
            Outbox::enqueue(
                &mut tx,
                &UserRegistered {
                    user_id: user.id.clone(),
                    email: user.email,
                    name: user.name,
                },
            )
            .await
            .map_err(|e| internal(&e))?;
            tx.commit().await.map_err(|e| internal(&e))?;
            tracing::info!(user = %user.id, "registered");
        }
        // Taken between the lookup and the insert: the same answer.
        Write::EmailTaken => {
            tracing::info!("registration attempted for an existing account");
        }
    }
    Ok(registered(&limit))
}

/// The connection's peer address, for the per-IP login limit (see `shop_common::client_ip`).
struct ClientIp(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // axum's own extractor, so that tests' `MockConnectInfo` is seen too.
        let ip = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(Self(ip))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

#[derive(Debug, Serialize)]
struct Tokens {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
}

fn scopes_of(role: &str) -> &'static [&'static str] {
    match role {
        "admin" => &[
            "profile",
            "orders:read",
            "orders:write",
            "carts:read",
            "carts:write",
            "catalog:write",
            "users:read",
            "ops",
        ],
        _ => &[
            "profile",
            "orders:read",
            "orders:write",
            "carts:read",
            "carts:write",
        ],
    }
}

fn tokens(users: &Users, user: &User, refresh_token: &RefreshToken) -> Reply {
    let claims = scopes_of(&user.role)
        .iter()
        .fold(AccessClaims::new(&user.id).role(&user.role), |c, s| {
            c.scope(*s)
        });
    let access = users.0.issuer.issue(&claims).map_err(|e| internal(&e))?;
    let body = Tokens {
        access_token: access.token,
        token_type: "Bearer",
        expires_in: access.expires_in.as_secs(),
        refresh_token: refresh_token.as_str().to_owned(),
    };
    // RFC 6749 §5.1: token responses must not be cached.
    Ok((
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response())
}

fn bad_credentials(limit: &Status) -> Refusal {
    let mut response = Problem::new(StatusCode::UNAUTHORIZED)
        .detail("invalid email or password")
        .into_response();
    set_rate_limit_headers(limit, response.headers_mut());
    response.into()
}

async fn login(
    State(users): State<Users>,
    ClientIp(peer): ClientIp,
    headers: axum::http::HeaderMap,
    Json(body): Json<LoginBody>,
) -> Reply {
    // The email keys a limit and a lookup: it is checked first (at most 254 bytes, RFC
    // 5321), so that no client can make either hold what it likes. A password longer than any
    // account can have is refused before it costs a hash.
    let mut errors = FieldErrors::new();
    let email = input::email(&body.email, &mut errors);
    if body.password.len() > input::MAX_PASSWORD_BYTES {
        errors.add("password", "must be at most 128 characters");
    }
    errors.check(
        StatusCode::UNPROCESSABLE_ENTITY,
        "the request has invalid fields",
    )?;
    // Behind the gateway the peer is the gateway: the client is in `X-Forwarded-For`.
    let ip = shop_common::client_ip(peer, &headers, &users.0.config.trusted_proxies);
    users
        .0
        .per_ip
        .check(&shop_common::limit_key(ip))
        .map_err(|limited| {
            tracing::warn!(%ip, "login limit per address reached");
            Refusal::from(problem_response::<axum::body::Body>(&limited))
        })?;
    let limit = users.0.per_account.check(&email).map_err(|limited| {
        tracing::warn!("login limit per account reached");
        Refusal::from(problem_response::<axum::body::Body>(&limited))
    })?;
    let user = users
        .0
        .store
        .by_email(&email)
        .await
        .map_err(|e| internal(&e))?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Unknown email or wrong password: the same work, the same answer.
    if !users.0.passwords.verify(body.password, hash).await {
        tracing::info!("login refused");
        return Err(bad_credentials(&limit));
    }
    let Some(user) = user else {
        return Err(bad_credentials(&limit));
    };
    let refresh_token = refresh::start_family(&users.0.store, &user.id, users.0.config.refresh_ttl)
        .await
        .map_err(|e| internal(&e))?;
    tracing::info!(user = %user.id, "logged in");
    let mut response = tokens(&users, &user, &refresh_token)?;
    set_rate_limit_headers(&limit, response.headers_mut());
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh_tokens(State(users): State<Users>, Json(body): Json<RefreshBody>) -> Reply {
    let unauthorized =
        |detail: &str| Refusal::from(Problem::new(StatusCode::UNAUTHORIZED).detail(detail));
    let (next, record) = match refresh::rotate(
        &users.0.store,
        &body.refresh_token,
        users.0.config.refresh_ttl,
    )
    .await
    {
        Ok(rotated) => rotated,
        Err(RefreshError::Invalid) => {
            return Err(unauthorized("the refresh token is invalid or expired"));
        }
        Err(RefreshError::Reused) => {
            return Err(unauthorized(
                "the refresh token was already used; every session of this login is signed out",
            ));
        }
        Err(RefreshError::Store(e)) => return Err(internal(&e)),
    };
    let user = users
        .0
        .store
        .by_id(&record.subject)
        .await
        .map_err(|e| internal(&e))?;
    let Some(user) = user else {
        return Err(unauthorized("the account no longer exists"));
    };
    tokens(&users, &user, &next)
}

async fn logout(State(users): State<Users>, Json(body): Json<RefreshBody>) -> Reply {
    use mainstay_auth::refresh::Consumed;
    if let Some(token) = RefreshToken::parse(&body.refresh_token) {
        let store = &users.0.store;
        let now = u64::try_from(shop_common::unix_seconds()).unwrap_or(0);
        match store
            .consume(&token.digest(), now)
            .await
            .map_err(|e| internal(&e))?
        {
            Consumed::Fresh(record) => {
                store
                    .revoke_family(&record.family)
                    .await
                    .map_err(|e| internal(&e))?;
            }
            Consumed::Reused(family) => {
                store
                    .revoke_family(&family)
                    .await
                    .map_err(|e| internal(&e))?;
            }
            Consumed::Invalid => {}
        }
    }
    // Idempotent: signing out twice, or with a dead token, is not an error.
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn current_user(users: &Users, principal: &Principal) -> Result<User, Refusal> {
    users
        .0
        .store
        .by_id(principal.subject())
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| Problem::not_found("the account no longer exists").into())
}

async fn me(State(users): State<Users>, principal: Principal) -> Reply {
    let user = current_user(&users, &principal).await?;
    Ok(Json(UserView::from(user)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default, deserialize_with = "shop_common::fields::present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "shop_common::fields::present")]
    email: Option<String>,
}

/// How long an email change waits for the new address's owner to confirm it.
const EMAIL_CHANGE_TTL: i64 = 24 * 3600;

/// `PATCH /me`: a new name applies at once; a new email waits for its confirmation by the
/// address's owner (`POST /email/confirm`), and the answer is the same whether or not the
/// address has an account, so that no caller learns who has one.
async fn update_me(
    State(users): State<Users>,
    principal: Principal,
    Json(body): Json<UpdateBody>,
) -> Reply {
    if body.name.is_none() && body.email.is_none() {
        return Err(Problem::unprocessable("nothing to change: give name or email").into());
    }
    let mut errors = FieldErrors::new();
    let name = body.name.as_deref().map(|n| input::name(n, &mut errors));
    let email = body.email.as_deref().map(|e| input::email(e, &mut errors));
    errors.check(
        StatusCode::UNPROCESSABLE_ENTITY,
        "the request has invalid fields",
    )?;
    let mut user = current_user(&users, &principal).await?;
    // Each request may mail an address: an account makes few of them, and the whole request
    // is refused before anything changes.
    let wants_email_change = email.as_ref().is_some_and(|email| *email != user.email);
    if wants_email_change && let Err(limited) = users.0.email_changes.check(&user.id) {
        return Err(Refusal::from(problem_response::<axum::body::Body>(
            &limited,
        )));
    }
    let now = shop_common::unix_seconds();
    if let Some(name) = name {
        user = users
            .0
            .store
            .rename(&user.id, &name, now)
            .await
            .map_err(|e| internal(&e))?
            .ok_or_else(|| Refusal::from(Problem::not_found("the account no longer exists")))?;
    }
    let pending = email.filter(|email| *email != user.email);
    if let Some(email) = &pending {
        request_email_change(&users, &user, email, now).await?;
    }
    let mut view = UserView::from(user);
    view.pending_email = pending;
    Ok(Json(view).into_response())
}

/// Starts a change of `user`'s email to `email`: a token mailed to a free address, or a word to
/// the owner of a taken one.
async fn request_email_change(
    users: &Users,
    user: &User,
    email: &str,
    now: i64,
) -> Result<(), Refusal> {
    let owner = users
        .0
        .store
        .by_email(email)
        .await
        .map_err(|e| internal(&e))?;
    // Both paths replace the user's pending change with a new one, at the same cost: a taken
    // address gets a token nobody is sent, so neither the old token's fate nor the time taken
    // tells the caller whether the address has an account.
    let token = RefreshToken::generate();
    let expires_at = now + EMAIL_CHANGE_TTL;
    // The pending change and the messages about it, in one transaction.
    let mut tx = begin(users).await?;
    UserStore::request_email_change_in(&mut tx, &token.digest(), &user.id, email, expires_at, now)
        .await
        .map_err(|e| internal(&e))?;
    // The fact, alike for a taken address and a free one.
    Outbox::enqueue(
        &mut tx,
        &EmailChangeRequested {
            user_id: user.id.clone(),
            expires_at,
        },
    )
    .await
    .map_err(|e| internal(&e))?;
    if let Some(owner) = owner {
        tracing::info!(user = %user.id, owner = %owner.id, "email change to a taken address");
        if users.may_mail(email, "AddressClaimAttempted") {
            Outbox::enqueue(
                &mut tx,
                &AddressClaimAttempted {
                    user_id: owner.id,
                    email: email.to_owned(),
                    by: ClaimedBy::EmailChange,
                },
            )
            .await
            .map_err(|e| internal(&e))?;
        }
    } else {
        tracing::info!(user = %user.id, "email change requested");
        // The token only to the mailer, as a command, sealed for it.
        if users.may_mail(email, "SendEmailConfirmation") {
            Outbox::enqueue(
                &mut tx,
                &SendEmailConfirmation {
                    user_id: user.id.clone(),
                    email: email.to_owned(),
                    sealed_token: users.seal_token(token.as_str(), &user.id, email),
                    expires_at,
                },
            )
            .await
            .map_err(|e| internal(&e))?;
        }
    }
    tx.commit().await.map_err(|e| internal(&e))?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    token: String,
}

/// `POST /email/confirm`: the new address's owner confirms an email change with the token
/// mailed there. No bearer token: the mail may be opened anywhere.
async fn confirm_email(State(users): State<Users>, Json(body): Json<ConfirmBody>) -> Reply {
    let token = RefreshToken::parse(&body.token).ok_or_else(|| {
        Refusal::from(Problem::bad_request(
            "a confirmation token is 43 characters of base64url",
        ))
    })?;
    let change = confirm(&users, &token.digest()).await?;
    match change {
        EmailChange::Changed(user) => {
            tracing::info!(user = %user.id, "email changed");
            Ok(Json(UserView::from(user)).into_response())
        }
        EmailChange::Unknown => Err(Problem::not_found(
            "no email change waits for this token: it was used, replaced or has expired",
        )
        .into()),
        // Only the address's owner holds the token: telling them is no leak.
        EmailChange::Taken => {
            Err(Problem::conflict("another account took this address meanwhile").into())
        }
    }
}

/// Spends the token of `digest` and applies its change, with the event that announces it, in
/// one transaction. A race lost to another account for the address (PostgreSQL's unique
/// violation, which spoils the transaction) is run again, and then answers `Taken`.
async fn confirm(users: &Users, digest: &str) -> Result<EmailChange, Refusal> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = begin(users).await?;
        let change =
            match UserStore::confirm_email_change_in(&mut tx, digest, shop_common::unix_seconds())
                .await
            {
                Ok(change) => change,
                Err(error) if attempt == 1 && crate::store::unique_violation(&error) => continue,
                Err(error) => return Err(internal(&error)),
            };
        if let EmailChange::Changed(user) = &change {
            Outbox::enqueue(
                &mut tx,
                &EmailChanged {
                    user_id: user.id.clone(),
                    email: user.email.clone(),
                },
            )
            .await
            .map_err(|e| internal(&e))?;
        }
        tx.commit().await.map_err(|e| internal(&e))?;
        return Ok(change);
    }
}

async fn jwks(State(users): State<Users>) -> Response {
    (
        [(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        )],
        Json(users.0.issuer.jwks()),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_users(
    State(users): State<Users>,
    page: Result<Query<Page>, QueryRejection>,
) -> Reply {
    let Query(page) = page.map_err(|r| Refusal::from(Problem::bad_request(r.body_text())))?;
    let limit = page.limit.unwrap_or(50);
    let offset = page.offset.unwrap_or(0);
    let mut errors = FieldErrors::new();
    if !(1..=100).contains(&limit) {
        errors.add("limit", "must be from 1 to 100");
    }
    if offset < 0 {
        errors.add("offset", "must not be negative");
    }
    errors.check(StatusCode::BAD_REQUEST, "invalid paging parameters")?;
    let (items, total) = users
        .0
        .store
        .list(limit, offset)
        .await
        .map_err(|e| internal(&e))?;
    let items: Vec<UserView> = items.into_iter().map(UserView::from).collect();
    Ok(
        Json(json!({"items": items, "total": total, "limit": limit, "offset": offset}))
            .into_response(),
    )
}

async fn rotate_keys(State(users): State<Users>, principal: Principal) -> Reply {
    let next = SigningKey::generate(users.0.config.algorithm)
        .map_err(|e| internal(&std::io::Error::other(e.to_string())))?;
    let previous = users.0.issuer.current();
    let retire_at = shop_common::unix_seconds()
        + i64::try_from(users.0.issuer.ttl().as_secs() + 60).unwrap_or(i64::MAX);
    // Stored first: a crash between the two steps leaves the database ahead, and a restart
    // loads what it says.
    users
        .0
        .store
        .rotate_key(&stored(&next, &users.0.kek), retire_at)
        .await
        .map_err(|e| internal(&e))?;
    users.0.issuer.rotate(next.clone());
    let _ = users.0.jwks.refresh().await;
    tracing::info!(
        by = principal.subject(),
        kid = next.kid(),
        previous = previous.kid(),
        "signing key rotated"
    );
    Ok(Json(json!({
        "kid": next.kid(),
        "previous": previous.kid(),
        "previous_retires_at": retire_at,
    }))
    .into_response())
}
