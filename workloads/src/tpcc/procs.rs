//! The five TPC-C transactions, the by-last-name reconnaissance read and the consistency
//! check, as detflow procedures.
//!
//! Arguments and stored rows are untrusted: arithmetic on them is checked and aborts with
//! [`Abort::Overflow`], and ids read back from keys that do not fit their column abort too.
//! A procedure never panics on its input.

use super::DISTRICTS;
use super::keys::{self, CUSTOMER, NEW_ORDER, ORDER_LINE, ORDERS, STOCK};
use super::rows::{Customer, District, History, Item, Order, OrderLine, Stock, Warehouse};
use detflow_executor::{Abort, OrOverflow, Procedure, Txn};
use detflow_protocol::{Footprint, Key, codec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How a Payment or Order-Status names its customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerRef {
    /// By C_ID.
    Id(u32),
    /// By C_LAST: the middle one, ordered by C_FIRST, of the district's customers of that
    /// name. `c_id` is what reconnaissance found; execution re-checks it and aborts with
    /// `FootprintChanged` if the middle customer is now someone else.
    Last {
        /// C_LAST.
        last: String,
        /// The reconnoitred C_ID.
        c_id: u32,
    },
}

impl CustomerRef {
    /// The customer id the footprint covers.
    pub fn c_id(&self) -> u32 {
        match self {
            CustomerRef::Id(c) | CustomerRef::Last { c_id: c, .. } => *c,
        }
    }
}

/// Reads `key` as a `T`, aborting if it is absent.
fn row<T: DeserializeOwned>(tx: &Txn<'_>, key: &Key) -> Result<T, Abort> {
    tx.get_as(key)?
        .ok_or_else(|| Abort::User(format!("{key} does not exist")))
}

/// The last integer field of `key` (a customer or order id), if it has one; aborts if it
/// does not fit a `u32`, as no id this workload writes does.
fn last_id(key: &Key) -> Result<Option<u32>, Abort> {
    keys::fields(key)
        .last()
        .map(|id| u32::try_from(*id).or_overflow(format_args!("id field of {key}")))
        .transpose()
}

/// Cuts `s` to at most `bytes_max` bytes, at a char boundary (`String::truncate` panics
/// inside a char).
fn truncate_at_char(s: &mut String, bytes_max: usize) {
    if s.len() <= bytes_max {
        return;
    }
    let mut end = bytes_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

/// The middle customer (ceil(n/2)-th, ordered by first name) of `(w, d)` named `last`.
fn middle_customer(tx: &Txn<'_>, w: u32, d: u32, last: &str) -> Result<Option<u32>, Abort> {
    let named = tx.scan_prefix(&keys::customers_named(w, d, last))?;
    // An empty scan has no middle customer.
    let Some((key, _)) = named.get(named.len().saturating_sub(1) / 2) else {
        return Ok(None);
    };
    last_id(key)
}

/// Resolves `customer` at execution time: by id as given, by last name only if the middle
/// customer is still the one reconnaissance found.
fn resolve(tx: &Txn<'_>, w: u32, d: u32, customer: &CustomerRef) -> Result<u32, Abort> {
    match customer {
        CustomerRef::Id(c) => Ok(*c),
        CustomerRef::Last { last, c_id } => match middle_customer(tx, w, d, last)? {
            Some(c) if c == *c_id => Ok(c),
            found => Err(Abort::FootprintChanged(format!(
                "middle customer named {last} in district ({w}, {d}) is {found:?}, not {c_id}"
            ))),
        },
    }
}

/// Adds the reads `customer` needs to `fp`.
fn customer_footprint(fp: Footprint, w: u32, d: u32, customer: &CustomerRef) -> Footprint {
    match customer {
        CustomerRef::Id(_) => fp,
        CustomerRef::Last { last, .. } => fp.read_prefix(keys::customers_named(w, d, last)),
    }
}

/// One line of a New-Order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrderLine {
    /// OL_I_ID; an unused id makes the order roll back.
    pub i_id: u32,
    /// OL_SUPPLY_W_ID.
    pub supply_w_id: u32,
    /// OL_QUANTITY.
    pub quantity: u32,
}

/// New-Order's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrderArgs {
    /// W_ID.
    pub w: u32,
    /// D_ID.
    pub d: u32,
    /// C_ID.
    pub c: u32,
    /// The lines.
    pub lines: Vec<NewOrderLine>,
    /// O_ENTRY_D.
    pub entry_d: u64,
}

/// New-Order's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrderOutput {
    /// The new O_ID.
    pub o_id: u32,
    /// The order total with discount and taxes, in cents.
    pub total_cents: i64,
}

