//! A shop on detflow: three services, each owning its tables, composed into one
//! transactional dataflow.
//!
//! - `inventory` owns `stock` (units per item): `inventory.restock`, `inventory.reserve`,
//!   `inventory.level`;
//! - `payments` owns `balance` (cents per customer): `payments.deposit`, `payments.charge`,
//!   `payments.balance`;
//! - `orders` owns `orders` (one record per order): `orders.place` reserves the stock and
//!   charges the customer by calling the other two services' procedures inside its own
//!   transaction, so an order exists exactly when its stock was taken and its price paid;
//!   then it sends `shipping.ship` a letter; `orders.get` reads one;
//! - `shipping` owns `shipments`: `shipping.ship` runs later, in a transaction of its own,
//!   once per paid order (the letter is delivered exactly once); `shipping.get` reads one.
//!
//! [`services`] is what a node registers ([`NodeBuilder`](detflow_node::NodeBuilder), see
//! `src/bin/shop-node.rs`); [`ShopWorkload`] is what the simulator runs (a generator and
//! the invariants: stock and money conserved, one record per committed order, every paid
//! order shipped exactly once); [`drive`]
//! is the client the demo and the process test run against a cluster.

use detflow_executor::{Abort, CallFootprint, FieldType, Procedure, Service, Table, Txn};
use detflow_protocol::{DetRng, Footprint, Key, Outcome, PartitionScheme, TableRule, Value, codec};
use detflow_workloads::{Executed, Request, Violation, Workload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod drive;

pub use drive::{DriveReport, drive};

/// The stock of `item`.
pub fn stock_key(item: u64) -> Key {
    Key::table("stock").u64(item)
}

/// The balance of `customer`.
pub fn balance_key(customer: u64) -> Key {
    Key::table("balance").u64(customer)
}

/// The record of order `id`.
pub fn order_key(id: u64) -> Key {
    Key::table("orders").u64(id)
}

/// The shipment of order `id`.
pub fn shipment_key(id: u64) -> Key {
    Key::table("shipments").u64(id)
}

/// Items and how many units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    /// The item.
    pub item: u64,
    /// How many units.
    pub units: u64,
}

/// A customer and an amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cents {
    /// The customer.
    pub customer: u64,
    /// The amount in cents.
    pub cents: i64,
}

/// An order, as `orders.place` takes it and `orders` stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id, chosen by the caller (a second order with one id is refused).
    pub id: u64,
    /// Who pays.
    pub customer: u64,
    /// What is bought.
    pub item: u64,
    /// How many units.
    pub units: u64,
    /// The price in cents.
    pub cents: i64,
}

/// A shipment, as `shipping` stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The order shipped.
    pub order: Order,
    /// How many times it was shipped: 1, since its letter is consumed exactly once.
    pub times: u32,
}

fn read_u64(tx: &Txn<'_>, key: &Key) -> Result<u64, Abort> {
    Ok(tx.get_as::<u64>(key)?.unwrap_or(0))
}

fn read_i64(tx: &Txn<'_>, key: &Key) -> Result<i64, Abort> {
    Ok(tx.get_as::<i64>(key)?.unwrap_or(0))
}

/// Adds units of an item to the stock.
pub struct Restock;

impl Procedure for Restock {
    const NAME: &'static str = "inventory.restock";
    type Args = Units;
    type Output = u64;

    fn footprint(args: &Units) -> Footprint {
        Footprint::new().write(stock_key(args.item))
    }

    fn execute(tx: &mut Txn<'_>, args: Units) -> Result<u64, Abort> {
        let level = read_u64(tx, &stock_key(args.item))?
            .checked_add(args.units)
            .ok_or_else(|| Abort::Overflow("stock".into()))?;
        tx.put_as(stock_key(args.item), &level)?;
        Ok(level)
    }
}

/// Takes units of an item out of the stock, or aborts if there are not enough.
pub struct Reserve;

impl Procedure for Reserve {
    const NAME: &'static str = "inventory.reserve";
    type Args = Units;
    type Output = u64;

