//! TPC-C's consistency conditions (clause 3.3.2; `TPCC.md`), checked one warehouse at a
//! time so the same code runs over a simulator's final state and, as the `tpcc.check`
//! procedure, inside a live cluster.
//!
//! Condition 10 spans warehouses: a remote Payment's history row lives with the paying
//! warehouse, its customer with another. Each warehouse reports the customers whose
//! balance is not explained by local history (residuals) and the payments it holds for
//! other warehouses' customers; [`combine`] matches the two.

use super::keys::{self, CUSTOMER, DISTRICT, HISTORY, NEW_ORDER, ORDER_LINE, ORDERS};
use super::rows::{Customer, District, History, Order, OrderLine, Warehouse};
use super::{DISTRICTS, Shape};
use detflow_executor::{Abort, OrOverflow, Procedure, Txn};
use detflow_protocol::{Footprint, Key, Value, codec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A customer: (warehouse, district, id).
pub type CustomerId = (u32, u32, u32);

/// What one warehouse's check found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarehouseCheck {
    /// The first problems found, spelled out.
    pub problems: Vec<String>,
    /// How many problems there were.
    pub problem_count: u64,
    /// Rows checked.
    pub rows: u64,
    /// C_BALANCE − delivered OL_AMOUNT + local H_AMOUNT, for customers where it is not 0;
    /// condition 10 holds when remote payments cancel each one exactly.
    pub residuals: Vec<(CustomerId, i64)>,
    /// H_AMOUNT held here for other warehouses' customers, summed per customer.
    pub remote_payments: Vec<(CustomerId, i64)>,
}

impl WarehouseCheck {
    const SHOWN_MAX: usize = 8;

    fn problem(&mut self, describe: impl FnOnce() -> String) {
        if self.problems.len() < Self::SHOWN_MAX {
            self.problems.push(describe());
        }
        self.problem_count += 1;
    }
}

/// Reads every row under a prefix.
pub type Scan<'a> = dyn FnMut(&Key) -> Result<Vec<(Key, Value)>, Abort> + 'a;

/// Adds `amount` to `total`. Sums of stored amounts can overflow on hostile rows; the check
/// (a procedure too) then aborts rather than panic or wrap.
fn add(total: &mut i64, amount: i64, what: &str) -> Result<(), Abort> {
    *total = total.checked_add(amount).or_overflow(what)?;
    Ok(())
}

fn decode<T: DeserializeOwned>(key: &Key, value: &[u8]) -> Result<T, Abort> {
    codec::decode(value).map_err(|e| Abort::BadValue {
        key: key.clone(),
        error: e.0,
    })
}