/// TPC-C New-Order (clause 2.4).
pub struct NewOrder;

impl Procedure for NewOrder {
    const NAME: &'static str = "tpcc.new_order";
    type Args = NewOrderArgs;
    type Output = NewOrderOutput;

    fn footprint(a: &NewOrderArgs) -> Footprint {
        let mut fp = Footprint::new()
            .read(keys::warehouse(a.w))
            .write(keys::district(a.w, a.d))
            .read(keys::customer(a.w, a.d, a.c))
            .insert_prefix(keys::of_district(ORDERS, a.w, a.d))
            .insert_prefix(keys::of_district(NEW_ORDER, a.w, a.d))
            .insert_prefix(keys::orders_of_customer(a.w, a.d, a.c))
            .insert_prefix(keys::of_district(ORDER_LINE, a.w, a.d));
        let mut seen = BTreeSet::new();
        for line in &a.lines {
            if seen.insert((line.supply_w_id, line.i_id)) {
                fp = fp
                    .read(keys::item(line.i_id))
                    .write(keys::stock(line.supply_w_id, line.i_id));
            }
        }
        fp
    }

    fn execute(tx: &mut Txn<'_>, a: NewOrderArgs) -> Result<NewOrderOutput, Abort> {
        let warehouse: Warehouse = row(tx, &keys::warehouse(a.w))?;
        let district_key = keys::district(a.w, a.d);
        let mut district: District = row(tx, &district_key)?;
        let o_id = district.next_o_id;
        district.next_o_id = o_id.checked_add(1).or_overflow("D_NEXT_O_ID")?;
        tx.put_as(district_key, &district)?;
        let customer: Customer = row(tx, &keys::customer(a.w, a.d, a.c))?;
        let all_local = a.lines.iter().all(|l| l.supply_w_id == a.w);
        let order = Order {
            c_id: a.c,
            entry_d: a.entry_d,
            carrier_id: None,
            ol_cnt: u32::try_from(a.lines.len()).or_overflow("O_OL_CNT")?,
            all_local,
        };
        tx.put_as(keys::order(a.w, a.d, o_id), &order)?;
        tx.put_as(keys::new_order(a.w, a.d, o_id), &())?;
        tx.put_as(keys::order_customer(a.w, a.d, a.c, o_id), &())?;
        let mut sum: i64 = 0;
        for (i, line) in a.lines.iter().enumerate() {
            // Fits: there are at most `O_OL_CNT` (a u32) lines.
            let n = u32::try_from(i + 1).or_overflow("OL_NUMBER")?;
            let Some(item) = tx.get_as::<Item>(&keys::item(line.i_id))? else {
                // Clause 2.4.2.3: an unused item id rolls the whole order back.
                return Err(Abort::User(format!(
                    "item number {} is not valid",
                    line.i_id
                )));
            };
            let stock_key = keys::stock(line.supply_w_id, line.i_id);
            let mut stock: Stock = row(tx, &stock_key)?;
            let quantity = i32::try_from(line.quantity).or_overflow("OL_QUANTITY")?;
            let left = stock
                .quantity
                .checked_sub(quantity)
                .or_overflow("S_QUANTITY")?;
            // Clause 2.4.2.2: restock by 91 when fewer than 10 would be left.
            stock.quantity = if left >= 10 {
                left
            } else {
                left.checked_add(91).or_overflow("S_QUANTITY")?
            };
            stock.ytd = stock
                .ytd
                .checked_add(u64::from(line.quantity))
                .or_overflow("S_YTD")?;
            stock.order_cnt = stock.order_cnt.checked_add(1).or_overflow("S_ORDER_CNT")?;
            if line.supply_w_id != a.w {
                stock.remote_cnt = stock
                    .remote_cnt
                    .checked_add(1)
                    .or_overflow("S_REMOTE_CNT")?;
            }
            // S_DIST_xx for district `d` (1-based); none for a district number out of range.
            let dist_info = usize::try_from(a.d)
                .ok()
                .and_then(|d| d.checked_sub(1))
                .and_then(|i| stock.dist.get(i))
                .cloned()
                .unwrap_or_default();
            tx.put_as(stock_key, &stock)?;
            let amount_cents = i64::from(line.quantity)
                .checked_mul(item.price_cents)
                .or_overflow("OL_AMOUNT")?;
            sum = sum.checked_add(amount_cents).or_overflow("order total")?;
            let line_row = OrderLine {
                i_id: line.i_id,
                supply_w_id: line.supply_w_id,
                delivery_d: None,
                quantity: line.quantity,
                amount_cents,
                dist_info,
            };
            tx.put_as(keys::order_line(a.w, a.d, o_id, n), &line_row)?;
        }
        // In i128 the rates cannot overflow (each is a u32); the products still can, on
        // absurd stored rates.
        let discount = 10_000 - i128::from(customer.discount_bp);
        let tax = 10_000 + i128::from(warehouse.tax_bp) + i128::from(district.tax_bp);
        let total = i128::from(sum)
            .checked_mul(discount)
            .and_then(|t| t.checked_mul(tax))
            .or_overflow("order total")?
            / 100_000_000;
        Ok(NewOrderOutput {
            o_id,
            total_cents: i64::try_from(total).or_overflow("order total")?,
        })
    }
}