    fn footprint(args: &Units) -> Footprint {
        Footprint::new().write(stock_key(args.item))
    }

    fn execute(tx: &mut Txn<'_>, args: Units) -> Result<u64, Abort> {
        let level = read_u64(tx, &stock_key(args.item))?;
        let Some(left) = level.checked_sub(args.units) else {
            return Err(Abort::User(format!(
                "item {}: {} units asked, {level} in stock",
                args.item, args.units
            )));
        };
        tx.put_as(stock_key(args.item), &left)?;
        Ok(left)
    }
}

/// Reads the stock of an item.
pub struct Level;

impl Procedure for Level {
    const NAME: &'static str = "inventory.level";
    type Args = u64;
    type Output = u64;

    fn footprint(item: &u64) -> Footprint {
        Footprint::new().read(stock_key(*item))
    }

    fn execute(tx: &mut Txn<'_>, item: u64) -> Result<u64, Abort> {
        read_u64(tx, &stock_key(item))
    }
}

/// Adds money to a customer's balance.
pub struct Deposit;

impl Procedure for Deposit {
    const NAME: &'static str = "payments.deposit";
    type Args = Cents;
    type Output = i64;

    fn footprint(args: &Cents) -> Footprint {
        Footprint::new().write(balance_key(args.customer))
    }

    fn execute(tx: &mut Txn<'_>, args: Cents) -> Result<i64, Abort> {
        if args.cents < 0 {
            return Err(Abort::User("a deposit is not negative".into()));
        }
        let balance = read_i64(tx, &balance_key(args.customer))?
            .checked_add(args.cents)
            .ok_or_else(|| Abort::Overflow("balance".into()))?;
        tx.put_as(balance_key(args.customer), &balance)?;
        Ok(balance)
    }
}

/// Takes money from a customer's balance, or aborts if there is not enough.
pub struct Charge;

impl Procedure for Charge {
    const NAME: &'static str = "payments.charge";
    type Args = Cents;
    type Output = i64;

    fn footprint(args: &Cents) -> Footprint {
        Footprint::new().write(balance_key(args.customer))
    }

    fn execute(tx: &mut Txn<'_>, args: Cents) -> Result<i64, Abort> {
        let balance = read_i64(tx, &balance_key(args.customer))?;
        if args.cents < 0 || balance < args.cents {
            return Err(Abort::User(format!(
                "customer {}: {} cents asked, {balance} available",
                args.customer, args.cents
            )));
        }
        tx.put_as(balance_key(args.customer), &(balance - args.cents))?;
        Ok(balance - args.cents)
    }
}

/// Reads a customer's balance.
pub struct Balance;

impl Procedure for Balance {
    const NAME: &'static str = "payments.balance";
    type Args = u64;
    type Output = i64;

    fn footprint(customer: &u64) -> Footprint {
        Footprint::new().read(balance_key(*customer))
    }

    fn execute(tx: &mut Txn<'_>, customer: u64) -> Result<i64, Abort> {
        read_i64(tx, &balance_key(customer))
    }
}

fn place_footprint(order: &Order) -> Footprint {
    Footprint::new()
        .write(order_key(order.id))
        .call::<Reserve>(&Units {
            item: order.item,
            units: order.units,
        })
        .call::<Charge>(&Cents {
            customer: order.customer,
            cents: order.cents,
        })
}

/// Places an order: reserves the stock, charges the customer and records the order, all
/// or nothing. `charged` is what it charges (the planted bug charges less).
fn place(tx: &mut Txn<'_>, order: Order, charged: i64) -> Result<(), Abort> {
    if tx.get(&order_key(order.id))?.is_some() {
        return Err(Abort::User(format!("order {} exists", order.id)));
    }
    tx.call::<Reserve>(Units {
        item: order.item,
        units: order.units,
    })?;
    tx.call::<Charge>(Cents {
        customer: order.customer,
        cents: charged,
    })?;
    tx.put_as(order_key(order.id), &order)?;
    // Shipping happens later, in its own transaction: the order does not wait for it, and
    // the letter is sent only if the order commits.
    tx.send::<Ship>(&order)
}

