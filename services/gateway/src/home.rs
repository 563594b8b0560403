//! `GET /api/v1/home`: products, the caller's cart and recommendations in one answer, each
//! part with its own timeout and fallback, so that one slow or failing service degrades the
//! page instead of failing it.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use mainstay_auth::Principal;
use serde::Serialize;
use serde_json::Value;
use tower::ServiceExt;

use crate::Gateway;

/// The home page's data.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Home {
    /// Featured products (the catalog's first page).
    #[schema(value_type = Vec<Object>)]
    products: Vec<Value>,
    /// The caller's cart; `null` when signed out or when the carts service did not answer.
    #[schema(value_type = Option<Object>)]
    cart: Option<Value>,
    /// Recommended products; the featured products when the recommendations service did not
    /// answer.
    #[schema(value_type = Vec<Object>)]
    recommendations: Vec<Value>,
    /// The parts that fell back, by name (`products`, `cart`, `recommendations`).
    degraded: Vec<&'static str>,
}

/// Part `part` of the page: a `GET` of `path` on `service` as JSON, within the part timeout.
/// A part that fails is logged and falls back.
async fn fetch(
    gateway: &Gateway,
    part: &'static str,
    (service, path): (&str, &str),
    authorization: Option<&HeaderValue>,
) -> Result<Value, String> {
    let mut request = http::Request::get(path)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, value.clone());
    }
    let call = async {
        // Cached where the service's routes are: the products part is the catalog's listing.
        let client = gateway
            .0
            .upstreams
            .client(service, true)
            .ok_or_else(|| format!("no client for {service}"))?;
        let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{service} answered {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    let result = tokio::time::timeout(gateway.0.home_part_timeout, call)
        .await
        .unwrap_or_else(|_| Err(format!("{service} did not answer in time")));
    if let Err(error) = &result {
        tracing::warn!(part, %error, "home page part fell back");
    }
    result
}

/// The list under `items`, or the value itself when it is a list.
fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        Value::Object(mut object) => match object.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The page, behind the gateway's admission (an open route: the caller's principal, when signed
/// in, is in the request).
pub(crate) async fn home(
    State(gateway): State<Gateway>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let principal = principal.as_ref().map(|Extension(principal)| principal);
    let authorization = headers.get(header::AUTHORIZATION);
    let products = fetch(
        &gateway,
        "products",
        ("catalog", "/products?per_page=8"),
        None,
    );
    let cart = async {
        match principal {
            Some(_) => Some(fetch(&gateway, "cart", ("carts", "/cart"), authorization).await),
            None => None, // signed out: no cart, and nothing fell back
        }
    };
    let recommendations = fetch(
        &gateway,
        "recommendations",
        ("recommendations", "/recommendations?limit=8"),
        authorization,
    );
    let (products, cart, recommendations) = tokio::join!(products, cart, recommendations);
    // In name order.
    let degraded = [
        ("cart", cart.as_ref().is_some_and(Result::is_err)),
        ("products", products.is_err()),
        ("recommendations", recommendations.is_err()),
    ]
    .into_iter()
    .filter_map(|(part, fell_back)| fell_back.then_some(part))
    .collect();
    let products = products.map(items).unwrap_or_default();
    let recommendations = recommendations.map_or_else(|_| products.clone(), items);
    let cart = cart.and_then(Result::ok);
    let home = Home {
        products,
        cart,
        recommendations,
        degraded,
    };
    let mut response = (StatusCode::OK, axum::Json(home)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    response
}
