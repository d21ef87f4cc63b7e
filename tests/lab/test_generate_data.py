"""Tests of the application schema and the lab data generator.

They load roles/postgresql/files/trading_schema.sql as trading_user into a
fresh database of the session cluster, then run lab/generate_trading_data.py
against it as a subprocess with a small tick count.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = os.path.join(REPO, "roles", "postgresql", "files", "trading_schema.sql")
GENERATOR = os.path.join(REPO, "lab", "generate_trading_data.py")

DBNAME = "trading_generator_test"
ROLE = "trading_user"
TICKS = 50000

TABLES = (
    "instruments",
    "tick_data",
    "ohlc_candles",
    "strategies",
    "orders",
    "positions",
    "order_history",
    "order_book_snapshots",
    "backtest_results",
    "system_logs",
    "strategy_performance",
    "broker_credentials",
    "system_alerts",
)

NAMED_INDEXES = (
    "idx_tick_data_instrument_time",
    "idx_ohlc_instrument_timeframe",
    "idx_orders_strategy",
    "idx_positions_strategy",
)

CATALOG_SNAPSHOT = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'),
       (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public')
"""


def run_outside_transaction(pg_cluster, *statements):
    """Run statements as the superuser in autocommit mode.

    Cluster.execute cannot run CREATE or DROP DATABASE: its `with conn`
    block opens a transaction even on an autocommit connection.
    """
    conn = pg_cluster.connect()
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def database(pg_cluster):
    """Create the role and an empty database it owns, and drop both afterwards."""
    drop = ("DROP DATABASE IF EXISTS %s WITH (FORCE)" % DBNAME,
            "DROP ROLE IF EXISTS %s" % ROLE)
    run_outside_transaction(pg_cluster, *drop)
    run_outside_transaction(pg_cluster, "CREATE ROLE %s LOGIN" % ROLE,
                            "CREATE DATABASE %s OWNER %s" % (DBNAME, ROLE))
    yield DBNAME
    run_outside_transaction(pg_cluster, *drop)


def load_schema(pg_cluster, dbname):
    """Run the schema file as trading_user and return a catalog snapshot."""
    with open(SCHEMA) as schema_file:
        sql = schema_file.read()
    conn = pg_cluster.connect(dbname, user=ROLE)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.execute(CATALOG_SNAPSHOT)
            return cur.fetchone()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def schema(pg_cluster, database):
    """Load the schema twice and return the catalog snapshot after each load."""
    first = load_schema(pg_cluster, database)
    second = load_schema(pg_cluster, database)
    return first, second


def run_generator(pg_cluster, *args):
    """Run the generator as trading_user and return the process and its JSON report."""
    env = pg_cluster.env()
    env.update(PGUSER=ROLE, PGDATABASE=DBNAME)
    process = subprocess.run(
        [sys.executable, GENERATOR, "--ticks", str(TICKS), *args],
        env=env, capture_output=True, text=True, timeout=300)
    lines = process.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else None
    return process, report


@pytest.fixture(scope="module")
def first_run(pg_cluster, schema):
    return run_generator(pg_cluster)


@pytest.fixture(scope="module")
def query(pg_cluster, first_run):
    """Return a function that runs SQL in the loaded database and returns one value."""
    def scalar(sql, params=None):
        return pg_cluster.execute(sql, params, dbname=DBNAME)[0][0]
    return scalar


def test_schema_reload_changes_nothing(schema):
    first, second = schema
    assert first == second


def test_schema_owned_by_role(pg_cluster, schema):
    owners = pg_cluster.execute(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
        dbname=DBNAME)
    assert owners == [(ROLE,)]


def test_schema_has_named_indexes(pg_cluster, schema):
    rows = pg_cluster.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'", dbname=DBNAME)
    names = {name for (name,) in rows}
    for index in NAMED_INDEXES:
        assert index in names


def test_schema_tables_not_partitioned(pg_cluster, schema):
    rows = pg_cluster.execute(
        "SELECT relname, relkind FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relname = ANY(%s)",
        (list(TABLES),), dbname=DBNAME)
    kinds = dict(rows)
    for table in TABLES:
        assert kinds.get(table) == "r", table


