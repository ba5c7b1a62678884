//! TPC-C (`../shared/TPCC.md`): nine tables partitioned by warehouse with `item`
//! replicated, the population rules, all five transactions in the standard mix (or the
//! New-Order + Payment 50/50 mix research systems report), by-last-name customers through
//! reconnaissance, and the consistency conditions.
//!
//! Scale: [`Shape::full`] is the standard population per warehouse (100,000 items, 10
//! districts of 3,000 customers with 3,000 orders, 900 of them undelivered);
//! [`Shape::scaled_down`] divides items, customers and orders by a factor for tests and
//! simulation. The generator draws no think time and no keying time: it measures
//! throughput, not the standard's 12.86 tpmC per warehouse ceiling.

pub mod check;
pub mod keys;
pub mod procs;
pub mod rows;

use crate::{Answer, Audit, Executed, LiveCheck, Request, Violation, Workload, committed_output};
use check::{Check, CheckArgs, WarehouseCheck, check_warehouse, combine};
use detflow_executor::{Abort, FieldType, Procedure, Service, Table};
use detflow_protocol::{DetRng, Key, PartitionScheme, TableRule, Value, codec};
use procs::{
    CustomerByLast, CustomerByLastArgs, CustomerByLastOutput, CustomerRef, Delivery, DeliveryArgs,
    DeliveryOutput, NewOrder, NewOrderArgs, NewOrderLine, OrderStatus, OrderStatusArgs, Payment,
    PaymentArgs, StockLevel, StockLevelArgs,
};
use rows::{Customer, District, History, Item, Order, OrderLine, Stock, Warehouse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Districts per warehouse (fixed by the standard).
pub const DISTRICTS: u32 = 10;

/// How often a session reconnoitres again after a `FootprintChanged` abort before it
/// gives the call up.
pub const RECON_ATTEMPTS_MAX: u32 = 5;

/// The last-name syllables (clause 4.3.2.3).
const SYLLABLES: [&str; 10] = [
    "BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING",
];

/// NURand's run-time constants C (clause 2.1.6); C_LAST differs from the load-time one by
/// 66, inside the standard's allowed delta.
const C_LAST_LOAD: u64 = 157;
const C_LAST_RUN: u64 = 223;
const C_ID: u64 = 259;
const C_ITEM: u64 = 7_911;

/// The seed of the population: every node generates the same rows.
const LOAD_SEED: u64 = 0x7063_635f_6c6f_6164;

/// The population per warehouse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Items (100,000 at full size); stock rows per warehouse.
    pub items: u32,
    /// Customers per district (3,000); also the initial orders per district.
    pub customers: u32,
    /// Initial orders per district (3,000).
    pub orders: u32,
    /// Undelivered ones among them, the newest (900).
    pub new_orders: u32,
}

impl Shape {
    /// The standard's population.
    pub fn full() -> Shape {
        Shape {
            items: 100_000,
            customers: 3_000,
            orders: 3_000,
            new_orders: 900,
        }
    }

    /// The standard's population with items, customers and orders divided by `factor`
    /// (at least 1): 100 gives 1,000 items and 30 customers per district.
    pub fn scaled_down(factor: u32) -> Shape {
        let factor = factor.max(1);
        let full = Shape::full();
        Shape {
            items: (full.items / factor).max(20),
            customers: (full.customers / factor).max(3),
            orders: (full.orders / factor).max(3),
            new_orders: (full.new_orders / factor).max(1),
        }
    }

    /// Rows a warehouse holds after loading (for progress reports).
    pub fn rows_per_warehouse(&self) -> u64 {
        let per_district = 3 * u64::from(self.customers) // customer, index, history
            + 2 * u64::from(self.orders) // order and its index entry
            + 10 * u64::from(self.orders) // about ten lines each
            + u64::from(self.new_orders);
        1 + u64::from(self.items) + u64::from(DISTRICTS) * (1 + per_district)
    }
}

/// Which transactions a session draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mix {
    /// New-Order 45, Payment 43, Order-Status 4, Delivery 4, Stock-Level 4.
    Standard,
    /// New-Order 50, Payment 50, as Calvin-family papers report.
    NewOrderPayment,
}

impl Mix {
    /// Parses `standard` or `new-order-payment`.
    pub fn parse(s: &str) -> Option<Mix> {
        match s {
            "standard" | "full" => Some(Mix::Standard),
            "new-order-payment" | "50-50" => Some(Mix::NewOrderPayment),
            _ => None,
        }
    }