/// Checks conditions 1–9 and 12 on warehouse `w` (11 too if `initial`), and gathers what
/// condition 10 needs.
pub fn check_warehouse(
    w: u32,
    shape: &Shape,
    initial: bool,
    scan: &mut Scan<'_>,
) -> Result<WarehouseCheck, Abort> {
    let mut out = WarehouseCheck::default();
    let Some((key, value)) = scan(&keys::warehouse(w))?.into_iter().next() else {
        out.problem(|| format!("warehouse {w} is missing"));
        return Ok(out);
    };
    let warehouse: Warehouse = decode(&key, &value)?;

    let mut districts: BTreeMap<u32, District> = BTreeMap::new();
    for (key, value) in scan(&keys::of_warehouse(DISTRICT, w))? {
        let d = keys::fields(&key).get(1).copied().unwrap_or(0) as u32;
        districts.insert(d, decode(&key, &value)?);
    }
    if districts.len() != DISTRICTS as usize {
        out.problem(|| format!("warehouse {w} has {} districts", districts.len()));
    }
    // 1. W_YTD = sum(D_YTD).
    let mut d_ytd: i64 = 0;
    for district in districts.values() {
        add(&mut d_ytd, district.ytd_cents, "sum(D_YTD)")?;
    }
    if warehouse.ytd_cents != d_ytd {
        out.problem(|| {
            format!(
                "1: W_YTD of {w} is {} but its districts' D_YTD sum to {d_ytd}",
                warehouse.ytd_cents
            )
        });
    }

    // 8, 9 and the local part of 10.
    let mut h_by_district: BTreeMap<u32, i64> = BTreeMap::new();
    let mut h_local: BTreeMap<(u32, u32), i64> = BTreeMap::new();
    let mut h_remote: BTreeMap<CustomerId, i64> = BTreeMap::new();
    for (key, value) in scan(&keys::of_warehouse(HISTORY, w))? {
        let d = keys::fields(&key).get(1).copied().unwrap_or(0) as u32;
        let h: History = decode(&key, &value)?;
        add(
            h_by_district.entry(d).or_default(),
            h.amount_cents,
            "sum(H_AMOUNT)",
        )?;
        let (c, c_d, c_w) = (h.c_id, h.c_d_id, h.c_w_id);
        if c_w == w {
            add(
                h_local.entry((c_d, c)).or_default(),
                h.amount_cents,
                "sum(H_AMOUNT)",
            )?;
        } else {
            let remote = h_remote.entry((c_w, c_d, c)).or_default();
            add(remote, h.amount_cents, "sum(H_AMOUNT)")?;
        }
        out.rows += 1;
    }
    let mut h_total: i64 = 0;
    for h in h_by_district.values() {
        add(&mut h_total, *h, "sum(H_AMOUNT)")?;
    }
    if warehouse.ytd_cents != h_total {
        out.problem(|| {
            format!(
                "8: W_YTD of {w} is {} but its history sums to {h_total}",
                warehouse.ytd_cents
            )
        });
    }
    for (d, district) in &districts {
        let h = h_by_district.get(d).copied().unwrap_or(0);
        if district.ytd_cents != h {
            out.problem(|| {
                format!(
                    "9: D_YTD of ({w}, {d}) is {} but its history sums to {h}",
                    district.ytd_cents
                )
            });
        }
    }

    // Orders, new orders, lines.
    let mut orders: BTreeMap<(u32, u32), Order> = BTreeMap::new();
    for (key, value) in scan(&keys::of_warehouse(ORDERS, w))? {
        let f = keys::fields(&key);
        let (d, o) = (
            f.get(1).copied().unwrap_or(0),
            f.get(2).copied().unwrap_or(0),
        );
        orders.insert((d as u32, o as u32), decode(&key, &value)?);
        out.rows += 1;
    }
    let mut new_orders: BTreeSet<(u32, u32)> = BTreeSet::new();
    for (key, _) in scan(&keys::of_warehouse(NEW_ORDER, w))? {
        let f = keys::fields(&key);
        new_orders.insert((
            f.get(1).copied().unwrap_or(0) as u32,
            f.get(2).copied().unwrap_or(0) as u32,
        ));
        out.rows += 1;
    }
    let mut lines_of: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    let mut lines_by_district: BTreeMap<u32, u64> = BTreeMap::new();
    let mut delivered: BTreeMap<(u32, u32), i64> = BTreeMap::new();
    for (key, value) in scan(&keys::of_warehouse(ORDER_LINE, w))? {
        let f = keys::fields(&key);
        let (d, o) = (
            f.get(1).copied().unwrap_or(0) as u32,
            f.get(2).copied().unwrap_or(0) as u32,
        );
        let line: OrderLine = decode(&key, &value)?;
        *lines_of.entry((d, o)).or_default() += 1;
        *lines_by_district.entry(d).or_default() += 1;
        out.rows += 1;
        let Some(order) = orders.get(&(d, o)) else {
            out.problem(|| format!("order line {key} has no order"));
            continue;
        };
        // 7. OL_DELIVERY_D is null exactly when O_CARRIER_ID is.
        if line.delivery_d.is_none() != order.carrier_id.is_none() {
            out.problem(|| {
                format!(
                    "7: line {key} has delivery date {:?}, its order carrier {:?}",
                    line.delivery_d, order.carrier_id
                )
            });
        }
        if line.delivery_d.is_some() {
            let sum = delivered.entry((d, order.c_id)).or_default();
            add(sum, line.amount_cents, "sum(OL_AMOUNT)")?;
        }
    }

    for (&d, district) in &districts {
        let of_d = |&(od, _): &(u32, u32)| od == d;
        let max_o = orders.keys().filter(|k| of_d(k)).map(|&(_, o)| o).max();
        let no: Vec<u32> = new_orders
            .iter()
            .filter(|k| of_d(k))
            .map(|&(_, o)| o)
            .collect();
        // 2. D_NEXT_O_ID − 1 = max(O_ID) = max(NO_O_ID). In i64, so a D_NEXT_O_ID of 0 is
        // a violation rather than an underflow.
        let last_o = i64::from(district.next_o_id) - 1;
        if max_o.map(i64::from) != Some(last_o)
            || no.last().is_some_and(|&m| i64::from(m) != last_o)
        {
            out.problem(|| {
                format!(
                    "2: district ({w}, {d}): D_NEXT_O_ID {}, max O_ID {max_o:?}, max NO_O_ID {:?}",
                    district.next_o_id,
                    no.last()
                )
            });
        }
        // 3. max(NO_O_ID) − min(NO_O_ID) + 1 = count(NEW-ORDER).
        if let (Some(&min), Some(&max)) = (no.first(), no.last())
            && u64::from(max - min) + 1 != no.len() as u64
        {
            out.problem(|| {
                format!(
                    "3: district ({w}, {d}): new orders {min}..={max} but {} rows",
                    no.len()
                )
            });
        }
        // 4. sum(O_OL_CNT) = count(ORDER-LINE).
        let ol_cnt: u64 = orders
            .iter()
            .filter(|(k, _)| of_d(k))
            .map(|(_, o)| u64::from(o.ol_cnt))
            .sum();
        let lines = lines_by_district.get(&d).copied().unwrap_or(0);
        if ol_cnt != lines {
            out.problem(|| {
                format!("4: district ({w}, {d}): sum(O_OL_CNT) {ol_cnt}, order lines {lines}")
            });
        }
        // 11. count(ORDER) − count(NEW-ORDER) = 2100 (scaled), right after loading.
        let count = orders.keys().filter(|k| of_d(k)).count();
        // In i64: the shape comes with the call, and a nonsensical one (more new orders
        // than orders) is a violation, not an underflow.
        let expected = i64::from(shape.orders) - i64::from(shape.new_orders);
        if initial && count as i64 - no.len() as i64 != expected {
            out.problem(|| {
                format!(
                    "11: district ({w}, {d}): {count} orders, {} new orders; expected a difference of {expected}",
                    no.len()
                )
            });
        }
    }
    for (&(d, o), order) in &orders {
        // 5. O_CARRIER_ID is null exactly when a NEW-ORDER row exists.
        if order.carrier_id.is_none() != new_orders.contains(&(d, o)) {
            out.problem(|| {
                format!(
                    "5: order ({w}, {d}, {o}) has carrier {:?} and new-order row {}",
                    order.carrier_id,
                    new_orders.contains(&(d, o))
                )
            });
        }
        // 6. O_OL_CNT = its lines.
        let lines = lines_of.get(&(d, o)).copied().unwrap_or(0);
        if order.ol_cnt != lines {
            out.problem(|| {
                format!(
                    "6: order ({w}, {d}, {o}) has O_OL_CNT {} and {lines} lines",
                    order.ol_cnt
                )
            });
        }
    }
    for &(d, o) in &new_orders {
        if !orders.contains_key(&(d, o)) {
            out.problem(|| format!("new-order row ({w}, {d}, {o}) has no order"));
        }
    }

    // 12 and the local part of 10.
    for (key, value) in scan(&keys::of_warehouse(CUSTOMER, w))? {
        let f = keys::fields(&key);
        let (d, c) = (
            f.get(1).copied().unwrap_or(0) as u32,
            f.get(2).copied().unwrap_or(0) as u32,
        );
        let customer: Customer = decode(&key, &value)?;
        out.rows += 1;
        let delivered = delivered.get(&(d, c)).copied().unwrap_or(0);
        let paid_or_owed =
            i128::from(customer.balance_cents) + i128::from(customer.ytd_payment_cents);
        if paid_or_owed != i128::from(delivered) {
            out.problem(|| {
                format!(
                    "12: customer ({w}, {d}, {c}): C_BALANCE {} + C_YTD_PAYMENT {} != delivered {delivered}",
                    customer.balance_cents, customer.ytd_payment_cents
                )
            });
        }
        let residual = customer
            .balance_cents
            .checked_sub(delivered)
            .and_then(|r| r.checked_add(h_local.get(&(d, c)).copied().unwrap_or(0)))
            .or_overflow("C_BALANCE residual")?;
        if residual != 0 {
            out.residuals.push(((w, d, c), residual));
        }
    }
    out.remote_payments = h_remote.into_iter().collect();
    Ok(out)
}