def test_generator_exits_zero(first_run):
    process, _ = first_run
    assert process.returncode == 0, process.stderr


def test_generator_reports_changed(first_run):
    _, report = first_run
    assert report["changed"] is True


def test_generator_report_matches_tables(first_run, query):
    _, report = first_run
    for table in TABLES:
        assert report["rows"][table] == query("SELECT count(*) FROM %s" % table), table


def test_tables_have_rows(query):
    for table in TABLES:
        assert query("SELECT count(*) FROM %s" % table) > 0, table


def test_tick_count_matches_option(query):
    assert query("SELECT count(*) FROM tick_data") == TICKS


def test_ticks_older_than_30_days(query):
    assert query("SELECT count(*) FROM tick_data "
                 "WHERE time < now() - interval '30 days'") > 0


def test_ticks_newer_than_30_days(query):
    assert query("SELECT count(*) FROM tick_data "
                 "WHERE time >= now() - interval '30 days'") > 0


def test_ticks_not_in_future(query):
    assert query("SELECT count(*) FROM tick_data WHERE time > now()") == 0


def test_ticks_cover_every_instrument(query):
    assert query("SELECT count(DISTINCT instrument_id) FROM tick_data") == \
        query("SELECT count(*) FROM instruments")


def test_ticks_bid_below_price(query):
    assert query("SELECT count(*) FROM tick_data WHERE NOT bid < price") == 0


def test_ticks_ask_above_price(query):
    assert query("SELECT count(*) FROM tick_data WHERE NOT price < ask") == 0


def test_ticks_bid_below_ask(query):
    assert query("SELECT count(*) FROM tick_data WHERE NOT bid < ask") == 0


def test_order_book_older_than_7_days(query):
    assert query("SELECT count(*) FROM order_book_snapshots "
                 "WHERE time < now() - interval '7 days'") > 0


def test_order_book_newer_than_7_days(query):
    assert query("SELECT count(*) FROM order_book_snapshots "
                 "WHERE time >= now() - interval '7 days'") > 0


def test_order_book_best_bid_below_ask(query):
    assert query("SELECT count(*) FROM order_book_snapshots "
                 "WHERE NOT (bids->0->>0)::numeric < (asks->0->>0)::numeric") == 0


def test_logs_older_than_90_days(query):
    assert query("SELECT count(*) FROM system_logs "
                 "WHERE created_at < now() - interval '90 days'") > 0


def test_logs_newer_than_90_days(query):
    assert query("SELECT count(*) FROM system_logs "
                 "WHERE created_at >= now() - interval '90 days'") > 0


def test_backtests_over_100_for_some_strategy(query):
    assert query("SELECT max(n) FROM (SELECT count(*) AS n FROM backtest_results "
                 "GROUP BY strategy_id) AS per_strategy") > 100


def test_backtests_under_100_for_some_strategy(query):
    assert query("SELECT min(n) FROM (SELECT count(*) AS n FROM backtest_results "
                 "GROUP BY strategy_id) AS per_strategy") <= 100


@pytest.mark.parametrize("timeframe", ["1m", "1h", "1d"])
def test_candles_exist_per_timeframe(query, timeframe):
    assert query("SELECT count(*) FROM ohlc_candles WHERE timeframe = %s",
                 (timeframe,)) > 0


@pytest.mark.parametrize("timeframe", ["1m", "1h", "1d"])
def test_candles_volume_matches_ticks(query, timeframe):
    assert query("SELECT sum(volume) FROM ohlc_candles WHERE timeframe = %s",
                 (timeframe,)) == query("SELECT sum(volume) FROM tick_data")


def test_candles_daily_high_matches_ticks(query):
    assert query("""
        SELECT count(*) FROM ohlc_candles c
        WHERE c.timeframe = '1d'
          AND c.high <> (SELECT max(price) FROM tick_data t
                         WHERE t.instrument_id = c.instrument_id
                           AND t.time >= c.time AND t.time < c.time + interval '1 day')
        """) == 0


