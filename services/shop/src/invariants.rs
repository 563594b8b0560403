//! The invariants of the checkout saga (ARCHITECTURE.md §4), checked on the stores of a
//! running [`System`]: after any scenario, and by the chaos suite after any fault.
//!
//! - no order outside a settled state past its deadline (before the pivot) or while nothing
//!   is due for it;
//! - per product, `on_hand - reserved` never negative, and `on_hand` and `reserved` equal to
//!   the sums of the ledger ([`StockStore::audit`](shop_inventory::store::StockStore::audit));
//! - every authorised payment captured or voided once its order is settled, and nothing left
//!   authorised at the card scheme;
//! - the captured amount equal to the order's total for every confirmed order, and nothing
//!   kept (captured less refunded) for every rejected or cancelled one;
//! - every unit a kept order (confirmed, shipped, delivered) bought taken out of stock, and
//!   nothing taken by any other order (a refunded order's stock back on hand);
//! - one order per user and `Idempotency-Key`.

use std::collections::{HashMap, HashSet};

use shop_orders::flow::Status;

use crate::System;

/// Checks every invariant at `now_ms` (milliseconds since the epoch); returns what is
/// violated, one line each (empty: all hold).
///
/// # Errors
///
/// A store cannot be read.
pub async fn violations(
    system: &System,
    now_ms: i64,
) -> Result<Vec<String>, shop_common::store::StoreError> {
    let mut found = Vec::new();
    found.extend(
        system
            .inventory
            .store()
            .audit()
            .await?
            .into_iter()
            .map(|line| format!("stock: {line}")),
    );
    for reference in system.cards.dangling() {
        found.push(format!("card scheme: {reference} is still authorised"));
    }
    let payments: HashMap<String, shop_payments::store::Payment> = system
        .payments
        .store()
        .all()
        .await?
        .into_iter()
        .map(|payment| (payment.order_id.clone(), payment))
        .collect();
    let taken = system.inventory.store().taken().await?;
    let orders = system.orders.store().all().await?;
    let mut keys = HashSet::new();
    for order in &orders {
        let id = &order.order_id;
        if !keys.insert((order.user_id.clone(), order.idempotency_key.clone())) {
            found.push(format!(
                "order {id}: a second order for its Idempotency-Key"
            ));
        }
        let Some(status) = Status::parse(&order.status) else {
            found.push(format!("order {id}: an unknown status {}", order.status));
            continue;
        };
        let payment = payments.get(id);
        let units = taken.get(id).copied().unwrap_or(0);
        let kept = payment.map_or(0, |p| p.captured_minor - p.refunded_minor);
        if !status.settled() {
            let overdue = order.due_at_ms.is_none_or(|due| due < now_ms);
            if overdue {
                found.push(format!(
                    "order {id}: {status} and past its deadline or due time"
                ));
            }
            continue;
        }
        if payment.is_some_and(|p| p.status == "AUTHORIZED") {
            found.push(format!(
                "order {id}: {status}, its payment still authorised"
            ));
        }
        match status {
            Status::Confirmed | Status::Shipped | Status::Delivered => {
                if kept != order.total_minor || order.captured_minor != order.total_minor {
                    found.push(format!(
                        "order {id}: {status} for {} but {kept} kept",
                        order.total_minor
                    ));
                }
                if units != i64::from(order.items) {
                    found.push(format!(
                        "order {id}: {status} for {} units but {units} taken out of stock",
                        order.items
                    ));
                }
            }
            _ => {
                if kept != 0 {
                    found.push(format!("order {id}: {status} but {kept} kept"));
                }
                if units != 0 {
                    found.push(format!(
                        "order {id}: {status} but {units} units taken out of stock"
                    ));
                }
            }
        }
    }
    Ok(found)
}
