-- TPC-C schema and loader for the PostgreSQL peer comparison (benches/peer/README.md).
--
-- Standalone:   psql -v W=8 -f tpcc.sql              (schema, full population, indexes, analyze)
-- In phases (what compare.sh does, to load warehouses in parallel):
--   psql -v W=8 -v phase=schema -f tpcc.sql          tables + loader functions
--   psql -c 'SELECT tpcc_load_items()'               } concurrently, one session each
--   psql -c 'SELECT tpcc_load_warehouse(w)'  w=1..W  }
--   psql -v W=8 -v phase=finish -f tpcc.sql          primary keys, indexes, VACUUM ANALYZE
--
-- Population follows TPC-C clause 4.3.3.1 at full size per warehouse. Random strings are
-- hex digits from md5(random()) rather than arbitrary alphanumerics; lengths follow the spec.
-- NURand's C for C_LAST at load time is C_LOAD = 157; the pgbench scripts use C_RUN = 223
-- (|C_RUN - C_LOAD| = 66, inside the 65..119 band of clause 2.1.6.1).

\set ON_ERROR_STOP on
\if :{?W}
\else
  \echo 'tpcc.sql: pass the number of warehouses with -v W=N'
  \quit
\endif
\if :{?phase}
\else
  \set phase all
\endif
-- Loading is not measured: no SSI bookkeeping and no commit flush waits while loading.
SET default_transaction_isolation = 'read committed';
SET synchronous_commit = off;
SET client_min_messages = warning;

SELECT (:'phase' IN ('all', 'schema')) AS do_schema,
       (:'phase' = 'all') AS do_load,
       (:'phase' IN ('all', 'finish')) AS do_finish \gset

\if :do_schema
DROP TABLE IF EXISTS order_line, new_order, orders, history, customer, district, stock, item,
  warehouse CASCADE;

-- Tables are created without keys; keys and indexes come after the load (phase finish).
CREATE TABLE warehouse (
  w_id       int NOT NULL,
  w_name     varchar(10),
  w_street_1 varchar(20),
  w_street_2 varchar(20),
  w_city     varchar(20),
  w_state    char(2),
  w_zip      char(9),
  w_tax      numeric(4, 4),
  w_ytd      numeric(12, 2)
);
CREATE TABLE district (
  d_id        int NOT NULL,
  d_w_id      int NOT NULL,
  d_name      varchar(10),
  d_street_1  varchar(20),
  d_street_2  varchar(20),
  d_city      varchar(20),
  d_state     char(2),
  d_zip       char(9),
  d_tax       numeric(4, 4),
  d_ytd       numeric(12, 2),
  d_next_o_id int
);
CREATE TABLE customer (
  c_id           int NOT NULL,
  c_d_id         int NOT NULL,
  c_w_id         int NOT NULL,
  c_first        varchar(16),
  c_middle       char(2),
  c_last         varchar(16),
  c_street_1     varchar(20),
  c_street_2     varchar(20),
  c_city         varchar(20),
  c_state        char(2),
  c_zip          char(9),
  c_phone        char(16),
  c_since        timestamp,
  c_credit       char(2),
  c_credit_lim   numeric(12, 2),
  c_discount     numeric(4, 4),
  c_balance      numeric(12, 2),
  c_ytd_payment  numeric(12, 2),
  c_payment_cnt  int,
  c_delivery_cnt int,
  c_data         varchar(500)
);
-- HISTORY has no primary key in the standard (clause 1.3).
CREATE TABLE history (
  h_c_id   int,
  h_c_d_id int,
  h_c_w_id int,
  h_d_id   int,
  h_w_id   int,
  h_date   timestamp,
  h_amount numeric(6, 2),
  h_data   varchar(24)
);
CREATE TABLE new_order (
  no_o_id int NOT NULL,
  no_d_id int NOT NULL,
  no_w_id int NOT NULL
);
CREATE TABLE orders (
  o_id         int NOT NULL,
  o_d_id       int NOT NULL,
  o_w_id       int NOT NULL,
  o_c_id       int,
  o_entry_d    timestamp,
  o_carrier_id int,
  o_ol_cnt     int,
  o_all_local  int
);
CREATE TABLE order_line (
  ol_o_id        int NOT NULL,
  ol_d_id        int NOT NULL,
  ol_w_id        int NOT NULL,
  ol_number      int NOT NULL,
  ol_i_id        int,
  ol_supply_w_id int,
  ol_delivery_d  timestamp,
  ol_quantity    int,
  ol_amount      numeric(6, 2),
  ol_dist_info   char(24)
);
CREATE TABLE item (
  i_id    int NOT NULL,
  i_im_id int,
  i_name  varchar(24),
  i_price numeric(5, 2),
  i_data  varchar(50)
);
CREATE TABLE stock (
  s_i_id       int NOT NULL,
  s_w_id       int NOT NULL,
  s_quantity   int,
  s_dist_01    char(24),
  s_dist_02    char(24),
  s_dist_03    char(24),
  s_dist_04    char(24),
  s_dist_05    char(24),
  s_dist_06    char(24),
  s_dist_07    char(24),
  s_dist_08    char(24),
  s_dist_09    char(24),
  s_dist_10    char(24),
  s_ytd        int,
  s_order_cnt  int,
  s_remote_cnt int,
  s_data       varchar(50)
);