    /// The name [`Mix::parse`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Standard => "standard",
            Mix::NewOrderPayment => "new-order-payment",
        }
    }

    /// A deck of 100 cards with the mix's proportions.
    fn deck(self) -> Vec<Kind> {
        let counts: &[(Kind, usize)] = match self {
            Mix::Standard => &[
                (Kind::NewOrder, 45),
                (Kind::Payment, 43),
                (Kind::OrderStatus, 4),
                (Kind::Delivery, 4),
                (Kind::StockLevel, 4),
            ],
            Mix::NewOrderPayment => &[(Kind::NewOrder, 50), (Kind::Payment, 50)],
        };
        counts
            .iter()
            .flat_map(|&(kind, n)| std::iter::repeat_n(kind, n))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NewOrder,
    Payment,
    OrderStatus,
    Delivery,
    StockLevel,
}

/// TPC-C's size, partitioning and mix.
#[derive(Clone, Debug, PartialEq)]
pub struct TpccConfig {
    /// Warehouses, at least the partition count.
    pub warehouses: u32,
    /// Partitions; warehouses are split into contiguous ranges, one per partition.
    pub partitions: u32,
    /// The population per warehouse.
    pub shape: Shape,
    /// The transaction mix.
    pub mix: Mix,
}

impl TpccConfig {
    /// TPC-C for `partitions` partitions as `options` size it: one warehouse per partition,
    /// full size and the standard mix unless they say otherwise.
    pub fn from_options(partitions: u32, options: &crate::Options) -> TpccConfig {
        TpccConfig {
            warehouses: options.warehouses.unwrap_or(partitions),
            partitions,
            shape: Shape::scaled_down(options.scale_down.unwrap_or(1)),
            mix: options.mix.unwrap_or(Mix::Standard),
        }
    }
}

/// The TPC-C workload: loader, generator and checker.
#[derive(Clone, Debug)]
pub struct Tpcc {
    config: TpccConfig,
    deck: Vec<Kind>,
    clock: u64,
    audit: Audit,
}

/// A by-last-name call waiting for its reconnaissance: carried in [`Request::context`].
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Pending {
    Payment(PaymentArgs, u32),
    OrderStatus(OrderStatusArgs, u32),
}

/// The names of the audited quantities (see [`audit_lines`]).
pub mod audit {
    /// Remote order lines / order lines.
    pub const REMOTE_LINES: &str = "remote order lines";
    /// Remote Payments / Payments.
    pub const REMOTE_PAYMENTS: &str = "remote payments";
    /// By-last-name Payments and Order-Statuses / all of them.
    pub const BY_LAST_NAME: &str = "payment and order-status by last name";
    /// Rolled-back New-Orders / New-Orders.
    pub const ROLLBACKS: &str = "new-order rollbacks";
    /// Order lines / New-Orders.
    pub const LINES_PER_ORDER: &str = "order lines per order";
    /// Skipped districts / districts Delivery visited.
    pub const SKIPPED_DELIVERIES: &str = "skipped deliveries";
    /// Reconnaissance retries after `FootprintChanged` / by-last-name calls.
    pub const RECON_RETRIES: &str = "reconnaissance retries";
}

/// One audited quantity of a run against its TPC-C band.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditLine {
    /// What.
    pub name: &'static str,
    /// As measured: a percentage, or a mean for lines per order.
    pub measured: Option<f64>,
    /// The allowed band, inclusive.
    pub band: (f64, f64),
    /// Inside the band (true when not applicable, e.g. remote quantities with one
    /// warehouse, or nothing counted).
    pub ok: bool,
}

/// The audit percentages of `audit` against TPC-C's bands (TPCC.md).
pub fn audit_lines(audit: &Audit, warehouses: u32, mix: Mix) -> Vec<AuditLine> {
    let pct = |name| audit.ratio(name).map(|r| 100.0 * r);
    let line =
        |name: &'static str, measured: Option<f64>, band: (f64, f64), applies: bool| AuditLine {
            name,
            measured,
            band,
            ok: !applies || measured.is_none_or(|m| m >= band.0 && m <= band.1),
        };
    let remote = warehouses > 1;
    let mut lines = vec![
        line(
            audit::REMOTE_LINES,
            pct(audit::REMOTE_LINES),
            (0.95, 1.05),
            remote,
        ),
        line(
            audit::REMOTE_PAYMENTS,
            pct(audit::REMOTE_PAYMENTS),
            (14.0, 16.0),
            remote,
        ),
        line(
            audit::BY_LAST_NAME,
            pct(audit::BY_LAST_NAME),
            (57.0, 63.0),
            true,
        ),
        line(audit::ROLLBACKS, pct(audit::ROLLBACKS), (0.9, 1.1), true),
        line(
            audit::LINES_PER_ORDER,
            audit.ratio(audit::LINES_PER_ORDER),
            (9.5, 10.5),
            true,
        ),
    ];
    if mix == Mix::Standard {
        lines.push(line(
            audit::SKIPPED_DELIVERIES,
            pct(audit::SKIPPED_DELIVERIES),
            (0.0, 1.0),
            true,
        ));
    }
    lines
}

