//! The demo catalog: 6 categories, 120 products. (Stock is the inventory service's: it will
//! seed `kitchen-000`, the Copper Kettle, with none on hand, for the out-of-stock demo.)

use crate::store::{Category, Product};

const CATEGORIES: [(&str, &str, [&str; 5]); 6] = [
    (
        "kitchen",
        "Kitchen",
        ["Kettle", "Teapot", "Skillet", "Chef Knife", "Cutting Board"],
    ),
    (
        "garden",
        "Garden",
        ["Watering Can", "Trowel", "Pruner", "Planter", "Hose"],
    ),
    (
        "books",
        "Books",
        [
            "Atlas",
            "Cookbook",
            "Novel",
            "Field Guide",
            "Poetry Collection",
        ],
    ),
    (
        "toys",
        "Toys",
        ["Kite", "Puzzle", "Wooden Train", "Yo-yo", "Building Blocks"],
    ),
    (
        "electronics",
        "Electronics",
        ["Headphones", "Desk Lamp", "Speaker", "Charger", "Radio"],
    ),
    (
        "outdoor",
        "Outdoor",
        ["Tent", "Backpack", "Lantern", "Hammock", "Water Bottle"],
    ),
];

const MATERIALS: [&str; 4] = ["Copper", "Oak", "Steel", "Linen"];

/// The categories.
#[must_use]
pub fn categories() -> Vec<Category> {
    CATEGORIES
        .iter()
        .map(|(id, name, _)| Category {
            id: (*id).to_owned(),
            name: (*name).to_owned(),
        })
        .collect()
}

/// The products, with ids `<category>-000` to `<category>-019`.
#[must_use]
pub fn products(now: i64) -> Vec<Product> {
    let mut products = Vec::new();
    for (c, (category, _, items)) in CATEGORIES.iter().enumerate() {
        for (n, (material, item)) in MATERIALS
            .iter()
            .flat_map(|m| items.iter().map(move |i| (m, i)))
            .enumerate()
        {
            let id = format!("{category}-{n:03}");
            let seed = i64::try_from(c * 20 + n).unwrap_or(0);
            products.push(Product {
                description: format!(
                    "A {} {} from our {} range, built to last and easy to love.",
                    material.to_lowercase(),
                    item.to_lowercase(),
                    category
                ),
                name: format!("{material} {item}"),
                category_id: (*category).to_owned(),
                price_minor: 499 + (seed * 7_919) % 24_000,
                currency: "EUR".to_owned(),
                version: 1,
                created_at: now - seed * 3600,
                updated_at: now - seed * 3600,
                id,
            });
        }
    }
    products
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_has_what_the_demos_need() {
        let products = products(1_000_000);
        assert_eq!(products.len(), 120);
        assert_eq!(categories().len(), 6);
        let kettle = products.iter().find(|p| p.id == "kitchen-000").unwrap();
        assert_eq!(kettle.name, "Copper Kettle");
        assert!(products.iter().all(|p| p.price_minor > 0));
    }
}