-- Random helpers. Simple SQL functions, so the planner inlines them into the INSERT ... SELECT.
-- A random string of lo..hi characters (hi <= 64).
CREATE OR REPLACE FUNCTION tpcc_astr(lo int, hi int) RETURNS text LANGUAGE sql VOLATILE AS
$$ SELECT substr(md5(random()::text) || md5(random()::text), 1, lo + floor(random() * (hi - lo + 1))::int) $$;
-- A random integer in lo..hi.
CREATE OR REPLACE FUNCTION tpcc_rand(lo int, hi int) RETURNS int LANGUAGE sql VOLATILE AS
$$ SELECT lo + floor(random() * (hi - lo + 1))::int $$;
-- NURand(A, x, y) with constant C (clause 2.1.6).
CREATE OR REPLACE FUNCTION tpcc_nurand(a int, x int, y int, c int) RETURNS int LANGUAGE sql VOLATILE AS
$$ SELECT (((floor(random() * (a + 1))::int | (x + floor(random() * (y - x + 1))::int)) + c) % (y - x + 1)) + x $$;
-- I_DATA / S_DATA: 26..50 characters, 10% of them containing "ORIGINAL" (clause 4.3.3.1).
CREATE OR REPLACE FUNCTION tpcc_data() RETURNS text LANGUAGE sql VOLATILE AS
$$ SELECT CASE WHEN random() < 0.1 THEN tpcc_astr(9, 21) || 'ORIGINAL' || tpcc_astr(9, 21)
               ELSE tpcc_astr(26, 50) END $$;
CREATE OR REPLACE FUNCTION tpcc_zip() RETURNS text LANGUAGE sql VOLATILE AS
$$ SELECT lpad(floor(random() * 10000)::int::text, 4, '0') || '11111' $$;
CREATE OR REPLACE FUNCTION tpcc_state() RETURNS text LANGUAGE sql VOLATILE AS
$$ SELECT chr(65 + floor(random() * 26)::int) || chr(65 + floor(random() * 26)::int) $$;
-- C_LAST from a number 0..999: three syllables (clause 4.3.2.3). Also used by the run scripts.
CREATE OR REPLACE FUNCTION tpcc_lastname(n int) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (ARRAY['BAR','OUGHT','ABLE','PRI','PRES','ESE','ANTI','CALLY','ATION','EING'])[n / 100 + 1]
       || (ARRAY['BAR','OUGHT','ABLE','PRI','PRES','ESE','ANTI','CALLY','ATION','EING'])[(n / 10) % 10 + 1]
       || (ARRAY['BAR','OUGHT','ABLE','PRI','PRES','ESE','ANTI','CALLY','ATION','EING'])[n % 10 + 1] $$;

-- ITEM: 100,000 rows.
CREATE OR REPLACE FUNCTION tpcc_load_items() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  SET LOCAL synchronous_commit = off;
  INSERT INTO item
  SELECT i, tpcc_rand(1, 10000), tpcc_astr(14, 24), tpcc_rand(100, 10000) / 100.0, tpcc_data()
  FROM generate_series(1, 100000) i;
END $$;