/// The longest C_DATA Payment writes, in bytes.
const C_DATA_BYTES_MAX: usize = 500;

/// Payment's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentArgs {
    /// W_ID: where the payment is made.
    pub w: u32,
    /// D_ID.
    pub d: u32,
    /// C_W_ID: the customer's warehouse (remote 15% of the time).
    pub c_w: u32,
    /// C_D_ID.
    pub c_d: u32,
    /// The customer.
    pub customer: CustomerRef,
    /// H_AMOUNT in cents.
    pub amount_cents: i64,
    /// H_DATE.
    pub date: u64,
}

/// Payment's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentOutput {
    /// The customer who paid.
    pub c_id: u32,
    /// Their C_BALANCE afterwards, in cents.
    pub balance_cents: i64,
}

/// TPC-C Payment (clause 2.5).
pub struct Payment;

impl Procedure for Payment {
    const NAME: &'static str = "tpcc.payment";
    type Args = PaymentArgs;
    type Output = PaymentOutput;

    fn footprint(a: &PaymentArgs) -> Footprint {
        let fp = Footprint::new()
            .write(keys::warehouse(a.w))
            .write(keys::district(a.w, a.d))
            .insert_prefix(keys::of_district(keys::HISTORY, a.w, a.d))
            .write(keys::customer(a.c_w, a.c_d, a.customer.c_id()));
        customer_footprint(fp, a.c_w, a.c_d, &a.customer)
    }

    fn execute(tx: &mut Txn<'_>, a: PaymentArgs) -> Result<PaymentOutput, Abort> {
        let warehouse_key = keys::warehouse(a.w);
        let mut warehouse: Warehouse = row(tx, &warehouse_key)?;
        warehouse.ytd_cents = warehouse
            .ytd_cents
            .checked_add(a.amount_cents)
            .or_overflow("W_YTD")?;
        tx.put_as(warehouse_key, &warehouse)?;
        let district_key = keys::district(a.w, a.d);
        let mut district: District = row(tx, &district_key)?;
        district.ytd_cents = district
            .ytd_cents
            .checked_add(a.amount_cents)
            .or_overflow("D_YTD")?;
        let h_id = district.next_h_id;
        district.next_h_id = h_id.checked_add(1).or_overflow("the next history id")?;
        tx.put_as(district_key, &district)?;
        // Resolved after the warehouse and district writes, so a stale reconnaissance
        // rolls those back: the atomicity test of TPCC.md relies on it.
        let c = resolve(tx, a.c_w, a.c_d, &a.customer)?;
        let customer_key = keys::customer(a.c_w, a.c_d, c);
        let mut customer: Customer = row(tx, &customer_key)?;
        customer.balance_cents = customer
            .balance_cents
            .checked_sub(a.amount_cents)
            .or_overflow("C_BALANCE")?;
        customer.ytd_payment_cents = customer
            .ytd_payment_cents
            .checked_add(a.amount_cents)
            .or_overflow("C_YTD_PAYMENT")?;
        customer.payment_cnt = customer
            .payment_cnt
            .checked_add(1)
            .or_overflow("C_PAYMENT_CNT")?;
        if customer.credit == "BC" {
            let mut data = format!(
                "{c} {} {} {} {} {}|{}",
                a.c_d, a.c_w, a.d, a.w, a.amount_cents, customer.data
            );
            // C_DATA keeps 500 characters; stored data need not be ASCII.
            truncate_at_char(&mut data, C_DATA_BYTES_MAX);
            customer.data = data;
        }
        let balance_cents = customer.balance_cents;
        tx.put_as(customer_key, &customer)?;
        let history = History {
            c_id: c,
            c_d_id: a.c_d,
            c_w_id: a.c_w,
            date: a.date,
            amount_cents: a.amount_cents,
            data: format!("{}    {}", warehouse.name, district.name),
        };
        tx.put_as(keys::history(a.w, a.d, h_id), &history)?;
        Ok(PaymentOutput {
            c_id: c,
            balance_cents,
        })
    }
}

