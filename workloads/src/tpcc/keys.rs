//! Where TPC-C rows live: every table but `item` is keyed by warehouse first, so a
//! warehouse and everything under it is one partition's.

use detflow_protocol::Key;

/// `(warehouse, w)`.
pub const WAREHOUSE: &str = "warehouse";
/// `(district, w, d)`.
pub const DISTRICT: &str = "district";
/// `(customer, w, d, c)`.
pub const CUSTOMER: &str = "customer";
/// `(customer_last, w, d, last, first, c)`: the by-last-name index, ordered by first name.
pub const CUSTOMER_LAST: &str = "customer_last";
/// `(history, w, d, h)`: payments made at warehouse `w`, district `d`.
pub const HISTORY: &str = "history";
/// `(new_order, w, d, o)`: undelivered orders.
pub const NEW_ORDER: &str = "new_order";
/// `(orders, w, d, o)`.
pub const ORDERS: &str = "orders";
/// `(order_customer, w, d, c, o)`: the orders of a customer, for Order-Status.
pub const ORDER_CUSTOMER: &str = "order_customer";
/// `(order_line, w, d, o, n)`.
pub const ORDER_LINE: &str = "order_line";
/// `(item, i)`: replicated on every partition.
pub const ITEM: &str = "item";
/// `(stock, w, i)`.
pub const STOCK: &str = "stock";

/// Every table keyed by warehouse (all but `item`).
pub const BY_WAREHOUSE: &[&str] = &[
    WAREHOUSE,
    DISTRICT,
    CUSTOMER,
    CUSTOMER_LAST,
    HISTORY,
    NEW_ORDER,
    ORDERS,
    ORDER_CUSTOMER,
    ORDER_LINE,
    STOCK,
];

/// Warehouse `w`'s row; also the prefix of `table`'s rows of warehouse `w`.
pub fn of_warehouse(table: &str, w: u32) -> Key {
    Key::table(table).u64(w.into())
}

/// Warehouse `w`.
pub fn warehouse(w: u32) -> Key {
    of_warehouse(WAREHOUSE, w)
}

/// District `(w, d)`.
pub fn district(w: u32, d: u32) -> Key {
    of_warehouse(DISTRICT, w).u64(d.into())
}

/// Customer `(w, d, c)`.
pub fn customer(w: u32, d: u32, c: u32) -> Key {
    of_warehouse(CUSTOMER, w).u64(d.into()).u64(c.into())
}

/// The index entries of the customers of `(w, d)` named `last`.
pub fn customers_named(w: u32, d: u32, last: &str) -> Key {
    of_warehouse(CUSTOMER_LAST, w).u64(d.into()).str(last)
}

/// One index entry of the by-last-name index.
pub fn customer_last(w: u32, d: u32, last: &str, first: &str, c: u32) -> Key {
    customers_named(w, d, last).str(first).u64(c.into())
}

/// History row `h` of `(w, d)`.
pub fn history(w: u32, d: u32, h: u32) -> Key {
    of_warehouse(HISTORY, w).u64(d.into()).u64(h.into())
}

/// The prefix of `table`'s rows of district `(w, d)`.
pub fn of_district(table: &str, w: u32, d: u32) -> Key {
    of_warehouse(table, w).u64(d.into())
}

/// New-order row of order `(w, d, o)`.
pub fn new_order(w: u32, d: u32, o: u32) -> Key {
    of_district(NEW_ORDER, w, d).u64(o.into())
}

/// Order `(w, d, o)`.
pub fn order(w: u32, d: u32, o: u32) -> Key {
    of_district(ORDERS, w, d).u64(o.into())
}

/// The prefix of customer `(w, d, c)`'s order index entries.
pub fn orders_of_customer(w: u32, d: u32, c: u32) -> Key {
    of_district(ORDER_CUSTOMER, w, d).u64(c.into())
}

/// Order index entry of customer `(w, d, c)` for order `o`.
pub fn order_customer(w: u32, d: u32, c: u32, o: u32) -> Key {
    orders_of_customer(w, d, c).u64(o.into())
}

/// The lines of order `(w, d, o)`.
pub fn order_lines(w: u32, d: u32, o: u32) -> Key {
    of_district(ORDER_LINE, w, d).u64(o.into())
}

/// Line `n` of order `(w, d, o)`.
pub fn order_line(w: u32, d: u32, o: u32, n: u32) -> Key {
    order_lines(w, d, o).u64(n.into())
}

/// Item `i`.
pub fn item(i: u32) -> Key {
    Key::table(ITEM).u64(i.into())
}

/// Stock of item `i` at warehouse `w`.
pub fn stock(w: u32, i: u32) -> Key {
    of_warehouse(STOCK, w).u64(i.into())
}

/// The trailing integer fields of a key, after the table name: `[w, d, o]` for an order.
pub fn fields(key: &Key) -> Vec<u64> {
    key.elems()
        .map(|elems| {
            elems
                .iter()
                .filter_map(|e| match e {
                    detflow_protocol::Elem::U64(v) => Some(*v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