/// The egress stream `shipping.ship` publishes each shipped order to.
pub const SHIPMENTS_STREAM: &str = "shipments";

/// Ships an order: what `orders.place` asks, by letter, once the order is paid, publishing
/// it to [`SHIPMENTS_STREAM`].
pub struct Ship;

impl Procedure for Ship {
    const NAME: &'static str = "shipping.ship";
    type Args = Order;
    type Output = u32;

    fn footprint(order: &Order) -> Footprint {
        Footprint::new().write(shipment_key(order.id))
    }

    fn execute(tx: &mut Txn<'_>, order: Order) -> Result<u32, Abort> {
        // Counting rather than refusing a second shipment keeps a duplicate visible to the
        // invariant instead of hiding it.
        let times = tx
            .get_as::<Shipment>(&shipment_key(order.id))?
            .map_or(0, |s| s.times)
            + 1;
        tx.put_as(shipment_key(order.id), &Shipment { order, times })?;
        // The warehouse outside the cluster follows this stream.
        tx.publish(SHIPMENTS_STREAM, &order)?;
        Ok(times)
    }
}

/// Reads a shipment.
pub struct GetShipment;

impl Procedure for GetShipment {
    const NAME: &'static str = "shipping.get";
    type Args = u64;
    type Output = Option<Shipment>;

    fn footprint(id: &u64) -> Footprint {
        Footprint::new().read(shipment_key(*id))
    }

    fn execute(tx: &mut Txn<'_>, id: u64) -> Result<Option<Shipment>, Abort> {
        tx.get_as(&shipment_key(id))
    }
}

/// Places an order (see [`Order`]).
pub struct Place;

impl Procedure for Place {
    const NAME: &'static str = "orders.place";
    type Args = Order;
    type Output = ();

    fn footprint(order: &Order) -> Footprint {
        place_footprint(order)
    }

    fn execute(tx: &mut Txn<'_>, order: Order) -> Result<(), Abort> {
        place(tx, order, order.cents)
    }
}

/// `orders.place` with a planted bug: orders of more than three units get a discount of
/// one cent nobody accounts for. Only the simulation's checker test registers it.
pub struct DiscountingPlace;

impl Procedure for DiscountingPlace {
    const NAME: &'static str = "orders.place";
    type Args = Order;
    type Output = ();

    fn footprint(order: &Order) -> Footprint {
        place_footprint(order)
    }

    fn execute(tx: &mut Txn<'_>, order: Order) -> Result<(), Abort> {
        let charged = if order.units > 3 {
            order.cents - 1
        } else {
            order.cents
        };
        place(tx, order, charged)
    }
}

/// Reads an order.
pub struct GetOrder;

impl Procedure for GetOrder {
    const NAME: &'static str = "orders.get";
    type Args = u64;
    type Output = Option<Order>;

    fn footprint(id: &u64) -> Footprint {
        Footprint::new().read(order_key(*id))
    }

    fn execute(tx: &mut Txn<'_>, id: u64) -> Result<Option<Order>, Abort> {
        tx.get_as(&order_key(id))
    }
}

/// The shop's four services; `planted_bug` swaps in [`DiscountingPlace`].
pub fn services_with(planted_bug: bool) -> Vec<Service> {
    let inventory = Service::new("inventory")
        .table(
            Table::new("stock")
                .rule(TableRule::Hash { fields: 1 })
                .key("item", FieldType::U64)
                .column("units", FieldType::U64),
        )
        .procedure::<Restock>()
        .procedure::<Reserve>()
        .procedure::<Level>();
    let payments = Service::new("payments")
        .table(
            Table::new("balance")
                .key("customer", FieldType::U64)
                .column("cents", FieldType::I64),
        )
        .procedure::<Deposit>()
        .procedure::<Charge>()
        .procedure::<Balance>();
    let orders = Service::new("orders")
        .table(
            Table::new("orders")
                .key("id", FieldType::U64)
                .column("customer", FieldType::U64)
                .column("item", FieldType::U64)
                .column("units", FieldType::U64)
                .column("cents", FieldType::I64),
        )
        .procedure::<GetOrder>();
    let orders = if planted_bug {
        orders.procedure::<DiscountingPlace>()
    } else {
        orders.procedure::<Place>()
    };
    let shipping = Service::new("shipping")
        .table(
            Table::new("shipments")
                .key("id", FieldType::U64)
                .column("order", FieldType::Any)
                .column("times", FieldType::U64),
        )
        .procedure::<Ship>()
        .procedure::<GetShipment>();
    vec![inventory, payments, orders, shipping]
}