/// Order-Status's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusArgs {
    /// W_ID.
    pub w: u32,
    /// D_ID.
    pub d: u32,
    /// The customer.
    pub customer: CustomerRef,
}

/// One line as Order-Status reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineStatus {
    /// OL_I_ID.
    pub i_id: u32,
    /// OL_SUPPLY_W_ID.
    pub supply_w_id: u32,
    /// OL_QUANTITY.
    pub quantity: u32,
    /// OL_AMOUNT in cents.
    pub amount_cents: i64,
    /// OL_DELIVERY_D.
    pub delivery_d: Option<u64>,
}

/// Order-Status's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusOutput {
    /// The customer.
    pub c_id: u32,
    /// C_BALANCE in cents.
    pub balance_cents: i64,
    /// The customer's latest order, if any.
    pub o_id: Option<u32>,
    /// Its O_CARRIER_ID.
    pub carrier_id: Option<u32>,
    /// Its lines.
    pub lines: Vec<LineStatus>,
}

/// TPC-C Order-Status (clause 2.6), read-only.
pub struct OrderStatus;

impl Procedure for OrderStatus {
    const NAME: &'static str = "tpcc.order_status";
    type Args = OrderStatusArgs;
    type Output = OrderStatusOutput;

    fn footprint(a: &OrderStatusArgs) -> Footprint {
        let c = a.customer.c_id();
        let fp = Footprint::new()
            .read(keys::customer(a.w, a.d, c))
            .read_prefix(keys::orders_of_customer(a.w, a.d, c))
            .read_prefix(keys::of_district(ORDERS, a.w, a.d))
            .read_prefix(keys::of_district(ORDER_LINE, a.w, a.d));
        customer_footprint(fp, a.w, a.d, &a.customer)
    }

    fn execute(tx: &mut Txn<'_>, a: OrderStatusArgs) -> Result<OrderStatusOutput, Abort> {
        let c = resolve(tx, a.w, a.d, &a.customer)?;
        let customer: Customer = row(tx, &keys::customer(a.w, a.d, c))?;
        let latest = match tx
            .scan_prefix(&keys::orders_of_customer(a.w, a.d, c))?
            .last()
        {
            Some((key, _)) => last_id(key)?,
            None => None,
        };
        let mut output = OrderStatusOutput {
            c_id: c,
            balance_cents: customer.balance_cents,
            o_id: latest,
            carrier_id: None,
            lines: Vec::new(),
        };
        if let Some(o) = latest {
            let order: Order = row(tx, &keys::order(a.w, a.d, o))?;
            output.carrier_id = order.carrier_id;
            for (key, value) in tx.scan_prefix(&keys::order_lines(a.w, a.d, o))? {
                let line: OrderLine = decode(&key, &value)?;
                output.lines.push(LineStatus {
                    i_id: line.i_id,
                    supply_w_id: line.supply_w_id,
                    quantity: line.quantity,
                    amount_cents: line.amount_cents,
                    delivery_d: line.delivery_d,
                });
            }
        }
        Ok(output)
    }
}

/// Delivery's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryArgs {
    /// W_ID.
    pub w: u32,
    /// O_CARRIER_ID.
    pub carrier_id: u32,
    /// OL_DELIVERY_D.
    pub date: u64,
}

/// Delivery's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryOutput {
    /// (D_ID, O_ID) of every order delivered.
    pub delivered: Vec<(u32, u32)>,
    /// Districts with no undelivered order.
    pub skipped: u32,
}

/// TPC-C Delivery (clause 2.7), run as one transaction over the warehouse's ten districts.
pub struct Delivery;

impl Procedure for Delivery {
    const NAME: &'static str = "tpcc.delivery";
    type Args = DeliveryArgs;
    type Output = DeliveryOutput;

    fn footprint(a: &DeliveryArgs) -> Footprint {
        Footprint::new()
            .write_prefix(keys::of_warehouse(NEW_ORDER, a.w))
            .write_prefix(keys::of_warehouse(ORDERS, a.w))
            .write_prefix(keys::of_warehouse(ORDER_LINE, a.w))
            .write_prefix(keys::of_warehouse(CUSTOMER, a.w))
    }