impl Tpcc {
    /// TPC-C as `config` describes it.
    ///
    /// # Panics
    ///
    /// If there are fewer warehouses than partitions or no partitions.
    pub fn new(config: TpccConfig) -> Tpcc {
        assert!(config.partitions >= 1, "at least one partition");
        assert!(
            config.warehouses >= config.partitions,
            "every partition needs a warehouse"
        );
        Tpcc {
            deck: Vec::new(),
            clock: 0,
            audit: Audit::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TpccConfig {
        &self.config
    }

    /// The first warehouse of partition `p`.
    fn first_warehouse(&self, p: u32) -> u32 {
        1 + (u64::from(p) * u64::from(self.config.warehouses) / u64::from(self.config.partitions))
            as u32
    }

    /// Warehouse `w`'s rows (every table but `item`), in no particular order.
    pub fn load_warehouse(&self, w: u32, rows: &mut Vec<(Key, Value)>) {
        let shape = &self.config.shape;
        let mut rng = DetRng::new(LOAD_SEED ^ u64::from(w).rotate_left(32));
        let customers = shape.customers;
        let history_cents = 1_000;
        let d_ytd = i64::from(customers) * history_cents;
        rows.push((
            keys::warehouse(w),
            codec::encode(&Warehouse {
                name: astring(&mut rng, 6, 10),
                address: address(&mut rng),
                tax_bp: rng.range(0, 2_000) as u32,
                ytd_cents: i64::from(DISTRICTS) * d_ytd,
            }),
        ));
        for i in 1..=shape.items {
            rows.push((
                keys::stock(w, i),
                codec::encode(&Stock {
                    quantity: rng.range(10, 100) as i32,
                    dist: (0..DISTRICTS).map(|_| astring(&mut rng, 24, 24)).collect(),
                    ytd: 0,
                    order_cnt: 0,
                    remote_cnt: 0,
                    data: data_string(&mut rng),
                }),
            ));
        }
        for d in 1..=DISTRICTS {
            rows.push((
                keys::district(w, d),
                codec::encode(&District {
                    name: astring(&mut rng, 6, 10),
                    address: address(&mut rng),
                    tax_bp: rng.range(0, 2_000) as u32,
                    ytd_cents: d_ytd,
                    next_o_id: shape.orders + 1,
                    next_h_id: customers + 1,
                }),
            ));
            for c in 1..=customers {
                let last = if c <= 1_000 {
                    last_name(c - 1)
                } else {
                    last_name(nurand(&mut rng, 255, 0, 999, C_LAST_LOAD) as u32)
                };
                let first = astring(&mut rng, 8, 16);
                rows.push((
                    keys::customer_last(w, d, &last, &first, c),
                    codec::encode(&()),
                ));
                rows.push((
                    keys::customer(w, d, c),
                    codec::encode(&Customer {
                        first,
                        middle: "OE".into(),
                        last,
                        address: address(&mut rng),
                        phone: nstring(&mut rng, 16),
                        since: 0,
                        credit: if rng.chance(0.1) { "BC" } else { "GC" }.into(),
                        credit_lim_cents: 5_000_000,
                        discount_bp: rng.range(0, 5_000) as u32,
                        balance_cents: -history_cents,
                        ytd_payment_cents: history_cents,
                        payment_cnt: 1,
                        delivery_cnt: 0,
                        data: astring(&mut rng, 300, 500),
                    }),
                ));
                rows.push((
                    keys::history(w, d, c),
                    codec::encode(&History {
                        c_id: c,
                        c_d_id: d,
                        c_w_id: w,
                        date: 0,
                        amount_cents: history_cents,
                        data: astring(&mut rng, 12, 24),
                    }),
                ));
            }
            // Orders go to a random permutation of the customers.
            let mut owners: Vec<u32> = (1..=customers).collect();
            for i in (1..owners.len()).rev() {
                owners.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let first_new = shape.orders - shape.new_orders + 1;
            for o in 1..=shape.orders {
                let c = owners[(o as usize - 1) % owners.len()];
                let delivered = o < first_new;
                let ol_cnt = rng.range(5, 15) as u32;
                rows.push((
                    keys::order(w, d, o),
                    codec::encode(&Order {
                        c_id: c,
                        entry_d: 0,
                        carrier_id: delivered.then(|| rng.range(1, 10) as u32),
                        ol_cnt,
                        all_local: true,
                    }),
                ));
                rows.push((keys::order_customer(w, d, c, o), codec::encode(&())));
                if !delivered {
                    rows.push((keys::new_order(w, d, o), codec::encode(&())));
                }
                for n in 1..=ol_cnt {
                    rows.push((
                        keys::order_line(w, d, o, n),
                        codec::encode(&OrderLine {
                            i_id: rng.range(1, u64::from(shape.items)) as u32,
                            supply_w_id: w,
                            delivery_d: delivered.then_some(0),
                            quantity: 5,
                            amount_cents: if delivered {
                                0
                            } else {
                                rng.range(1, 999_999) as i64
                            },
                            dist_info: astring(&mut rng, 24, 24),
                        }),
                    ));
                }
            }
        }
    }

    /// The replicated `item` rows.
    pub fn load_items(&self, rows: &mut Vec<(Key, Value)>) {
        let mut rng = DetRng::new(LOAD_SEED);
        for i in 1..=self.config.shape.items {
            rows.push((
                keys::item(i),
                codec::encode(&Item {
                    im_id: rng.range(1, 10_000) as u32,
                    name: astring(&mut rng, 14, 24),
                    price_cents: rng.range(100, 10_000) as i64,
                    data: data_string(&mut rng),
                }),
            ));
        }
    }

    /// The call that checks warehouse `w`'s consistency conditions in a cluster
    /// (`initial`: also condition 11).
    pub fn check_request(&self, w: u32, initial: bool) -> Request {
        Request::new(
            Check::NAME,
            codec::encode(&CheckArgs {
                w,
                shape: self.config.shape,
                initial,
            }),
        )
    }

    /// The consistency conditions of every warehouse checked in a live cluster, through
    /// [`Tpcc::check_request`] (`initial`: condition 11 too, which holds only right after
    /// loading). Run it while no other load runs: each warehouse is checked at its own
    /// position in the order.
    pub fn consistency_check(&self, initial: bool) -> LiveTpcc {
        LiveTpcc {
            config: self.config.clone(),
            initial,
            next_warehouse: 1,
            checks: Vec::new(),
            failure: None,
        }
    }

    /// Combines the outputs of [`Tpcc::check_request`] for every warehouse.
    pub fn combine_checks(outputs: &[WarehouseCheck]) -> Result<String, String> {
        combine(outputs)
    }

    /// Checks every warehouse of `state`.
    fn check_state(&self, state: &BTreeMap<Key, Value>, initial: bool) -> Result<(), Violation> {
        let mut scan = |prefix: &Key| -> Result<Vec<(Key, Value)>, Abort> {
            Ok(state
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        };
        let mut checks = Vec::new();
        for w in 1..=self.config.warehouses {
            let check =
                check_warehouse(w, &self.config.shape, initial, &mut scan).map_err(|e| {
                    Violation {
                        workload: "tpcc",
                        detail: format!("warehouse {w} cannot be checked: {e}"),
                    }
                })?;
            checks.push(check);
        }
        combine(&checks).map(|_| ()).map_err(|detail| Violation {
            workload: "tpcc",
            detail,
        })
    }

    fn warehouse(&self, rng: &mut DetRng) -> u32 {
        rng.range(1, u64::from(self.config.warehouses)) as u32
    }

    /// A warehouse other than `w` (only when there are two or more).
    fn other_warehouse(&self, rng: &mut DetRng, w: u32) -> u32 {
        let other = rng.range(1, u64::from(self.config.warehouses) - 1) as u32;
        if other >= w { other + 1 } else { other }
    }

    fn customer_id(&self, rng: &mut DetRng) -> u32 {
        let n = u64::from(self.config.shape.customers);
        nurand(rng, scaled_a(1_023, n, 3_000), 1, n, C_ID) as u32
    }

    /// A last name that some customer of every district has.
    fn last_name(&self, rng: &mut DetRng) -> String {
        let names = u64::from(self.config.shape.customers.min(1_000));
        last_name(nurand(rng, scaled_a(255, names, 1_000), 0, names - 1, C_LAST_RUN) as u32)
    }

    fn customer(&self, rng: &mut DetRng) -> Result<CustomerRef, String> {
        if rng.below(100) < 60 {
            Err(self.last_name(rng))
        } else {
            Ok(CustomerRef::Id(self.customer_id(rng)))
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn new_order(&mut self, rng: &mut DetRng) -> Request {
        let w = self.warehouse(rng);
        let d = rng.range(1, u64::from(DISTRICTS)) as u32;
        let c = self.customer_id(rng);
        let items = u64::from(self.config.shape.items);
        let count = rng.range(5, 15) as usize;
        let rollback = rng.below(100) == 0;
        let mut lines = Vec::with_capacity(count);
        for n in 0..count {
            let i_id = if rollback && n + 1 == count {
                self.config.shape.items + 1
            } else {
                nurand(rng, scaled_a(8_191, items, 100_000), 1, items, C_ITEM) as u32
            };
            let supply_w_id = if self.config.warehouses > 1 && rng.below(100) == 0 {
                self.other_warehouse(rng, w)
            } else {
                w
            };
            lines.push(NewOrderLine {
                i_id,
                supply_w_id,
                quantity: rng.range(1, 10) as u32,
            });
        }
        let entry_d = self.tick();
        request::<NewOrder>(&NewOrderArgs {
            w,
            d,
            c,
            lines,
            entry_d,
        })
    }

    fn payment(&mut self, rng: &mut DetRng) -> Request {
        let w = self.warehouse(rng);
        let d = rng.range(1, u64::from(DISTRICTS)) as u32;
        let (c_w, c_d) = if self.config.warehouses > 1 && rng.below(100) < 15 {
            (
                self.other_warehouse(rng, w),
                rng.range(1, u64::from(DISTRICTS)) as u32,
            )
        } else {
            (w, d)
        };
        let customer = self.customer(rng);
        let amount_cents = rng.range(100, 500_000) as i64;
        let date = self.tick();
        let args = |customer| PaymentArgs {
            w,
            d,
            c_w,
            c_d,
            customer,
            amount_cents,
            date,
        };
        match customer {
            Ok(by_id) => request::<Payment>(&args(by_id)),
            Err(last) => reconnoitre(Pending::Payment(
                args(CustomerRef::Last { last, c_id: 0 }),
                1,
            )),
        }
    }

    fn order_status(&mut self, rng: &mut DetRng) -> Request {
        let w = self.warehouse(rng);
        let d = rng.range(1, u64::from(DISTRICTS)) as u32;
        match self.customer(rng) {
            Ok(by_id) => request::<OrderStatus>(&OrderStatusArgs {
                w,
                d,
                customer: by_id,
            }),
            Err(last) => reconnoitre(Pending::OrderStatus(
                OrderStatusArgs {
                    w,
                    d,
                    customer: CustomerRef::Last { last, c_id: 0 },
                },
                1,
            )),
        }
    }

    /// Counts a finished Payment or Order-Status for the audit.
    fn count_customer_call(&mut self, by_last: bool, remote: Option<bool>) {
        self.audit.count(audit::BY_LAST_NAME, u64::from(by_last), 1);
        if let Some(remote) = remote {
            self.audit
                .count(audit::REMOTE_PAYMENTS, u64::from(remote), 1);
        }
    }
}

fn request<P: Procedure>(args: &P::Args) -> Request {
    Request::new(P::NAME, codec::encode(args))
}

impl Pending {
    /// Which reconnaissance this is, from 1.
    fn attempt(&self) -> u32 {
        match self {
            Pending::Payment(_, n) | Pending::OrderStatus(_, n) => *n,
        }
    }

    /// The next attempt after a `FootprintChanged` abort.
    fn retried(self) -> Pending {
        match self {
            Pending::Payment(a, n) => Pending::Payment(a, n + 1),
            Pending::OrderStatus(a, n) => Pending::OrderStatus(a, n + 1),
        }
    }

    /// The customer's district and how it is named.
    fn customer(&self) -> (u32, u32, &CustomerRef) {
        match self {
            Pending::Payment(a, _) => (a.c_w, a.c_d, &a.customer),
            Pending::OrderStatus(a, _) => (a.w, a.d, &a.customer),
        }
    }

    /// The call, naming the customer reconnaissance found, with `self` as its context.
    fn resolved(self, found: u32) -> Request {
        let context = codec::encode(&self);
        let resolve = |customer: &mut CustomerRef| {
            if let CustomerRef::Last { c_id, .. } = customer {
                *c_id = found;
            }
        };
        let mut call = match self {
            Pending::Payment(mut a, _) => {
                resolve(&mut a.customer);
                request::<Payment>(&a)
            }
            Pending::OrderStatus(mut a, _) => {
                resolve(&mut a.customer);
                request::<OrderStatus>(&a)
            }
        };
        call.context = context;
        call
    }
}

/// The reconnaissance read for `pending`.
fn reconnoitre(pending: Pending) -> Request {
    let (w, d, CustomerRef::Last { last, .. }) = pending.customer() else {
        unreachable!("only by-last-name calls are reconnoitred")
    };
    let mut request = request::<CustomerByLast>(&CustomerByLastArgs {
        w,
        d,
        last: last.clone(),
    });
    request.context = codec::encode(&pending);
    request
}

impl Workload for Tpcc {
    fn name(&self) -> &'static str {
        "tpcc"
    }

    fn read_only_procedures(&self) -> &'static [&'static str] {
        &[CustomerByLast::NAME, OrderStatus::NAME, StockLevel::NAME]
    }

    /// Every TPC-C table, partitioned as [`Workload::scheme`] says (row schemas are not
    /// declared yet).
    fn services(&self) -> Vec<Service> {
        let scheme = self.scheme();
        let service = scheme
            .tables
            .iter()
            .fold(Service::new("tpcc"), |service, (table, _)| {
                service.table(schema(crate::table_in(&scheme, table)))
            })
            .procedure::<NewOrder>()
            .procedure::<Payment>()
            .procedure::<OrderStatus>()
            .procedure::<Delivery>()
            .procedure::<StockLevel>()
            .procedure::<CustomerByLast>()
            .procedure::<Check>();
        vec![service]
    }

    fn scheme(&self) -> PartitionScheme {
        let splits = |table: &str| {
            (1..self.config.partitions)
                .map(|p| keys::of_warehouse(table, self.first_warehouse(p)))
                .collect()
        };
        keys::BY_WAREHOUSE.iter().fold(
            PartitionScheme::hashed(self.config.partitions)
                .table(keys::ITEM, TableRule::Replicated),
            |scheme, table| {
                scheme.table(
                    table,
                    TableRule::Range {
                        splits: splits(table),
                    },
                )
            },
        )
    }

    fn load(&self) -> Vec<(Key, Value)> {
        let mut rows = Vec::new();
        self.load_items(&mut rows);
        for w in 1..=self.config.warehouses {
            self.load_warehouse(w, &mut rows);
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Generates only the warehouses whose row `wanted` accepts (each warehouse's rows live
    /// together), and the items if it accepts them.
    fn load_where(&self, wanted: &dyn Fn(&Key) -> bool) -> Vec<(Key, Value)> {
        let mut rows = Vec::new();
        if wanted(&keys::item(1)) {
            self.load_items(&mut rows);
        }
        for w in 1..=self.config.warehouses {
            if wanted(&keys::warehouse(w)) {
                self.load_warehouse(w, &mut rows);
            }
        }
        rows.retain(|(k, _)| wanted(k));
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    fn next_call(&mut self, rng: &mut DetRng) -> Request {
        if self.deck.is_empty() {
            self.deck = self.config.mix.deck();
            for i in (1..self.deck.len()).rev() {
                self.deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        match self.deck.pop().unwrap_or(Kind::NewOrder) {
            Kind::NewOrder => self.new_order(rng),
            Kind::Payment => self.payment(rng),
            Kind::OrderStatus => self.order_status(rng),
            Kind::Delivery => {
                let w = self.warehouse(rng);
                let carrier_id = rng.range(1, 10) as u32;
                let date = self.tick();
                request::<Delivery>(&DeliveryArgs {
                    w,
                    carrier_id,
                    date,
                })
            }
            Kind::StockLevel => {
                let w = self.warehouse(rng);
                let d = rng.range(1, u64::from(DISTRICTS)) as u32;
                let threshold = rng.range(10, 20) as i32;
                request::<StockLevel>(&StockLevelArgs { w, d, threshold })
            }
        }
    }

    fn follow_up(&mut self, request: &Request, answer: Answer<'_>) -> Option<Request> {
        match request.procedure {
            CustomerByLast::NAME => {
                let pending: Pending = codec::decode(&request.context).ok()?;
                let Answer::Committed(output) = answer else {
                    return None;
                };
                let found: CustomerByLastOutput = codec::decode(output).ok()?;
                // A name the generator draws always exists; nothing to do otherwise.
                Some(pending.resolved(found.c_id?))
            }
            Payment::NAME | OrderStatus::NAME => {
                let pending = codec::decode::<Pending>(&request.context).ok();
                if let (Answer::Aborted(Abort::FootprintChanged(_)), Some(pending)) =
                    (answer, &pending)
                {
                    self.audit.count(audit::RECON_RETRIES, 1, 0);
                    if pending.attempt() < RECON_ATTEMPTS_MAX {
                        return Some(reconnoitre(pending.clone().retried()));
                    }
                }
                if let Answer::Committed(_) = answer {
                    let by_last = pending.is_some();
                    self.audit
                        .count(audit::RECON_RETRIES, 0, u64::from(by_last));
                    let remote = if request.procedure == Payment::NAME {
                        codec::decode::<PaymentArgs>(&request.args)
                            .ok()
                            .map(|a| a.c_w != a.w)
                    } else {
                        None
                    };
                    self.count_customer_call(by_last, remote);
                }
                None
            }
            NewOrder::NAME => {
                let rolled_back = match answer {
                    Answer::Committed(_) => false,
                    Answer::Aborted(Abort::User(_)) => true,
                    _ => return None,
                };
                if let Ok(a) = codec::decode::<NewOrderArgs>(&request.args) {
                    let lines = a.lines.len() as u64;
                    let remote = a.lines.iter().filter(|l| l.supply_w_id != a.w).count();
                    self.audit
                        .count(audit::ROLLBACKS, u64::from(rolled_back), 1);
                    self.audit.count(audit::LINES_PER_ORDER, lines, 1);
                    self.audit.count(audit::REMOTE_LINES, remote as u64, lines);
                }
                None
            }
            Delivery::NAME => {
                if let Answer::Committed(output) = answer
                    && let Ok(out) = codec::decode::<DeliveryOutput>(output)
                {
                    self.audit.count(
                        audit::SKIPPED_DELIVERIES,
                        u64::from(out.skipped),
                        u64::from(DISTRICTS),
                    );
                }
                None
            }
            _ => None,
        }
    }

    fn audit(&self) -> Audit {
        self.audit.clone()
    }

    fn live_check(&self) -> Option<Box<dyn LiveCheck>> {
        Some(Box::new(self.consistency_check(false)))
    }

    fn check_initial(&self, state: &BTreeMap<Key, Value>) -> Result<(), Violation> {
        self.check_state(state, true)
    }

    fn check(&self, state: &BTreeMap<Key, Value>, _log: &[Executed<'_>]) -> Result<(), Violation> {
        self.check_state(state, false)
    }
}

/// TPC-C's end-to-end check of a live cluster (see [`Tpcc::consistency_check`]): one
/// `tpcc.check` per warehouse, then the conditions that span warehouses.
#[derive(Debug)]
pub struct LiveTpcc {
    config: TpccConfig,
    /// Condition 11 too.
    initial: bool,
    /// The warehouse the next read checks.
    next_warehouse: u32,
    /// The warehouses' checks so far.
    checks: Vec<WarehouseCheck>,
    /// Why the check failed for want of an answer, once it has.
    failure: Option<String>,
}

impl LiveCheck for LiveTpcc {
    fn next_read(&mut self) -> Option<Request> {
        if self.failure.is_some() || self.next_warehouse > self.config.warehouses {
            return None;
        }
        let w = self.next_warehouse;
        self.next_warehouse += 1;
        Some(Request::new(
            Check::NAME,
            codec::encode(&CheckArgs {
                w,
                shape: self.config.shape,
                initial: self.initial,
            }),
        ))
    }

    fn on_answer(&mut self, request: &Request, answer: Answer<'_>) {
        let w = codec::decode::<CheckArgs>(&request.args).map_or(0, |a| a.w);
        let check = committed_output(&format!("checking warehouse {w}"), answer).and_then(|out| {
            codec::decode::<WarehouseCheck>(out)
                .map_err(|e| format!("warehouse {w}'s check does not decode: {}", e.0))
        });
        match check {
            Ok(check) => self.checks.push(check),
            Err(e) => self.failure = Some(e),
        }
    }

    fn verdict(self: Box<Self>) -> Result<String, String> {
        match self.failure {
            Some(failure) => Err(failure),
            None => combine(&self.checks),
        }
    }
}

/// NURand(A, x, y) with run constant `c` (clause 2.1.6).
pub fn nurand(rng: &mut DetRng, a: u64, x: u64, y: u64, c: u64) -> u64 {
    (((rng.range(0, a) | rng.range(x, y)) + c) % (y - x + 1)) + x
}

/// NURand's A for a range of `n` when the standard's range `full` uses `a`: the largest
/// 2^k − 1 not above a × n / full, so scaled-down populations keep the skew.
fn scaled_a(a: u64, n: u64, full: u64) -> u64 {
    let target = (a * n / full + 1).max(1);
    (1u64 << (63 - target.leading_zeros())) - 1
}

/// The last name of number `n` (0..=999): three syllables.
pub fn last_name(n: u32) -> String {
    let n = n as usize % 1_000;
    [n / 100, n / 10 % 10, n % 10]
        .iter()
        .map(|&s| SYLLABLES[s])
        .collect()
}

/// A random alphanumeric string of `min..=max` characters.
fn astring(rng: &mut DetRng, min: u64, max: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = rng.range(min, max);
    (0..len)
        .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]))
        .collect()
}

/// A random numeric string of `len` digits.
fn nstring(rng: &mut DetRng, len: u64) -> String {
    (0..len)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

/// I_DATA and S_DATA: 26–50 characters, 10% containing "ORIGINAL".
fn data_string(rng: &mut DetRng) -> String {
    let mut data = astring(rng, 26, 50);
    if rng.chance(0.1) {
        let at = rng.below(data.len() as u64 - 8) as usize;
        data.replace_range(at..at + 8, "ORIGINAL");
    }
    data
}

fn address(rng: &mut DetRng) -> [String; 5] {
    [
        astring(rng, 10, 20),
        astring(rng, 10, 20),
        astring(rng, 10, 20),
        astring(rng, 2, 2),
        format!("{}11111", nstring(rng, 4)),
    ]
}

#[cfg(test)]
mod tests;

/// Declares the schema of TPC-C table `table` (its key fields after the table name and the
/// columns of `rows`, in their serialized order). Nested values (addresses, the stock's
/// district strings) are `Any`; optional ones (the carrier, the
/// delivery date) are nil until set.
fn schema(table: Table) -> Table {
    use FieldType::{Any, Bool, I64, Str, U64};
    let keyed = |t: Table, fields: &[&str]| fields.iter().fold(t, |t, f| t.key(f, U64));
    let columns =
        |t: Table, cols: &[(&str, FieldType)]| cols.iter().fold(t, |t, (c, ty)| t.column(c, *ty));
    let name = table.name().to_owned();
    match name.as_str() {
        keys::WAREHOUSE => columns(
            keyed(table, &["w_id"]),
            &[
                ("name", Str),
                ("address", Any),
                ("tax_bp", U64),
                ("ytd_cents", I64),
            ],
        ),
        keys::DISTRICT => columns(
            keyed(table, &["w_id", "d_id"]),
            &[
                ("name", Str),
                ("address", Any),
                ("tax_bp", U64),
                ("ytd_cents", I64),
                ("next_o_id", U64),
                ("next_h_id", U64),
            ],
        ),
        keys::CUSTOMER => columns(
            keyed(table, &["w_id", "d_id", "c_id"]),
            &[
                ("first", Str),
                ("middle", Str),
                ("last", Str),
                ("address", Any),
                ("phone", Str),
                ("since", U64),
                ("credit", Str),
                ("credit_lim_cents", I64),
                ("discount_bp", U64),
                ("balance_cents", I64),
                ("ytd_payment_cents", I64),
                ("payment_cnt", U64),
                ("delivery_cnt", U64),
                ("data", Str),
            ],
        ),
        keys::CUSTOMER_LAST => keyed(table, &["w_id", "d_id"])
            .key("last", Str)
            .key("first", Str)
            .key("c_id", U64),
        keys::HISTORY => columns(
            keyed(table, &["w_id", "d_id", "h_id"]),
            &[
                ("c_id", U64),
                ("c_d_id", U64),
                ("c_w_id", U64),
                ("date", U64),
                ("amount_cents", I64),
                ("data", Str),
            ],
        ),
        keys::NEW_ORDER => keyed(table, &["w_id", "d_id", "o_id"]),
        keys::ORDERS => columns(
            keyed(table, &["w_id", "d_id", "o_id"]),
            &[
                ("c_id", U64),
                ("entry_d", U64),
                ("carrier_id", U64),
                ("ol_cnt", U64),
                ("all_local", Bool),
            ],
        ),
        keys::ORDER_CUSTOMER => keyed(table, &["w_id", "d_id", "c_id", "o_id"]),
        keys::ORDER_LINE => columns(
            keyed(table, &["w_id", "d_id", "o_id", "number"]),
            &[
                ("i_id", U64),
                ("supply_w_id", U64),
                ("delivery_d", U64),
                ("quantity", U64),
                ("amount_cents", I64),
                ("dist_info", Str),
            ],
        ),
        keys::ITEM => columns(
            keyed(table, &["i_id"]),
            &[
                ("im_id", U64),
                ("name", Str),
                ("price_cents", I64),
                ("data", Str),
            ],
        ),
        keys::STOCK => columns(
            keyed(table, &["w_id", "i_id"]),
            &[
                ("quantity", I64),
                ("dist", Any),
                ("ytd", U64),
                ("order_cnt", U64),
                ("remote_cnt", U64),
                ("data", Str),
            ],
        ),
        _ => table,
    }
}