/// Combines every warehouse's check: condition 10 across warehouses, and every problem.
/// `Ok` carries a one-line summary.
pub fn combine(checks: &[WarehouseCheck]) -> Result<String, String> {
    let mut problems: Vec<String> = Vec::new();
    let mut total: u64 = 0;
    let mut rows: u64 = 0;
    // Summed in i128: the residuals of many warehouses cannot overflow it.
    let mut balance: BTreeMap<CustomerId, i128> = BTreeMap::new();
    for check in checks {
        problems.extend(check.problems.iter().cloned());
        total = total.saturating_add(check.problem_count);
        rows = rows.saturating_add(check.rows);
        for (c, r) in &check.residuals {
            *balance.entry(*c).or_default() += i128::from(*r);
        }
        for (c, h) in &check.remote_payments {
            *balance.entry(*c).or_default() += i128::from(*h);
        }
    }
    // 10. C_BALANCE = delivered − all H_AMOUNT of the customer, wherever it was paid.
    for (&(w, d, c), &off) in &balance {
        if off != 0 {
            total += 1;
            if problems.len() < 12 {
                problems.push(format!(
                    "10: customer ({w}, {d}, {c}): C_BALANCE is off by {off} cents from delivered − payments"
                ));
            }
        }
    }
    if total == 0 {
        Ok(format!(
            "consistency conditions hold on {} warehouses ({rows} rows)",
            checks.len()
        ))
    } else {
        let more = total.saturating_sub(problems.len() as u64);
        let mut detail = problems.join("; ");
        if more > 0 {
            detail.push_str(&format!("; and {more} more"));
        }
        Err(format!("{total} consistency problems: {detail}"))
    }
}