def test_orders_count_at_least_floor(query):
    # At this test's size the generator's floor of 1000 orders applies.
    assert query("SELECT count(*) FROM orders") >= 1000


def test_orders_have_history(query):
    assert query("SELECT count(*) FROM orders o WHERE NOT EXISTS "
                 "(SELECT FROM order_history h WHERE h.order_id = o.id)") == 0


def test_order_history_ends_in_order_status(query):
    assert query("""
        SELECT count(*) FROM orders o
        WHERE o.status <> (SELECT h.status FROM order_history h
                           WHERE h.order_id = o.id
                           ORDER BY h.changed_at DESC, h.id DESC LIMIT 1)
        """) == 0


def test_order_history_starts_pending(query):
    assert query("""
        SELECT count(*) FROM orders o
        WHERE (SELECT h.status FROM order_history h WHERE h.order_id = o.id
               ORDER BY h.changed_at, h.id LIMIT 1) <> 'pending'
        """) == 0


def test_order_sequence_past_generated_ids(query):
    assert query("SELECT last_value FROM orders_id_seq") == \
        query("SELECT max(id) FROM orders")


def test_positions_some_open(query):
    assert query("SELECT count(*) FROM positions WHERE closed_at IS NULL") > 0


def test_positions_some_closed(query):
    assert query("SELECT count(*) FROM positions WHERE closed_at IS NOT NULL") > 0


def test_tables_analyzed(query):
    for table in TABLES:
        assert query("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables "
                     "WHERE relname = %s", (table,)), table


def test_rerun_exits_zero(pg_cluster, first_run):
    process, _ = run_generator(pg_cluster)
    assert process.returncode == 0, process.stderr


def test_rerun_reports_unchanged(pg_cluster, first_run):
    _, report = run_generator(pg_cluster)
    assert report["changed"] is False


def test_rerun_keeps_rows(pg_cluster, first_run, query):
    before = {table: query("SELECT count(*) FROM %s" % table) for table in TABLES}
    max_id_before = query("SELECT max(id) FROM system_logs")
    _, report = run_generator(pg_cluster)
    assert report["rows"] == before
    assert query("SELECT max(id) FROM system_logs") == max_id_before


def test_reset_reloads(pg_cluster, first_run, query):
    oldest_before = query("SELECT min(created_at) FROM orders")
    process, report = run_generator(pg_cluster, "--reset")
    assert process.returncode == 0, process.stderr
    assert report["changed"] is True
    assert report["rows"]["tick_data"] == TICKS
    assert query("SELECT min(created_at) FROM orders") > oldest_before


def test_reset_restarts_ids(pg_cluster, first_run, query):
    run_generator(pg_cluster, "--reset")
    assert query("SELECT min(id) FROM system_logs") == 1


def test_reset_same_seed_same_counts(pg_cluster, first_run):
    _, first = first_run
    _, report = run_generator(pg_cluster, "--reset")
    # Candle counts depend on where minute and day boundaries fall relative
    # to now(), which moves between runs.
    for table in TABLES:
        if table != "ohlc_candles":
            assert report["rows"][table] == first["rows"][table], table


def test_partial_data_rejected(pg_cluster, first_run, query):
    pg_cluster.execute("TRUNCATE tick_data", dbname=DBNAME)
    try:
        process, report = run_generator(pg_cluster)
        assert process.returncode == 1
        assert report is None
        assert "--reset" in process.stderr
        assert query("SELECT count(*) FROM tick_data") == 0
    finally:
        run_generator(pg_cluster, "--reset")


def test_password_in_dsn_rejected():
    process = subprocess.run(
        [sys.executable, GENERATOR, "--dsn", "dbname=x password=secret"],
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 2
    assert "password" in process.stderr


def test_help_names_units():
    process = subprocess.run([sys.executable, GENERATOR, "--help"],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0
    assert "in days" in process.stdout
    assert "in rows" in process.stdout
