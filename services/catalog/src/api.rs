//! The HTTP API.

use std::future::Future;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use mainstay_auth::{JwtLayer, RequireRoleLayer};
use serde::Deserialize;
use serde_json::{Value, json};
use shop_common::{FieldErrors, Json, Problem};
use shop_messaging::Outbox;
use shop_messaging::contracts::ProductPriceChanged;

use crate::Catalog;
use crate::store::{CatalogStore, Listing, Product, Sort, Write};

/// The API routes, without the server stack (see `shop_common::Kit::stack`).
pub fn router(catalog: Catalog) -> Router {
    let admin = |router: axum::routing::MethodRouter<Catalog>| {
        router
            .layer::<_, std::convert::Infallible>(RequireRoleLayer::new("admin"))
            .layer::<_, std::convert::Infallible>(JwtLayer::new(catalog.0.validator.clone()))
    };
    Router::new()
        .route("/categories", get(categories))
        .route(
            "/products",
            get(list).merge(admin(axum::routing::post(create))),
        )
        .route("/products/search", get(search))
        .route(
            "/products/{id}",
            get(product).merge(admin(axum::routing::put(update).delete(delete))),
        )
        .route(
            "/product-views/{id}",
            axum::routing::post(viewed).layer::<_, std::convert::Infallible>(
                JwtLayer::new(catalog.0.validator.clone()).optional(),
            ),
        )
        .with_state(catalog)
}

fn internal(error: &dyn std::error::Error) -> Problem {
    Problem::internal(error)
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| Problem::bad_request(rejection.body_text()))
}

async fn categories(State(catalog): State<Catalog>) -> Result<Response, Problem> {
    let categories = catalog
        .0
        .store
        .categories()
        .await
        .map_err(|e| internal(&e))?;
    Ok(Json(categories).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    page: Option<i64>,
    per_page: Option<i64>,
    category: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    sort: Option<Sort>,
}

fn slug_ok(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

async fn list(
    State(catalog): State<Catalog>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let params = query(params)?;
    let page = params.page.unwrap_or(1);
    let per_page = params.per_page.unwrap_or(20);
    let mut errors = FieldErrors::new();
    if page < 1 {
        errors.add("page", "must be 1 or more");
    }
    if !(1..=100).contains(&per_page) {
        errors.add("per_page", "must be from 1 to 100");
    }
    if params.min_price.is_some_and(|p| p < 0) {
        errors.add("min_price", "must not be negative");
    }
    if params.max_price.is_some_and(|p| p < 0) {
        errors.add("max_price", "must not be negative");
    }
    // A minimum above the maximum is a valid question with no answer: an empty page.
    if params.category.as_deref().is_some_and(|c| !slug_ok(c)) {
        errors.add("category", "must be a category id such as kitchen");
    }
    errors.check(StatusCode::BAD_REQUEST, "invalid listing parameters")?;
    let listing = Listing {
        category: params.category,
        min_price: params.min_price,
        max_price: params.max_price,
        sort: params.sort.unwrap_or(Sort::Name),
        limit: per_page,
        offset: (page - 1).saturating_mul(per_page),
    };
    let key = format!("list:{listing:?}");
    let store = catalog.0.store.clone();
    let body = cached_page(&catalog, key, async move {
        let (items, total) = store.list(&listing).await?;
        Ok(json!({"items": items, "total": total, "page": page, "per_page": per_page}))
    })
    .await?;
    Ok(json_body(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    q: Option<String>,
    limit: Option<i64>,
}

async fn search(
    State(catalog): State<Catalog>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let params = query(params)?;
    let q = params.q.unwrap_or_default();
    let limit = params.limit.unwrap_or(20);
    let mut errors = FieldErrors::new();
    let words = q.trim();
    if q.chars().count() > 100 || !shop_common::fields::visible_text_ok(&q) {
        errors.add(
            "q",
            "must be 1 to 100 characters, not all white space, no control characters",
        );
    }
    if !(1..=50).contains(&limit) {
        errors.add("limit", "must be from 1 to 50");
    }
    errors.check(StatusCode::BAD_REQUEST, "invalid search parameters")?;
    let key = format!("search:{limit}:{words}");
    let (store, words) = (catalog.0.store.clone(), words.to_owned());
    let body = cached_page(&catalog, key, async move {
        let items = store.search(&words, limit).await?;
        Ok(json!({"items": items, "query": words}))
    })
    .await?;
    Ok(json_body(body))
}

/// A page from the page cache, or from `load` (once, however many ask at the same time).
async fn cached_page(
    catalog: &Catalog,
    key: String,
    load: impl Future<Output = Result<Value, shop_common::store::StoreError>> + Send + 'static,
) -> Result<Bytes, Problem> {
    catalog
        .0
        .pages
        .get_or_load(&key, move || async move {
            let page = load.await?;
            Ok::<_, shop_common::store::StoreError>(Some(Bytes::from(page.to_string())))
        })
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| Problem::internal(&std::io::Error::other("a page load returned nothing")))
}

/// A cached page as the response body: shared with the cache, not copied. Shared caches (the
/// gateway's) may keep it as long as this service's own page cache does.
fn json_body(body: Bytes) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("public, max-age=5")),
        ],
        body,
    )
        .into_response()
}