    fn execute(tx: &mut Txn<'_>, a: DeliveryArgs) -> Result<DeliveryOutput, Abort> {
        let mut output = DeliveryOutput {
            delivered: Vec::new(),
            skipped: 0,
        };
        for d in 1..=DISTRICTS {
            let oldest = match tx.first_in(&keys::of_district(NEW_ORDER, a.w, d))? {
                Some((key, _)) => last_id(&key)?,
                None => None,
            };
            let Some(o) = oldest else {
                output.skipped += 1;
                continue;
            };
            tx.delete(&keys::new_order(a.w, d, o))?;
            let order_key = keys::order(a.w, d, o);
            let mut order: Order = row(tx, &order_key)?;
            order.carrier_id = Some(a.carrier_id);
            let c = order.c_id;
            tx.put_as(order_key, &order)?;
            let mut amount: i64 = 0;
            for (key, value) in tx.scan_prefix(&keys::order_lines(a.w, d, o))? {
                let mut line: OrderLine = decode(&key, &value)?;
                line.delivery_d = Some(a.date);
                amount = amount
                    .checked_add(line.amount_cents)
                    .or_overflow("sum(OL_AMOUNT)")?;
                tx.put_as(key, &line)?;
            }
            let customer_key = keys::customer(a.w, d, c);
            let mut customer: Customer = row(tx, &customer_key)?;
            customer.balance_cents = customer
                .balance_cents
                .checked_add(amount)
                .or_overflow("C_BALANCE")?;
            customer.delivery_cnt = customer
                .delivery_cnt
                .checked_add(1)
                .or_overflow("C_DELIVERY_CNT")?;
            tx.put_as(customer_key, &customer)?;
            output.delivered.push((d, o));
        }
        Ok(output)
    }
}

/// Stock-Level's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevelArgs {
    /// W_ID.
    pub w: u32,
    /// D_ID.
    pub d: u32,
    /// Items with less stock than this count (10–20).
    pub threshold: i32,
}

/// Stock-Level's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevelOutput {
    /// Distinct items of the district's last 20 orders below the threshold.
    pub low_stock: u32,
}

/// TPC-C Stock-Level (clause 2.8), read-only.
pub struct StockLevel;

impl Procedure for StockLevel {
    const NAME: &'static str = "tpcc.stock_level";
    type Args = StockLevelArgs;
    type Output = StockLevelOutput;

    fn footprint(a: &StockLevelArgs) -> Footprint {
        Footprint::new()
            .read(keys::district(a.w, a.d))
            .read_prefix(keys::of_district(ORDER_LINE, a.w, a.d))
            .read_prefix(keys::of_warehouse(STOCK, a.w))
    }

    fn execute(tx: &mut Txn<'_>, a: StockLevelArgs) -> Result<StockLevelOutput, Abort> {
        let district: District = row(tx, &keys::district(a.w, a.d))?;
        let mut items = BTreeSet::new();
        for o in district.next_o_id.saturating_sub(20)..district.next_o_id {
            for (key, value) in tx.scan_prefix(&keys::order_lines(a.w, a.d, o))? {
                let line: OrderLine = decode(&key, &value)?;
                items.insert(line.i_id);
            }
        }
        let mut low_stock: u32 = 0;
        for i in items {
            if let Some(stock) = tx.get_as::<Stock>(&keys::stock(a.w, i))?
                && stock.quantity < a.threshold
            {
                low_stock = low_stock.checked_add(1).or_overflow("low stock count")?;
            }
        }
        Ok(StockLevelOutput { low_stock })
    }
}

/// The reconnaissance read of a by-last-name Payment or Order-Status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerByLastArgs {
    /// C_W_ID.
    pub w: u32,
    /// C_D_ID.
    pub d: u32,
    /// C_LAST.
    pub last: String,
}

/// What reconnaissance found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerByLastOutput {
    /// The middle customer of that name, if any.
    pub c_id: Option<u32>,
}

/// Finds the customer a by-last-name call means (read-only; DESIGN.md §6).
pub struct CustomerByLast;

impl Procedure for CustomerByLast {
    const NAME: &'static str = "tpcc.customer_by_last";
    type Args = CustomerByLastArgs;
    type Output = CustomerByLastOutput;

    fn footprint(a: &CustomerByLastArgs) -> Footprint {
        Footprint::new().read_prefix(keys::customers_named(a.w, a.d, &a.last))
    }

    fn execute(tx: &mut Txn<'_>, a: CustomerByLastArgs) -> Result<CustomerByLastOutput, Abort> {
        Ok(CustomerByLastOutput {
            c_id: middle_customer(tx, a.w, a.d, &a.last)?,
        })
    }
}

fn decode<T: DeserializeOwned>(key: &Key, value: &[u8]) -> Result<T, Abort> {
    codec::decode(value).map_err(|e| Abort::BadValue {
        key: key.clone(),
        error: e.0,
    })
}
