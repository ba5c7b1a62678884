//! The shop's client: stocks the shelves, funds the customers, places orders from several
//! sessions at once, then reads everything back and checks the shop's invariants against
//! what the cluster acknowledged, and waits until every paid order has been shipped (by
//! the letter `orders.place` sends `shipping.ship`), exactly once.

// A client driver, not a state machine: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]

use crate::{
    Balance, CUSTOMERS, Cents, Deposit, GetOrder, GetShipment, INITIAL_CENTS, INITIAL_UNITS, ITEMS,
    Level, Order, Place, Restock, Units, price,
};
use anyhow::{Context, Result, bail};
use detflow_client::{CallError, Client, Offset, Tls};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the drive waits for the paid orders to be shipped.
const SHIPPING_WAIT: Duration = Duration::from_secs(30);

/// What a drive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveReport {
    /// Orders committed.
    pub placed: u64,
    /// Orders aborted by the shop's own rules (out of stock, not enough money).
    pub refused: u64,
    /// Units left in stock, all items together.
    pub units_left: u64,
    /// Cents left, all customers together.
    pub cents_left: i64,
    /// Orders shipped (each exactly once): all the placed ones.
    pub shipped: u64,
    /// Shipments read from the `shipments` stream (each once): all the shipped ones.
    pub streamed: u64,
}

/// Drives the shop on the cluster at `gateways`: `sessions` sessions place `orders` orders
/// each (ids from `first_id` on), then the shop is read back and checked. The shelves and
/// balances must start empty (a fresh cluster).
pub async fn drive(
    gateways: Vec<SocketAddr>,
    tls: Tls,
    sessions: u64,
    orders: u64,
    first_id: u64,
) -> Result<DriveReport> {
    let admin = Client::connect(gateways, tls).await?;
    for item in 0..ITEMS {
        admin
            .call::<Restock>(&Units {
                item,
                units: INITIAL_UNITS,
            })
            .await
            .with_context(|| format!("restocking item {item}"))?;
    }
    for customer in 0..CUSTOMERS {
        admin
            .call::<Deposit>(&Cents {
                customer,
                cents: INITIAL_CENTS,
            })
            .await
            .with_context(|| format!("funding customer {customer}"))?;
    }

    let mut shoppers = tokio::task::JoinSet::new();
    for session in 0..sessions {
        // A session of its own over the admin session's connections.
        let client = admin.new_session();
        shoppers.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..orders {
                let id = first_id + session * orders + n;
                // Spread over items and customers; some orders are bound to fail.
                let item = (id * 7 + session) % ITEMS;
                let units = 1 + id % 5;
                let order = Order {
                    id,
                    customer: (id * 3) % CUSTOMERS,
                    item,
                    units,
                    cents: price(item) * units as i64,
                };
                let outcome = match client.call::<Place>(&order).await {
                    Ok(()) => Ok(true),
                    Err(CallError::Aborted(_)) => Ok(false),
                    Err(e) => Err(anyhow::anyhow!("order {id}: {e}")),
                };
                outcomes.push((order, outcome));
            }
            outcomes
        });
    }
    let mut placed = Vec::new();
    let mut refused = Vec::new();
    while let Some(outcomes) = shoppers.join_next().await {
        for (order, outcome) in outcomes.context("a shopper session failed")? {
            if outcome? {
                placed.push(order);
            } else {
                refused.push(order);
            }
        }
    }

    // Read everything back and check it against what was acknowledged.
    let mut units_left = 0;
    for item in 0..ITEMS {
        let level = admin.call::<Level>(&item).await?;
        let sold: u64 = placed
            .iter()
            .filter(|o| o.item == item)
            .map(|o| o.units)
            .sum();
        if level + sold != INITIAL_UNITS {
            bail!(
                "item {item}: {level} in stock and {sold} sold, but {INITIAL_UNITS} were stocked"
            );
        }
        units_left += level;
    }
    let mut cents_left = 0;
    for customer in 0..CUSTOMERS {
        let balance = admin.call::<Balance>(&customer).await?;
        let paid: i64 = placed
            .iter()
            .filter(|o| o.customer == customer)
            .map(|o| o.cents)
            .sum();
        if balance + paid != INITIAL_CENTS {
            bail!(
                "customer {customer}: {balance} left and {paid} paid, but {INITIAL_CENTS} were deposited"
            );
        }
        cents_left += balance;
    }
    for order in &placed {
        let stored = admin.call::<GetOrder>(&order.id).await?;
        if stored != Some(*order) {
            bail!(
                "order {} acknowledged, but the shop holds {stored:?}",
                order.id
            );
        }
    }
    for order in &refused {
        let stored = admin.call::<GetOrder>(&order.id).await?;
        if stored.is_some() {
            bail!(
                "order {} was refused, but the shop holds {stored:?}",
                order.id
            );
        }
    }
    let shipped = await_shipping(&admin, &placed, &refused).await?;
    let streamed = follow_shipments(&admin, &placed).await?;
    admin.close();
    Ok(DriveReport {
        placed: placed.len() as u64,
        refused: refused.len() as u64,
        units_left,
        cents_left,
        shipped,
        streamed,
    })
}

/// Reads the `shipments` stream from the start, as a warehouse outside the cluster would,
/// until every placed order came by, and checks each came once and nothing else did.
async fn follow_shipments(admin: &Client, placed: &[Order]) -> Result<u64> {
    let began = Instant::now();
    let mut expected: std::collections::BTreeMap<u64, Order> =
        placed.iter().map(|o| (o.id, *o)).collect();
    let mut seen = 0;
    let mut shipments = admin.subscribe(crate::SHIPMENTS_STREAM, Offset::START);
    while !expected.is_empty() {
        if began.elapsed() > SHIPPING_WAIT {
            bail!(
                "{} shipped orders never came on the stream, the first {:?}",
                expected.len(),
                expected.keys().next()
            );
        }
        for event in shipments.poll().await? {
            let order: Order = detflow_protocol::codec::decode(&event.data)
                .with_context(|| format!("the event at {}", event.offset))?;
            if expected.remove(&order.id) != Some(order) {
                bail!(
                    "the stream holds {order:?} at {}, unexpected or twice",
                    event.offset
                );
            }
            seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(seen)
}

/// Waits until every placed order is shipped, once, and checks no refused one is.
async fn await_shipping(admin: &Client, placed: &[Order], refused: &[Order]) -> Result<u64> {
    let began = Instant::now();
    let mut waiting: Vec<Order> = placed.to_vec();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for order in waiting {
            match admin.call::<GetShipment>(&order.id).await? {
                None => still.push(order),
                Some(s) if s.times == 1 && s.order == order => {}
                Some(s) => bail!("order {} shipped as {s:?}", order.id),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            if began.elapsed() > SHIPPING_WAIT {
                bail!(
                    "{} paid orders not shipped after {} s, the first order {}",
                    waiting.len(),
                    SHIPPING_WAIT.as_secs(),
                    waiting[0].id
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for order in refused {
        if let Some(s) = admin.call::<GetShipment>(&order.id).await? {
            bail!("order {} was refused, but shipped as {s:?}", order.id);
        }
    }
    Ok(placed.len() as u64)
}
