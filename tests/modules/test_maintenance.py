"""Tests of the maintenance logic and the pg_maintenance module on a real PostgreSQL 15."""

import threading
import time

import pytest

import tradeops_maintenance as maintenance
from tradeops_postgres import ConfigError, NotFoundError, SqlRunner, connect, table_identifier

from conftest import run_outside_transaction

SCHEMA = """
DROP TABLE IF EXISTS orders, positions, dup_rows CASCADE;
CREATE TABLE orders (id bigserial PRIMARY KEY, strategy_id int NOT NULL, client_ref text UNIQUE,
                     created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX idx_orders_strategy ON orders (strategy_id);
CREATE INDEX idx_orders_created ON orders (created_at);
INSERT INTO orders (strategy_id, client_ref) SELECT i % 10, 'ref-' || i FROM generate_series(1, 5000) i;
DELETE FROM orders WHERE id % 4 = 0;
CREATE TABLE positions (id bigserial PRIMARY KEY, strategy_id int NOT NULL, qty int);
CREATE INDEX idx_positions_strategy ON positions (strategy_id);
INSERT INTO positions (strategy_id, qty) SELECT i % 5, i FROM generate_series(1, 500) i;
CREATE TABLE dup_rows (v int);
INSERT INTO dup_rows SELECT i % 3 FROM generate_series(1, 30) i;
"""


@pytest.fixture
def loaded(pg_cluster, database):
    pg_cluster.execute(SCHEMA, dbname=database)
    return database


def run(params, check_mode=False, **option_values):
    runner = SqlRunner(connect(params), check_mode=check_mode)
    try:
        return maintenance.run_maintenance(runner, maintenance.MaintenanceOptions(**option_values))
    finally:
        runner.close()


def invalid_indexes(pg_cluster, database):
    rows = pg_cluster.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid"
        " ORDER BY 1", dbname=database)
    return [row[0] for row in rows]


def make_failed_unique_index(pg_cluster, database):
    """Leave an invalid index: CREATE UNIQUE INDEX CONCURRENTLY over duplicates fails but keeps the index."""
    with pytest.raises(Exception) as caught:
        run_outside_transaction(pg_cluster, "CREATE UNIQUE INDEX CONCURRENTLY idx_dup_rows_v ON dup_rows (v)",
                                dbname=database)
    assert "could not create unique index" in str(caught.value)


def make_reindex_leftover(pg_cluster, database, index):
    """Interrupt REINDEX CONCURRENTLY, which leaves "<index>_ccnew" behind, invalid.

    An open transaction that wrote to the table makes the REINDEX wait, and
    statement_timeout then cancels it after the new index was created.
    """
    holder = pg_cluster.connect(database)
    holder.autocommit = False
    with holder.cursor() as cur:
        cur.execute("INSERT INTO positions (strategy_id, qty) VALUES (1, 1)")
    try:
        reindexer = pg_cluster.connect(database)
        with reindexer.cursor() as cur:
            cur.execute("SET statement_timeout = '500ms'")
            with pytest.raises(Exception) as caught:
                cur.execute("REINDEX INDEX CONCURRENTLY %s" % index)
        reindexer.close()
        assert "statement timeout" in str(caught.value)
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.parametrize("builder, args, expected", [
    (maintenance.build_vacuum, (table_identifier("public", "orders"),), 'VACUUM (ANALYZE) "public"."orders"'),
    (maintenance.build_analyze, (), "ANALYZE"),
    (maintenance.build_analyze, (table_identifier("public", 'Odd "T"; x'),), 'ANALYZE "public"."Odd ""T""; x"'),
    (maintenance.build_reindex, (table_identifier("public", "idx"), True), 'REINDEX INDEX CONCURRENTLY "public"."idx"'),
    (maintenance.build_reindex, (table_identifier("public", "idx"), False), 'REINDEX INDEX "public"."idx"'),
    (maintenance.build_drop_index, (table_identifier("public", "i_ccnew"), True),
     'DROP INDEX CONCURRENTLY "public"."i_ccnew"'),
])
def test_sql_builders(pg_cluster, builder, args, expected):
    conn = pg_cluster.connect()
    assert builder(*args).as_string(conn) == expected
    conn.close()


