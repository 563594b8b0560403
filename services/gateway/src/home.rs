//! `GET /api/v1/home`: products, the caller's cart and recommendations in one answer, each
//! part with its own timeout and fallback, so that one slow or failing service degrades the
//! page instead of failing it.

use std::future::Future;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::Value;
use tower::ServiceExt;

use crate::{Access, Gateway, peer};

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

/// A `GET` of `path` on `service` as JSON, within the part timeout.
async fn fetch(
    gateway: &Gateway,
    service: &str,
    path: &str,
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
        let response = gateway
            .upstream(service)
            .oneshot(request)
            .await
            .map_err(|e| e.to_string())?;
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
    tokio::time::timeout(gateway.0.home_part_timeout, call)
        .await
        .map_err(|_| format!("{service} did not answer in time"))?
}

/// A part's value, or its fallback with the part's name recorded as degraded.
async fn part<T>(
    name: &'static str,
    degraded: &std::sync::Mutex<Vec<&'static str>>,
    fetch: impl Future<Output = Result<T, String>>,
) -> Option<T> {
    match fetch.await {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::warn!(part = name, %error, "home page part fell back");
            degraded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(name);
            None
        }
    }
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

pub(crate) async fn home(State(gateway): State<Gateway>, request: Request) -> Response {
    let client = gateway.client_ip(peer(&request), request.headers());
    let principal = match gateway
        .authenticate(request.headers(), Access::Open, client)
        .await
    {
        Ok(principal) => principal,
        Err(refusal) => return *refusal,
    };
    if let Err(limited) = gateway.rate_limit(principal.as_ref(), client) {
        return *limited;
    }
    let authorization = request.headers().get(header::AUTHORIZATION);
    let degraded = std::sync::Mutex::new(Vec::new());
    let products = part(
        "products",
        &degraded,
        fetch(&gateway, "catalog", "/products?per_page=8", None),
    );
    let cart = async {
        if principal.is_some() {
            part(
                "cart",
                &degraded,
                fetch(&gateway, "carts", "/cart", authorization),
            )
            .await
        } else {
            None
        }
    };
    let recommendations = part(
        "recommendations",
        &degraded,
        fetch(
            &gateway,
            "recommendations",
            "/recommendations?limit=8",
            authorization,
        ),
    );
    let (products, cart, recommendations) = tokio::join!(products, cart, recommendations);
    let products = products.map(items).unwrap_or_default();
    let recommendations = recommendations.map_or_else(|| products.clone(), items);
    let mut degraded = degraded
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    degraded.sort_unstable();
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
