//! The `OpenAPI` description of the public API (`/api/v1/openapi.json`) and Swagger UI over it
//! (`/docs`).
//!
//! The gateway proxies most routes, so the operations below are described by functions that
//! are never called: they exist for `utoipa` to read.
#![allow(dead_code, reason = "the functions here only describe proxied routes")]

use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::home::Home;

/// An RFC 9457 problem: every error of the API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    kind: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong with this request.
    detail: Option<String>,
}

/// Credentials.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Credentials {
    /// The account's email address.
    email: String,
    /// The password (at least 12 characters at registration).
    password: String,
}

/// Tokens issued at login and refresh.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Tokens {
    /// A JWT for `Authorization: Bearer`.
    access_token: String,
    /// Exchanged once for new tokens at `/api/v1/auth/token/refresh`.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds until the access token expires.
    expires_in: u64,
}

/// A product.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Product {
    /// Its id (a slug).
    id: String,
    /// Its name.
    name: String,
    /// A sentence or two about it.
    description: String,
    /// Its category's id.
    category_id: String,
    /// Its price in minor units of `currency`.
    price_minor: i64,
    /// ISO 4217 currency code.
    currency: String,
    /// Units in stock.
    stock: i64,
    /// Incremented by every change (the `ETag` is `"<id>-<version>"`).
    version: i64,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds.
    updated_at: i64,
}

/// A page of products.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ProductPage {
    /// The products of this page.
    items: Vec<Product>,
    /// Products matching the filters, all pages together.
    total: i64,
    /// The page number, from 1.
    page: i64,
    /// Products per page.
    per_page: i64,
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials,
    responses((status = 202, description = "Accepted: the same answer whether or not the email had an account"),
              (status = 422, description = "Invalid fields", body = Problem),
              (status = 429, description = "Too many registrations from this address", body = Problem),
              (status = 503, description = "Too many registrations at once", body = Problem)))]
fn register() {}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, description = "Signed in", body = Tokens),
              (status = 401, description = "Wrong email or password", body = Problem),
              (status = 429, description = "Too many attempts", body = Problem)))]
fn login() {}

#[utoipa::path(post, path = "/api/v1/auth/token/refresh", tag = "auth",
    responses((status = 200, description = "New tokens", body = Tokens),
              (status = 401, description = "Unknown, expired or reused refresh token", body = Problem)))]
fn refresh() {}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "Signed out")))]
fn logout() {}

#[utoipa::path(get, path = "/api/v1/auth/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The public keys tokens are signed with")))]
fn jwks() {}

#[utoipa::path(get, path = "/api/v1/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The caller's profile"),
              (status = 401, description = "No valid token", body = Problem)))]
fn me() {}

#[utoipa::path(get, path = "/api/v1/products", tag = "catalog",
    params(("page" = Option<i64>, Query, description = "Page number, from 1"),
           ("per_page" = Option<i64>, Query, description = "1 to 100 (default 20)"),
           ("category" = Option<String>, Query, description = "Only this category"),
           ("min_price" = Option<i64>, Query, description = "Lowest price, minor units"),
           ("max_price" = Option<i64>, Query, description = "Highest price, minor units"),
           ("sort" = Option<String>, Query, description = "`name`, `price`, `-price`, `newest`")),
    responses((status = 200, description = "A page of products", body = ProductPage),
              (status = 400, description = "A bad parameter", body = Problem)))]
fn products() {}

#[utoipa::path(get, path = "/api/v1/products/search", tag = "catalog",
    params(("q" = String, Query, description = "Words to search for")),
    responses((status = 200, description = "Matching products"),
              (status = 400, description = "No usable search text", body = Problem)))]
fn search() {}

#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "The product's id")),
    responses((status = 200, description = "The product", body = Product),
              (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
              (status = 404, description = "No such product", body = Problem)))]
fn product() {}

#[utoipa::path(get, path = "/api/v1/categories", tag = "catalog",
    responses((status = 200, description = "Every category, with its product count")))]
fn categories() {}

#[utoipa::path(get, path = "/api/v1/cart", tag = "carts", security(("bearer" = [])),
    responses((status = 200, description = "The caller's cart"),
              (status = 401, description = "No valid token", body = Problem),
              (status = 503, description = "The carts service has no endpoint", body = Problem)))]
fn cart() {}

#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])),
    responses((status = 200, description = "The caller's orders"),
              (status = 401, description = "No valid token", body = Problem)))]
fn orders() {}

#[utoipa::path(post, path = "/api/v1/checkout", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "One order per key")),
    responses((status = 202, description = "Checkout started"),
              (status = 401, description = "No valid token", body = Problem)))]
fn checkout() {}

#[utoipa::path(get, path = "/api/v1/home", tag = "gateway",
    responses((status = 200, description = "Products, cart and recommendations; `degraded` names the parts that fell back", body = Home),
              (status = 401, description = "A token was sent and is not valid", body = Problem),
              (status = 429, description = "Rate limited", body = Problem)))]
fn home() {}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The public API.
#[derive(OpenApi)]
#[openapi(
    info(title = "mainstay shop", description = "The public API of the mainstay commerce system, served by its gateway. Errors are RFC 9457 problems (`application/problem+json`): 4xx for the caller's mistakes, 502 when a service failed to answer, 503 when it has no healthy endpoint or is shedding load, 504 when it answered too late."),
    paths(register, login, refresh, logout, jwks, me, products, search, product, categories, cart, orders, checkout, home),
    components(schemas(Problem, Credentials, Tokens, Product, ProductPage, Home)),
    modifiers(&BearerAuth),
)]
pub(crate) struct ApiDoc;

/// `/api/v1/openapi.json` and Swagger UI at `/docs`.
pub(crate) fn routes() -> Router {
    SwaggerUi::new("/docs")
        .url("/api/v1/openapi.json", ApiDoc::openapi())
        .into()
}
