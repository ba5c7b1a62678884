//! CH-benCHmark's analytical queries over the TPC-C tables, for detflow and for
//! PostgreSQL's TPC-C database (`benches/peer/tpcc.sql`) side by side.
//!
//! The queries are those of the CH-benCHmark (Cole et al., DBTest 2011) that read only
//! TPC-C tables. Two things differ from the published text, the same way on both sides
//! where the data allows:
//!
//! - detflow's TPC-C keeps dates as the driver's ticks (0 at load), PostgreSQL's as
//!   timestamps (the load time), so a date bound that every loaded or new row passes is
//!   written as "delivered" (`delivery_d IS NOT NULL`) or dropped, and date comparisons
//!   between two columns stay as they are;
//! - detflow keeps a customer's address as one value (street, street, city, state, zip),
//!   so Q3's `c_state` is its fourth element.

/// One analytical query.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    /// Its CH-benCHmark name.
    pub name: &'static str,
    /// The query over detflow's tables.
    pub detflow: &'static str,
    /// The same query over PostgreSQL's TPC-C tables.
    pub postgres: &'static str,
}

/// The queries, in CH-benCHmark order.
pub const QUERIES: &[Query] = &[
    Query {
        name: "Q1",
        detflow: "SELECT number, sum(quantity) AS sum_qty, sum(amount_cents) AS sum_amount,
                         avg(quantity) AS avg_qty, avg(amount_cents) AS avg_amount,
                         count(*) AS count_order
                  FROM order_line
                  WHERE delivery_d IS NOT NULL
                  GROUP BY number
                  ORDER BY number",
        postgres: "SELECT ol_number, sum(ol_quantity) AS sum_qty, sum(ol_amount) AS sum_amount,
                          avg(ol_quantity) AS avg_qty, avg(ol_amount) AS avg_amount,
                          count(*) AS count_order
                   FROM order_line
                   WHERE ol_delivery_d IS NOT NULL
                   GROUP BY ol_number
                   ORDER BY ol_number",
    },
    Query {
        name: "Q3",
        detflow: "SELECT l.o_id, l.w_id, l.d_id, sum(l.amount_cents) AS revenue, o.entry_d
                  FROM customer c, new_order n, orders o, order_line l
                  WHERE split_part(c.address, '\"', 8) LIKE 'A%'
                    AND c.c_id = o.c_id AND c.w_id = o.w_id AND c.d_id = o.d_id
                    AND n.w_id = o.w_id AND n.d_id = o.d_id AND n.o_id = o.o_id
                    AND l.w_id = o.w_id AND l.d_id = o.d_id AND l.o_id = o.o_id
                  GROUP BY l.o_id, l.w_id, l.d_id, o.entry_d
                  ORDER BY revenue DESC, o.entry_d
                  LIMIT 20",
        postgres: "SELECT ol_o_id, ol_w_id, ol_d_id, sum(ol_amount) AS revenue, o_entry_d
                   FROM customer, new_order, orders, order_line
                   WHERE c_state LIKE 'A%'
                     AND c_id = o_c_id AND c_w_id = o_w_id AND c_d_id = o_d_id
                     AND no_w_id = o_w_id AND no_d_id = o_d_id AND no_o_id = o_id
                     AND ol_w_id = o_w_id AND ol_d_id = o_d_id AND ol_o_id = o_id
                   GROUP BY ol_o_id, ol_w_id, ol_d_id, o_entry_d
                   ORDER BY revenue DESC, o_entry_d
                   LIMIT 20",
    },
    Query {
        name: "Q4",
        detflow: "SELECT o.ol_cnt, count(*) AS order_count
                  FROM orders o
                  WHERE EXISTS (SELECT 1 FROM order_line l
                                WHERE l.w_id = o.w_id AND l.d_id = o.d_id AND l.o_id = o.o_id
                                  AND l.delivery_d >= o.entry_d)
                  GROUP BY o.ol_cnt
                  ORDER BY o.ol_cnt",
        postgres: "SELECT o_ol_cnt, count(*) AS order_count
                   FROM orders
                   WHERE EXISTS (SELECT 1 FROM order_line
                                 WHERE ol_w_id = o_w_id AND ol_d_id = o_d_id AND ol_o_id = o_id
                                   AND ol_delivery_d >= o_entry_d)
                   GROUP BY o_ol_cnt
                   ORDER BY o_ol_cnt",
    },
    Query {
        name: "Q6",
        detflow: "SELECT sum(amount_cents) AS revenue
                  FROM order_line
                  WHERE delivery_d IS NOT NULL AND quantity BETWEEN 1 AND 100000",
        postgres: "SELECT sum(ol_amount) AS revenue
                   FROM order_line
                   WHERE ol_delivery_d IS NOT NULL AND ol_quantity BETWEEN 1 AND 100000",
    },
    Query {
        name: "Q12",
        detflow: "SELECT o.ol_cnt,
                         sum(CASE WHEN o.carrier_id = 1 OR o.carrier_id = 2 THEN 1 ELSE 0 END)
                           AS high_line_count,
                         sum(CASE WHEN o.carrier_id <> 1 AND o.carrier_id <> 2 THEN 1 ELSE 0 END)
                           AS low_line_count
                  FROM orders o, order_line l
                  WHERE l.w_id = o.w_id AND l.d_id = o.d_id AND l.o_id = o.o_id
                    AND o.entry_d <= l.delivery_d
                  GROUP BY o.ol_cnt
                  ORDER BY o.ol_cnt",
        postgres: "SELECT o_ol_cnt,
                          sum(CASE WHEN o_carrier_id = 1 OR o_carrier_id = 2 THEN 1 ELSE 0 END)
                            AS high_line_count,
                          sum(CASE WHEN o_carrier_id <> 1 AND o_carrier_id <> 2 THEN 1 ELSE 0 END)
                            AS low_line_count
                   FROM orders, order_line
                   WHERE ol_w_id = o_w_id AND ol_d_id = o_d_id AND ol_o_id = o_id
                     AND o_entry_d <= ol_delivery_d
                   GROUP BY o_ol_cnt
                   ORDER BY o_ol_cnt",
    },
];
