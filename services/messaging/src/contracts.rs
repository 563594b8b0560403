//! The messages services exchange: their names, versions, subjects and keys, in one place
//! (ARCHITECTURE.md §4). A producer enqueues one; a consumer decodes it with
//! [`Inbound::decode`](crate::Inbound::decode).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// The catalog's events.
pub const CATALOG_EVENTS: &str = "catalog.events";

/// A product's price changed (written by the catalog in the transaction of the change). Caches
/// of the product drop it; carts show the new price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPriceChanged {
    /// The product.
    pub product_id: String,
    /// The price before, in minor units of `currency`.
    pub old_price_minor: i64,
    /// The price now, in minor units of `currency`.
    pub new_price_minor: i64,
    /// ISO 4217 code of the price now.
    pub currency: String,
    /// The product's version after the change.
    pub version: i64,
}

impl Message for ProductPriceChanged {
    const KIND: &'static str = "ProductPriceChanged";
    const VERSION: u16 = 1;

    fn subject(&self) -> Cow<'static, str> {
        Cow::Borrowed(CATALOG_EVENTS)
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.product_id)
    }
}
