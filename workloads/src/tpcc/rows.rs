//! The rows of the TPC-C tables, stored as MessagePack. Money is in cents, tax and discount
//! rates in basis points (1/10,000), dates are the generator's logical clock.

use serde::{Deserialize, Serialize};

/// A warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warehouse {
    /// W_NAME.
    pub name: String,
    /// W_STREET_1, W_STREET_2, W_CITY, W_STATE, W_ZIP.
    pub address: [String; 5],
    /// W_TAX in basis points.
    pub tax_bp: u32,
    /// W_YTD in cents.
    pub ytd_cents: i64,
}

/// A district.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct District {
    /// D_NAME.
    pub name: String,
    /// D_STREET_1, D_STREET_2, D_CITY, D_STATE, D_ZIP.
    pub address: [String; 5],
    /// D_TAX in basis points.
    pub tax_bp: u32,
    /// D_YTD in cents.
    pub ytd_cents: i64,
    /// D_NEXT_O_ID.
    pub next_o_id: u32,
    /// The next history row number: TPC-C's history has no key, ours needs one.
    pub next_h_id: u32,
}

/// A customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// C_FIRST.
    pub first: String,
    /// C_MIDDLE.
    pub middle: String,
    /// C_LAST.
    pub last: String,
    /// C_STREET_1, C_STREET_2, C_CITY, C_STATE, C_ZIP.
    pub address: [String; 5],
    /// C_PHONE.
    pub phone: String,
    /// C_SINCE.
    pub since: u64,
    /// C_CREDIT: "GC" or "BC".
    pub credit: String,
    /// C_CREDIT_LIM in cents.
    pub credit_lim_cents: i64,
    /// C_DISCOUNT in basis points.
    pub discount_bp: u32,
    /// C_BALANCE in cents.
    pub balance_cents: i64,
    /// C_YTD_PAYMENT in cents.
    pub ytd_payment_cents: i64,
    /// C_PAYMENT_CNT.
    pub payment_cnt: u32,
    /// C_DELIVERY_CNT.
    pub delivery_cnt: u32,
    /// C_DATA.
    pub data: String,
}

/// A payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// H_C_ID: who paid.
    pub c_id: u32,
    /// H_C_D_ID: the payer's district.
    pub c_d_id: u32,
    /// H_C_W_ID: the payer's warehouse.
    pub c_w_id: u32,
    /// H_DATE.
    pub date: u64,
    /// H_AMOUNT in cents.
    pub amount_cents: i64,
    /// H_DATA.
    pub data: String,
}

/// An order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// O_C_ID.
    pub c_id: u32,
    /// O_ENTRY_D.
    pub entry_d: u64,
    /// O_CARRIER_ID: `None` until delivered.
    pub carrier_id: Option<u32>,
    /// O_OL_CNT.
    pub ol_cnt: u32,
    /// O_ALL_LOCAL.
    pub all_local: bool,
}

/// An order line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// OL_I_ID.
    pub i_id: u32,
    /// OL_SUPPLY_W_ID.
    pub supply_w_id: u32,
    /// OL_DELIVERY_D: `None` until delivered.
    pub delivery_d: Option<u64>,
    /// OL_QUANTITY.
    pub quantity: u32,
    /// OL_AMOUNT in cents.
    pub amount_cents: i64,
    /// OL_DIST_INFO.
    pub dist_info: String,
}

/// An item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// I_IM_ID.
    pub im_id: u32,
    /// I_NAME.
    pub name: String,
    /// I_PRICE in cents.
    pub price_cents: i64,
    /// I_DATA.
    pub data: String,
}

/// The stock of an item at a warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    /// S_QUANTITY.
    pub quantity: i32,
    /// S_DIST_01 .. S_DIST_10.
    pub dist: Vec<String>,
    /// S_YTD.
    pub ytd: u64,
    /// S_ORDER_CNT.
    pub order_cnt: u32,
    /// S_REMOTE_CNT.
    pub remote_cnt: u32,
    /// S_DATA.
    pub data: String,
}