@pytest.mark.parametrize("name, expected", [
    ("idx_orders_strategy_ccnew", ("idx_orders_strategy", "new")),
    ("idx_orders_strategy_ccnew1", ("idx_orders_strategy", "new")),
    ("idx_orders_strategy_ccold", ("idx_orders_strategy", "old")),
    ("idx_orders_strategy", None),
    ("_ccnew", None),
])
def test_leftover_names(name, expected):
    assert maintenance.leftover_of(name) == expected


@pytest.mark.parametrize("values, message", [
    ({"invalid_indexes": "fix"}, 'Invalid invalid_indexes "fix": expected one of report, rebuild.'),
    ({"reports": ["bloat"]}, 'Invalid reports "bloat": expected names from unused_indexes, sizes, table_stats.'),
    ({"vacuum_tables": ["a%b"]}, 'Invalid table name "a%b": percent signs and NUL characters are not supported.'),
    ({"lock_timeout_ms": -1}, "Invalid lock_timeout_ms -1: expected 0 or more milliseconds."),
])
def test_options_invalid(values, message):
    with pytest.raises(ConfigError) as caught:
        maintenance.MaintenanceOptions(**values)
    assert str(caught.value).startswith(message)


def test_vacuum_reindex_analyze(pg_cluster, loaded, connection_params):
    result = run(connection_params, vacuum_tables=["orders", "positions"],
                 reindex_indexes=["idx_orders_strategy", "idx_positions_strategy"], analyze_database=True)

    assert result["status"] == "ok", result["errors"]
    assert result["changed"] is True
    assert result["executed_commands"] == [
        'VACUUM (ANALYZE) "public"."orders"',
        'VACUUM (ANALYZE) "public"."positions"',
        'REINDEX INDEX CONCURRENTLY "public"."idx_orders_strategy"',
        'REINDEX INDEX CONCURRENTLY "public"."idx_positions_strategy"',
        "ANALYZE",
    ]
    assert result["reindexed_valid"] == {"idx_orders_strategy": True, "idx_positions_strategy": True}
    assert invalid_indexes(pg_cluster, loaded) == []
    stats = dict((row["table"], row) for row in result["reports"]["table_stats"])
    assert stats["orders"]["last_vacuum"] is not None
    assert stats["orders"]["last_analyze"] is not None
    assert stats["orders"]["n_dead_tup"] == 0
    for key in ("vacuum_ms", "reindex_ms", "analyze_ms", "reports_ms", "duration_ms"):
        assert isinstance(result[key], int)


def test_reindex_concurrently_lets_writes_go_on(pg_cluster, loaded, connection_params):
    pg_cluster.execute("INSERT INTO orders (strategy_id) SELECT i % 10 FROM generate_series(1, 200000) i",
                       dbname=loaded)
    latencies = []
    stop = threading.Event()

    def write():
        conn = pg_cluster.connect(loaded)
        with conn.cursor() as cur:
            while not stop.is_set():
                started = time.monotonic()
                cur.execute("INSERT INTO orders (strategy_id) VALUES (3)")
                latencies.append(time.monotonic() - started)
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = run(connection_params, vacuum_tables=["orders"],
                     reindex_indexes=["idx_orders_strategy", "idx_orders_created"], lock_timeout_ms=1000)
    finally:
        stop.set()
        writer.join()
    assert result["status"] == "ok", result["errors"]
    assert invalid_indexes(pg_cluster, loaded) == []
    assert len(latencies) > 20
    assert max(latencies) < 2.0