/// The shop's four services.
pub fn services() -> Vec<Service> {
    services_with(false)
}

/// Items the generator sells, customers who buy, and what each starts with.
pub const ITEMS: u64 = 8;
/// Customers of the generator.
pub const CUSTOMERS: u64 = 10;
/// Units of each item at the start.
pub const INITIAL_UNITS: u64 = 40;
/// Cents of each customer at the start.
pub const INITIAL_CENTS: i64 = 5_000;

/// The price of one unit of `item`, in cents.
pub fn price(item: u64) -> i64 {
    100 + 25 * item as i64
}

/// The shop as a simulated workload: orders (most calls), restocks and deposits, and the
/// shop's invariants.
pub struct ShopWorkload {
    partitions: u32,
    next_order: u64,
    planted_bug: bool,
}

impl ShopWorkload {
    /// The shop over `partitions` partitions; `planted_bug` runs [`DiscountingPlace`].
    pub fn new(partitions: u32, planted_bug: bool) -> ShopWorkload {
        ShopWorkload {
            partitions,
            next_order: 0,
            planted_bug,
        }
    }
}

impl Workload for ShopWorkload {
    fn name(&self) -> &'static str {
        "shop"
    }

    fn services(&self) -> Vec<Service> {
        services_with(self.planted_bug)
    }

    fn streams(&self) -> Vec<String> {
        vec![SHIPMENTS_STREAM.into()]
    }

    fn scheme(&self) -> PartitionScheme {
        ["stock", "balance", "orders", "shipments"]
            .into_iter()
            .fold(PartitionScheme::hashed(self.partitions), |s, t| {
                s.table(t, TableRule::Hash { fields: 1 })
            })
    }

    fn load(&self) -> Vec<(Key, Value)> {
        let mut rows: Vec<(Key, Value)> = (0..ITEMS)
            .map(|item| (stock_key(item), codec::encode(&INITIAL_UNITS)))
            .chain((0..CUSTOMERS).map(|c| (balance_key(c), codec::encode(&INITIAL_CENTS))))
            .collect();
        rows.sort();
        rows
    }

    fn next_call(&mut self, rng: &mut DetRng) -> Request {
        let roll = rng.below(100);
        if roll < 80 {
            self.next_order += 1;
            let item = rng.below(ITEMS);
            let units = rng.range(1, 6);
            let order = Order {
                id: self.next_order,
                customer: rng.below(CUSTOMERS),
                item,
                units,
                cents: price(item) * units as i64,
            };
            Request::new(Place::NAME, codec::encode(&order))
        } else if roll < 90 {
            let units = Units {
                item: rng.below(ITEMS),
                units: rng.range(1, 10),
            };
            Request::new(Restock::NAME, codec::encode(&units))
        } else {
            let cents = Cents {
                customer: rng.below(CUSTOMERS),
                cents: rng.range(100, 2_000) as i64,
            };
            Request::new(Deposit::NAME, codec::encode(&cents))
        }
    }

    fn check(&self, state: &BTreeMap<Key, Value>, log: &[Executed<'_>]) -> Result<(), Violation> {
        let mut totals = Totals::default();
        for executed in log {
            if matches!(executed.outcome, Outcome::Committed(_)) {
                totals.add(executed.procedure, executed.args)?;
            }
        }
        let decode = |key: &Key| state.get(key).map(|v| codec::decode::<i64>(v));
        let stock: i64 = (0..ITEMS)
            .map(|i| {
                state
                    .get(&stock_key(i))
                    .and_then(|v| codec::decode::<u64>(v).ok())
            })
            .map(|u| u.unwrap_or(0) as i64)
            .sum();
        let money: i64 = (0..CUSTOMERS)
            .map(|c| decode(&balance_key(c)).and_then(Result::ok).unwrap_or(0))
            .sum();
        let orders: Vec<Order> = state
            .iter()
            .filter(|(k, _)| k.starts_with(&Key::table("orders")))
            .filter_map(|(_, v)| codec::decode(v).ok())
            .collect();
        let shipments: Vec<Shipment> = state
            .iter()
            .filter(|(k, _)| k.starts_with(&Key::table("shipments")))
            .filter_map(|(_, v)| codec::decode(v).ok())
            .collect();
        let violation = |detail: String| Violation {
            workload: "shop",
            detail,
        };
        check_conservation(&totals, stock, money, &orders).map_err(violation)?;
        check_shipped(&orders, &shipments).map_err(violation)
    }
}