/// `tpcc.check`'s arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckArgs {
    /// The warehouse.
    pub w: u32,
    /// The population's shape (condition 11 depends on it).
    pub shape: Shape,
    /// Also check condition 11, which holds only right after loading.
    pub initial: bool,
}

/// Checks one warehouse's consistency conditions inside the cluster, as one read-only
/// transaction over everything the warehouse holds.
pub struct Check;

impl Procedure for Check {
    const NAME: &'static str = "tpcc.check";
    type Args = CheckArgs;
    type Output = WarehouseCheck;

    fn footprint(a: &CheckArgs) -> Footprint {
        WAREHOUSE_TABLES.iter().fold(Footprint::new(), |fp, table| {
            fp.read_prefix(keys::of_warehouse(table, a.w))
        })
    }

    fn execute(tx: &mut Txn<'_>, a: CheckArgs) -> Result<WarehouseCheck, Abort> {
        check_warehouse(a.w, &a.shape, a.initial, &mut |prefix| {
            tx.scan_prefix(prefix)
        })
    }
}

/// The tables a check reads.
const WAREHOUSE_TABLES: &[&str] = &[
    keys::WAREHOUSE,
    DISTRICT,
    CUSTOMER,
    HISTORY,
    NEW_ORDER,
    ORDERS,
    ORDER_LINE,
];