def test_check_mode_runs_nothing(pg_cluster, loaded, connection_params):
    time.sleep(1.1)
    before = pg_cluster.execute(
        "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables WHERE relname = 'orders'", dbname=loaded)
    relfilenode = pg_cluster.execute("SELECT pg_relation_filenode('idx_orders_strategy')", dbname=loaded)

    result = run(connection_params, check_mode=True, vacuum_tables=["orders"],
                 reindex_indexes=["idx_orders_strategy"], analyze_database=True)

    assert result["changed"] is False
    assert result["would_execute"] == [
        'VACUUM (ANALYZE) "public"."orders"',
        'REINDEX INDEX CONCURRENTLY "public"."idx_orders_strategy"',
        "ANALYZE",
    ]
    assert "executed_commands" not in result
    assert [step["status"] for step in result["steps"]] == ["would_run"] * 3
    assert "sizes" in result["reports"]
    # REINDEX gives the index a new file; VACUUM and ANALYZE raise the counts.
    assert pg_cluster.execute("SELECT pg_relation_filenode('idx_orders_strategy')", dbname=loaded) == relfilenode
    time.sleep(1.1)
    assert pg_cluster.execute(
        "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables WHERE relname = 'orders'",
        dbname=loaded) == before


def test_failed_unique_index_is_detected(pg_cluster, loaded, connection_params):
    make_failed_unique_index(pg_cluster, loaded)
    assert invalid_indexes(pg_cluster, loaded) == ["idx_dup_rows_v"]

    result = run(connection_params)

    assert result["status"] == "ok"
    found = result["invalid_indexes_found"]
    assert [(row["index"], row["table"], row["leftover"], row["action"]) for row in found] == [
        ("idx_dup_rows_v", "dup_rows", None, "reported")]
    assert [row["index"] for row in result["reports"]["invalid_indexes"]] == ["idx_dup_rows_v"]
    assert result["changed"] is False


def test_failed_unique_index_rebuild_reports_failure(pg_cluster, loaded, connection_params):
    make_failed_unique_index(pg_cluster, loaded)

    result = run(connection_params, invalid_indexes="rebuild")

    assert result["status"] == "failed"
    assert result["invalid_indexes_found"][0]["action"] == "failed"
    assert result["errors"][0].startswith('REINDEX of "idx_dup_rows_v" failed: could not create unique index')
    # The failed rebuild's own _ccnew copy is dropped again.
    assert invalid_indexes(pg_cluster, loaded) == ["idx_dup_rows_v"]


def test_reindex_leftover_is_dropped(pg_cluster, loaded, connection_params):
    make_reindex_leftover(pg_cluster, loaded, "idx_positions_strategy")
    assert invalid_indexes(pg_cluster, loaded) == ["idx_positions_strategy_ccnew"]

    report = run(connection_params)
    row = report["invalid_indexes_found"][0]
    assert (row["index"], row["leftover"], row["leftover_of"], row["action"]) == (
        "idx_positions_strategy_ccnew", "new", "idx_positions_strategy", "reported")

    result = run(connection_params, invalid_indexes="rebuild", reindex_indexes=["idx_positions_strategy"])

    assert result["status"] == "ok", result["errors"]
    assert result["invalid_indexes_found"][0]["action"] == "dropped"
    assert result["executed_commands"][0] == 'DROP INDEX CONCURRENTLY "public"."idx_positions_strategy_ccnew"'
    assert invalid_indexes(pg_cluster, loaded) == []
    assert result["reindexed_valid"] == {"idx_positions_strategy": True}


def test_missing_index_is_reported(loaded, connection_params):
    with pytest.raises(NotFoundError) as caught:
        run(connection_params, vacuum_tables=["orders"], reindex_indexes=["idx_no_such"])
    assert str(caught.value) == (
        'Index "idx_no_such" not found in schema "public" of database "%s". Hint: List the indexes with '
        '\\di public.* in psql, or remove the name from the options.' % loaded)