-- One warehouse with its stock, districts, customers, history, orders, lines and new-orders.
CREATE OR REPLACE FUNCTION tpcc_load_warehouse(w int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  SET LOCAL synchronous_commit = off;
  INSERT INTO warehouse
  VALUES (w, tpcc_astr(6, 10), tpcc_astr(10, 20), tpcc_astr(10, 20), tpcc_astr(10, 20),
          tpcc_state(), tpcc_zip(), tpcc_rand(0, 2000) / 10000.0, 300000.00);

  INSERT INTO stock
  SELECT i, w, tpcc_rand(10, 100),
         tpcc_astr(24, 24), tpcc_astr(24, 24), tpcc_astr(24, 24), tpcc_astr(24, 24), tpcc_astr(24, 24),
         tpcc_astr(24, 24), tpcc_astr(24, 24), tpcc_astr(24, 24), tpcc_astr(24, 24), tpcc_astr(24, 24),
         0, 0, 0, tpcc_data()
  FROM generate_series(1, 100000) i;

  INSERT INTO district
  SELECT d, w, tpcc_astr(6, 10), tpcc_astr(10, 20), tpcc_astr(10, 20), tpcc_astr(10, 20),
         tpcc_state(), tpcc_zip(), tpcc_rand(0, 2000) / 10000.0, 30000.00, 3001
  FROM generate_series(1, 10) d;

  -- Customers 1..1000 take the syllable name of c_id - 1, the rest NURand(255, 0, 999)
  -- with C_LOAD = 157; 10% bad credit.
  INSERT INTO customer
  SELECT c, d, w, tpcc_astr(8, 16), 'OE',
         tpcc_lastname(CASE WHEN c <= 1000 THEN c - 1 ELSE tpcc_nurand(255, 0, 999, 157) END),
         tpcc_astr(10, 20), tpcc_astr(10, 20), tpcc_astr(10, 20), tpcc_state(), tpcc_zip(),
         lpad(floor(random() * 1e8)::bigint::text, 8, '0') || lpad(floor(random() * 1e8)::bigint::text, 8, '0'),
         current_timestamp, CASE WHEN random() < 0.1 THEN 'BC' ELSE 'GC' END, 50000.00,
         tpcc_rand(0, 5000) / 10000.0, -10.00, 10.00, 1, 0,
         substr(repeat(md5(random()::text) || md5(random()::text), 8), 1, tpcc_rand(300, 500))
  FROM generate_series(1, 10) d, generate_series(1, 3000) c;

  INSERT INTO history
  SELECT c, d, w, d, w, current_timestamp, 10.00, tpcc_astr(12, 24)
  FROM generate_series(1, 10) d, generate_series(1, 3000) c;

  -- Orders: O_C_ID a random permutation of the customers per district; 5..15 lines each;
  -- orders 2101..3000 undelivered (no carrier, lines with an amount and no delivery date).
  WITH o AS (
    INSERT INTO orders
    SELECT p.o_id, p.d, w, p.c, current_timestamp,
           CASE WHEN p.o_id < 2101 THEN tpcc_rand(1, 10) END, tpcc_rand(5, 15), 1
    FROM (SELECT d, c, row_number() OVER (PARTITION BY d ORDER BY random())::int AS o_id
          FROM generate_series(1, 10) d, generate_series(1, 3000) c) p
    RETURNING o_id, o_d_id, o_ol_cnt, o_entry_d
  )
  INSERT INTO order_line
  SELECT o.o_id, o.o_d_id, w, n, tpcc_rand(1, 100000), w,
         CASE WHEN o.o_id < 2101 THEN o.o_entry_d END, 5,
         CASE WHEN o.o_id < 2101 THEN 0.00 ELSE tpcc_rand(1, 999999) / 100.0 END,
         tpcc_astr(24, 24)
  FROM o, generate_series(1, o.o_ol_cnt) n;

  INSERT INTO new_order
  SELECT o, d, w FROM generate_series(1, 10) d, generate_series(2101, 3000) o;
END $$;
\endif

\if :do_load
\timing on
SELECT tpcc_load_items();
SELECT tpcc_load_warehouse(w) FROM generate_series(1, :W) w;
\timing off
\endif

\if :do_finish
SET maintenance_work_mem = '1GB';
ALTER TABLE warehouse  ADD PRIMARY KEY (w_id);
ALTER TABLE district   ADD PRIMARY KEY (d_w_id, d_id);
ALTER TABLE customer   ADD PRIMARY KEY (c_w_id, c_d_id, c_id);
ALTER TABLE new_order  ADD PRIMARY KEY (no_w_id, no_d_id, no_o_id);
ALTER TABLE orders     ADD PRIMARY KEY (o_w_id, o_d_id, o_id);
ALTER TABLE order_line ADD PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number);
ALTER TABLE item       ADD PRIMARY KEY (i_id);
ALTER TABLE stock      ADD PRIMARY KEY (s_w_id, s_i_id);
CREATE INDEX customer_by_name ON customer (c_w_id, c_d_id, c_last, c_first);
CREATE INDEX orders_by_customer ON orders (o_w_id, o_d_id, o_c_id, o_id);
VACUUM ANALYZE;
CHECKPOINT;
\endif