/// What the committed calls of a log add up to.
#[derive(Debug, Default)]
struct Totals {
    restocked: i64,
    deposited: i64,
    orders: BTreeMap<u64, Order>,
}

impl Totals {
    fn add(&mut self, procedure: &str, args: &[u8]) -> Result<(), Violation> {
        let bad = |e: codec::DecodeError| Violation {
            workload: "shop",
            detail: format!("a committed {procedure} with arguments that do not decode: {e}"),
        };
        match procedure {
            Restock::NAME => {
                self.restocked += codec::decode::<Units>(args).map_err(bad)?.units as i64
            }
            Deposit::NAME => self.deposited += codec::decode::<Cents>(args).map_err(bad)?.cents,
            Place::NAME => {
                let order: Order = codec::decode(args).map_err(bad)?;
                self.orders.insert(order.id, order);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Stock and money conserved, and exactly the committed orders recorded.
fn check_conservation(
    totals: &Totals,
    stock: i64,
    money: i64,
    orders: &[Order],
) -> Result<(), String> {
    let sold: i64 = totals.orders.values().map(|o| o.units as i64).sum();
    let paid: i64 = totals.orders.values().map(|o| o.cents).sum();
    let expected_stock = ITEMS as i64 * INITIAL_UNITS as i64 + totals.restocked - sold;
    if stock != expected_stock {
        return Err(format!(
            "{stock} units in stock, expected {expected_stock} ({} restocked, {sold} sold)",
            totals.restocked
        ));
    }
    let expected_money = CUSTOMERS as i64 * INITIAL_CENTS + totals.deposited - paid;
    if money != expected_money {
        return Err(format!(
            "customers hold {money} cents, expected {expected_money} ({} deposited, {paid} paid for orders)",
            totals.deposited
        ));
    }
    let recorded: BTreeMap<u64, Order> = orders.iter().map(|o| (o.id, *o)).collect();
    if recorded != totals.orders {
        return Err(format!(
            "{} orders recorded, {} committed (or they differ)",
            recorded.len(),
            totals.orders.len()
        ));
    }
    Ok(())
}

/// Every recorded (so paid) order shipped exactly once, and nothing else shipped.
fn check_shipped(orders: &[Order], shipments: &[Shipment]) -> Result<(), String> {
    let shipped: BTreeMap<u64, Shipment> = shipments.iter().map(|s| (s.order.id, *s)).collect();
    for order in orders {
        match shipped.get(&order.id) {
            None => return Err(format!("order {} was paid but never shipped", order.id)),
            Some(s) if s.times != 1 => {
                return Err(format!("order {} was shipped {} times", order.id, s.times));
            }
            Some(s) if s.order != *order => {
                return Err(format!(
                    "order {} shipped as {:?}, placed as {order:?}",
                    order.id, s.order
                ));
            }
            Some(_) => {}
        }
    }
    if shipped.len() != orders.len() {
        return Err(format!(
            "{} shipments for {} paid orders",
            shipped.len(),
            orders.len()
        ));
    }
    Ok(())
}