def test_missing_table_is_reported_before_anything_runs(pg_cluster, loaded, connection_params):
    time.sleep(1.1)
    before = pg_cluster.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'orders'",
                                dbname=loaded)
    with pytest.raises(NotFoundError) as caught:
        run(connection_params, vacuum_tables=["orders", "Orders"])
    assert str(caught.value) == (
        'Table "Orders" not found in schema "public" of database "%s". '
        'Hint: Names match exactly, case included; did you mean "orders"?' % loaded)
    time.sleep(1.1)
    assert pg_cluster.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'orders'",
                              dbname=loaded) == before


def test_odd_table_name(pg_cluster, loaded, connection_params):
    pg_cluster.execute('DROP TABLE IF EXISTS "Odd ""T""; x"; CREATE TABLE "Odd ""T""; x" (v int);'
                       'CREATE INDEX "Odd Idx;" ON "Odd ""T""; x" (v)', dbname=loaded)
    result = run(connection_params, vacuum_tables=['Odd "T"; x'], reindex_indexes=["Odd Idx;"])
    assert result["status"] == "ok", result["errors"]
    assert result["executed_commands"] == [
        'VACUUM (ANALYZE) "public"."Odd ""T""; x"', 'REINDEX INDEX CONCURRENTLY "public"."Odd Idx;"']


def test_unused_index_report(pg_cluster, loaded, connection_params):
    pg_cluster.execute("SELECT pg_stat_reset()", dbname=loaded)
    pg_cluster.execute("SET enable_seqscan = off; SELECT count(*) FROM orders WHERE strategy_id = 3",
                       dbname=loaded)
    time.sleep(1.1)

    report = run(connection_params, reports=["unused_indexes"])["reports"]["unused_indexes"]

    assert report["since_source"] == "stats_reset"
    assert report["since"] is not None
    names = [row["index"] for row in report["indexes"]]
    assert "idx_orders_created" in names
    assert "idx_positions_strategy" in names
    assert "idx_orders_strategy" not in names
    assert "orders_pkey" not in names
    assert "orders_client_ref_key" not in names


def test_unused_index_since_postmaster_start(pg_cluster, connection_params):
    runner = SqlRunner(connect(connection_params))
    try:
        runner.query("SELECT 1")
        fresh = "tradeops_test_fresh_stats"
        run_outside_transaction(pg_cluster, 'DROP DATABASE IF EXISTS "%s"' % fresh)
        run_outside_transaction(pg_cluster, 'CREATE DATABASE "%s"' % fresh)
        params = dict(connection_params, login_db=fresh)
        report = run(params, reports=["unused_indexes"])["reports"]["unused_indexes"]
        assert report["since_source"] == "postmaster_start"
    finally:
        runner.close()
        run_outside_transaction(pg_cluster, 'DROP DATABASE IF EXISTS "tradeops_test_fresh_stats" WITH (FORCE)')


def test_module_runs_and_check_mode(pg_cluster, loaded, connection_params, module_runner):
    args = dict(connection_params, vacuum_tables=["orders"], reindex_indexes=["idx_orders_strategy"],
                analyze_tables=["positions"])

    preview = module_runner("pg_maintenance", args, check=True)
    assert preview.get("failed") is not True, preview
    assert preview["changed"] is False
    assert len(preview["would_execute"]) == 3

    result = module_runner("pg_maintenance", args)
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert result["executed_commands"] == [
        'VACUUM (ANALYZE) "public"."orders"', 'REINDEX INDEX CONCURRENTLY "public"."idx_orders_strategy"',
        'ANALYZE "public"."positions"']
    assert result["reports"]["unused_indexes"]["since_source"] in ("stats_reset", "postmaster_start")


def test_module_reports_missing_index(connection_params, loaded, module_runner):
    result = module_runner("pg_maintenance", dict(connection_params, reindex_indexes=["idx_gone"]))
    assert result["failed"] is True
    assert result["msg"] == (
        'Index "idx_gone" not found in schema "public" of database "%s". Hint: List the indexes with '
        '\\di public.* in psql, or remove the name from the options.' % loaded)
    assert result["index"] == "idx_gone"
