//! TPC-C's consistency conditions (clause 3.3.2) as SQL over the whole database.
//!
//! Each query returns the rows that violate its condition, so all of them return nothing
//! on a consistent database. They read the same snapshot as one another when run through
//! one [`Sql::context`](crate::Sql::context), and check what the `tpcc.check` procedure
//! checks warehouse by warehouse (condition 11, which holds only right after loading,
//! aside). Columns are named as the TPC-C tables declare them (`detflow sql "SHOW COLUMNS
//! FROM order_line"`); amounts are in cents.

/// One consistency condition.
#[derive(Clone, Copy, Debug)]
pub struct Condition {
    /// Its number in the specification (a letter marks a second query for one condition).
    pub number: &'static str,
    /// What it states.
    pub states: &'static str,
    /// The query returning its violations.
    pub sql: &'static str,
}

/// Every condition that holds at any time.
pub const CONDITIONS: &[Condition] = &[
    Condition {
        number: "1",
        states: "W_YTD = sum(D_YTD)",
        sql: "SELECT w.w_id, w.ytd_cents, d.d_ytd
              FROM warehouse w
              LEFT JOIN (SELECT w_id, sum(ytd_cents) AS d_ytd FROM district GROUP BY w_id) d
                ON d.w_id = w.w_id
              WHERE d.d_ytd IS NULL OR w.ytd_cents <> d.d_ytd",
    },
    Condition {
        number: "2",
        states: "D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)",
        sql: "SELECT d.w_id, d.d_id, d.next_o_id, o.max_o_id, n.max_no_o_id
              FROM district d
              LEFT JOIN (SELECT w_id, d_id, max(o_id) AS max_o_id FROM orders
                         GROUP BY w_id, d_id) o
                ON o.w_id = d.w_id AND o.d_id = d.d_id
              LEFT JOIN (SELECT w_id, d_id, max(o_id) AS max_no_o_id FROM new_order
                         GROUP BY w_id, d_id) n
                ON n.w_id = d.w_id AND n.d_id = d.d_id
              WHERE o.max_o_id IS NULL
                 OR CAST(o.max_o_id AS BIGINT) <> CAST(d.next_o_id AS BIGINT) - 1
                 OR CAST(n.max_no_o_id AS BIGINT) <> CAST(d.next_o_id AS BIGINT) - 1",
    },
    Condition {
        number: "3",
        states: "max(NO_O_ID) - min(NO_O_ID) + 1 = count(NEW-ORDER) per district",
        sql: "SELECT w_id, d_id, min(o_id) AS min_o_id, max(o_id) AS max_o_id, count(*) AS rows
              FROM new_order
              GROUP BY w_id, d_id
              HAVING CAST(max(o_id) AS BIGINT) - CAST(min(o_id) AS BIGINT) + 1 <> count(*)",
    },
    Condition {
        number: "4",
        states: "sum(O_OL_CNT) = count(ORDER-LINE) per district",
        sql: "SELECT COALESCE(o.w_id, l.w_id) AS w_id, COALESCE(o.d_id, l.d_id) AS d_id,
                     o.ol_cnt, l.lines
              FROM (SELECT w_id, d_id, sum(ol_cnt) AS ol_cnt FROM orders GROUP BY w_id, d_id) o
              FULL JOIN (SELECT w_id, d_id, count(*) AS lines FROM order_line
                         GROUP BY w_id, d_id) l
                ON l.w_id = o.w_id AND l.d_id = o.d_id
              WHERE COALESCE(CAST(o.ol_cnt AS BIGINT), 0) <> COALESCE(l.lines, 0)",
    },
    Condition {
        number: "5",
        states: "O_CARRIER_ID is null exactly when a NEW-ORDER row exists",
        sql: "SELECT o.w_id, o.d_id, o.o_id, o.carrier_id, n.o_id IS NOT NULL AS new_order
              FROM orders o
              LEFT JOIN new_order n ON n.w_id = o.w_id AND n.d_id = o.d_id AND n.o_id = o.o_id
              WHERE (o.carrier_id IS NULL) <> (n.o_id IS NOT NULL)",
    },
    Condition {
        number: "5b",
        states: "every NEW-ORDER row has its order",
        sql: "SELECT n.w_id, n.d_id, n.o_id
              FROM new_order n
              LEFT JOIN orders o ON o.w_id = n.w_id AND o.d_id = n.d_id AND o.o_id = n.o_id
              WHERE o.o_id IS NULL",
    },
    Condition {
        number: "6",
        states: "O_OL_CNT = the order's lines",
        sql: "SELECT o.w_id, o.d_id, o.o_id, o.ol_cnt, l.lines
              FROM orders o
              LEFT JOIN (SELECT w_id, d_id, o_id, count(*) AS lines FROM order_line
                         GROUP BY w_id, d_id, o_id) l
                ON l.w_id = o.w_id AND l.d_id = o.d_id AND l.o_id = o.o_id
              WHERE CAST(o.ol_cnt AS BIGINT) <> COALESCE(l.lines, 0)",
    },
    Condition {
        number: "6b",
        states: "every ORDER-LINE row has its order",
        sql: "SELECT l.w_id, l.d_id, l.o_id, l.number
              FROM order_line l
              LEFT JOIN orders o ON o.w_id = l.w_id AND o.d_id = l.d_id AND o.o_id = l.o_id
              WHERE o.o_id IS NULL",
    },
    Condition {
        number: "7",
        states: "OL_DELIVERY_D is null exactly when O_CARRIER_ID is",
        sql: "SELECT l.w_id, l.d_id, l.o_id, l.number, l.delivery_d, o.carrier_id
              FROM order_line l
              JOIN orders o ON o.w_id = l.w_id AND o.d_id = l.d_id AND o.o_id = l.o_id
              WHERE (l.delivery_d IS NULL) <> (o.carrier_id IS NULL)",
    },
    Condition {
        number: "8",
        states: "W_YTD = sum(H_AMOUNT) of the warehouse's history",
        sql: "SELECT w.w_id, w.ytd_cents, h.paid
              FROM warehouse w
              LEFT JOIN (SELECT w_id, sum(amount_cents) AS paid FROM history GROUP BY w_id) h
                ON h.w_id = w.w_id
              WHERE w.ytd_cents <> COALESCE(h.paid, 0)",
    },
    Condition {
        number: "9",
        states: "D_YTD = sum(H_AMOUNT) of the district's history",
        sql: "SELECT d.w_id, d.d_id, d.ytd_cents, h.paid
              FROM district d
              LEFT JOIN (SELECT w_id, d_id, sum(amount_cents) AS paid FROM history
                         GROUP BY w_id, d_id) h
                ON h.w_id = d.w_id AND h.d_id = d.d_id
              WHERE d.ytd_cents <> COALESCE(h.paid, 0)",
    },
    Condition {
        number: "10",
        states: "C_BALANCE = sum(delivered OL_AMOUNT) - sum(H_AMOUNT) of the customer",
        sql: "SELECT c.w_id, c.d_id, c.c_id, c.balance_cents, dl.delivered, h.paid
              FROM customer c
              LEFT JOIN (SELECT l.w_id, l.d_id, o.c_id, sum(l.amount_cents) AS delivered
                         FROM order_line l
                         JOIN orders o
                           ON o.w_id = l.w_id AND o.d_id = l.d_id AND o.o_id = l.o_id
                         WHERE l.delivery_d IS NOT NULL
                         GROUP BY l.w_id, l.d_id, o.c_id) dl
                ON dl.w_id = c.w_id AND dl.d_id = c.d_id AND dl.c_id = c.c_id
              LEFT JOIN (SELECT c_w_id, c_d_id, c_id, sum(amount_cents) AS paid FROM history
                         GROUP BY c_w_id, c_d_id, c_id) h
                ON h.c_w_id = c.w_id AND h.c_d_id = c.d_id AND h.c_id = c.c_id
              WHERE c.balance_cents <> COALESCE(dl.delivered, 0) - COALESCE(h.paid, 0)",
    },
    Condition {
        number: "12",
        states: "C_BALANCE + C_YTD_PAYMENT = sum(delivered OL_AMOUNT) of the customer",
        sql: "SELECT c.w_id, c.d_id, c.c_id, c.balance_cents, c.ytd_payment_cents, dl.delivered
              FROM customer c
              LEFT JOIN (SELECT l.w_id, l.d_id, o.c_id, sum(l.amount_cents) AS delivered
                         FROM order_line l
                         JOIN orders o
                           ON o.w_id = l.w_id AND o.d_id = l.d_id AND o.o_id = l.o_id
                         WHERE l.delivery_d IS NOT NULL
                         GROUP BY l.w_id, l.d_id, o.c_id) dl
                ON dl.w_id = c.w_id AND dl.d_id = c.d_id AND dl.c_id = c.c_id
              WHERE c.balance_cents + c.ytd_payment_cents <> COALESCE(dl.delivered, 0)",
    },
];