fn etag(product: &Product) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}-{}\"", product.id, product.version))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// The product `id`, through the cache; 404 when there is none.
async fn found(catalog: &Catalog, id: &str) -> Result<Product, Problem> {
    let store = catalog.0.store.clone();
    let key = id.to_owned();
    catalog
        .0
        .products
        .get_or_load(&key.clone(), move || async move { store.get(&key).await })
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| Problem::not_found(format!("no product {id:?}")))
}

/// A view of a product: counted once the product is known to exist (through the cache).
async fn viewed(
    State(catalog): State<Catalog>,
    Path(id): Path<String>,
    principal: Option<axum::Extension<mainstay_auth::Principal>>,
) -> Result<Response, Problem> {
    if !slug_ok(&id) {
        return Err(Problem::not_found(format!("no product {id:?}")));
    }
    found(&catalog, &id).await?;
    let user = principal.as_ref().map(|p| p.0.subject());
    catalog
        .0
        .views
        .record(&id, user, shop_common::unix_millis());
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn product(
    State(catalog): State<Catalog>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if id.len() > 64 {
        return Err(Problem::not_found(format!("no product {id:?}")));
    }
    let product = found(&catalog, &id).await?;
    let tag = etag(&product);
    let cache_control = HeaderValue::from_static("public, max-age=10");
    if headers.get(IF_NONE_MATCH).is_some_and(|v| v == tag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(ETAG, tag), (CACHE_CONTROL, cache_control)],
        )
            .into_response());
    }
    Ok(([(ETAG, tag), (CACHE_CONTROL, cache_control)], Json(product)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductInput {
    #[serde(default, deserialize_with = "shop_common::fields::present")]
    id: Option<String>,
    name: String,
    description: String,
    category_id: String,
    #[serde(deserialize_with = "shop_common::fields::whole_number")]
    price_minor: i64,
    currency: String,
}

/// The product a valid input describes, or a 422 listing every bad field.
fn validated(
    input: ProductInput,
    id: String,
    version: i64,
    created_at: i64,
) -> Result<Product, Problem> {
    let mut errors = FieldErrors::new();
    let name = input.name.trim().to_owned();
    if input.name.chars().count() > 200 || !shop_common::fields::visible_text_ok(&input.name) {
        errors.add(
            "name",
            "must be 1 to 200 characters, not all white space, no control characters",
        );
    }
    if input.description.chars().count() > 5_000 {
        errors.add("description", "must be at most 5,000 characters");
    }
    if !slug_ok(&input.category_id) {
        errors.add("category_id", "must be a category id such as kitchen");
    }
    if !(0..=1_000_000_000_000).contains(&input.price_minor) {
        errors.add(
            "price_minor",
            "must be a whole number of minor units from 0 to 10^12",
        );
    }
    if shop_common::domain::Currency::new(&input.currency).is_err() {
        errors.add("currency", "must be an ISO 4217 code such as EUR");
    }
    if !slug_ok(&id) {
        errors.add(
            "id",
            "must be 1 to 64 lower-case letters, digits or hyphens",
        );
    }
    errors.check(
        StatusCode::UNPROCESSABLE_ENTITY,
        "the product has invalid fields",
    )?;
    let now = shop_common::unix_seconds();
    Ok(Product {
        id,
        name,
        description: input.description,
        category_id: input.category_id,
        price_minor: input.price_minor,
        currency: input.currency,
        version,
        created_at,
        updated_at: now,
    })
}

/// A well-formed category id that names no category: the request is valid, and conflicts
/// with the catalog as it is (409, with the field named).
fn unknown_category() -> Problem {
    let mut errors = FieldErrors::new();
    errors.add("category_id", "no such category");
    errors
        .check(
            StatusCode::CONFLICT,
            "the product names no existing category",
        )
        .err()
        .unwrap_or_else(|| Problem::conflict("the product names no existing category"))
}

async fn create(
    State(catalog): State<Catalog>,
    Json(input): Json<ProductInput>,
) -> Result<Response, Problem> {
    let id = input
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let product = validated(input, id, 1, shop_common::unix_seconds())?;
    match catalog
        .0
        .store
        .create(&product)
        .await
        .map_err(|e| internal(&e))?
    {
        Write::Done(product) => {
            // A 404 for this id may be remembered: forget it.
            catalog.0.products.invalidate(&product.id).await;
            catalog.0.pages.invalidate_local();
            let location = HeaderValue::from_str(&format!("/products/{}", product.id))
                .unwrap_or_else(|_| HeaderValue::from_static("/products"));
            Ok((StatusCode::CREATED, [(LOCATION, location)], Json(product)).into_response())
        }
        Write::UnknownCategory => Err(unknown_category()),
        Write::Exists => Err(Problem::conflict(format!(
            "product {:?} exists",
            product.id
        ))),
    }
}

async fn update(
    State(catalog): State<Catalog>,
    Path(id): Path<String>,
    Json(input): Json<ProductInput>,
) -> Result<Response, Problem> {
    if input.id.as_ref().is_some_and(|body_id| *body_id != id) {
        return Err(Problem::conflict("the body's id differs from the path's"));
    }
    let before = catalog.0.store.get(&id).await.map_err(|e| internal(&e))?;
    let Some(before) = before else {
        return Err(Problem::not_found(format!("no product {id:?}")));
    };
    let product = validated(input, id, before.version, before.created_at)?;
    // The change and the event that announces it commit together, or neither does.
    let mut tx = catalog
        .0
        .store
        .database()
        .begin()
        .await
        .map_err(|e| internal(&e))?;
    let (before, updated) = match CatalogStore::update_in(&mut tx, &product)
        .await
        .map_err(|e| internal(&e))?
    {
        Write::Done(Some(changed)) => changed,
        Write::Done(None) => {
            return Err(Problem::not_found(format!("no product {:?}", product.id)));
        }
        Write::UnknownCategory => return Err(unknown_category()),
        Write::Exists => return Err(Problem::conflict("conflicting product")),
    };
    if before.price_minor != updated.price_minor || before.currency != updated.currency {
        let event = ProductPriceChanged {
            product_id: updated.id.clone(),
            old_price_minor: before.price_minor,
            new_price_minor: updated.price_minor,
            currency: updated.currency.clone(),
            version: updated.version,
        };
        Outbox::enqueue(&mut tx, &event)
            .await
            .map_err(|e| internal(&e))?;
    }
    tx.commit().await.map_err(|e| internal(&e))?;
    catalog.0.products.invalidate(&updated.id).await;
    catalog.0.pages.invalidate_local();
    Ok(Json(updated).into_response())
}

async fn delete(
    State(catalog): State<Catalog>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    if !catalog
        .0
        .store
        .delete(&id)
        .await
        .map_err(|e| internal(&e))?
    {
        return Err(Problem::not_found(format!("no product {id:?}")));
    }
    catalog.0.products.invalidate(&id).await;
    catalog.0.pages.invalidate_local();
    Ok(StatusCode::NO_CONTENT.into_response())
}
