"""Tests of the retention logic and the pg_retention module on a real PostgreSQL 15."""

import datetime
import threading
import time

import psycopg2
import pytest
from psycopg2 import sql

import tradeops_retention as retention
from tradeops_postgres import CheckModeViolation, ConfigError, SqlRunner, connect, table_identifier

# Rows are generated at half-hour offsets, so no row sits on a cut-off
# however long the test takes (under 30 minutes).
TICK_HOURS = 1440          # one row per hour, 60 days back
TICK_EXPIRED = 720         # rows older than 30 days
LOG_HOURS = 24 * 120       # 120 days of system_logs
LOG_EXPIRED = 24 * 30      # older than 90 days
KEEP = 100
# strategy_id -> number of backtest rows
BACKTESTS = {1: 40, 2: 100, 3: 101, 4: 250, 5: 1}


SCHEMA = """
DROP TABLE IF EXISTS tick_data, system_logs, backtest_results, delete_audit CASCADE;
CREATE TABLE tick_data (id bigserial PRIMARY KEY, instrument_id int NOT NULL, time timestamptz NOT NULL,
                        price numeric NOT NULL);
CREATE INDEX idx_tick_data_time ON tick_data (time);
INSERT INTO tick_data (instrument_id, time, price)
  SELECT i % 7, now() - make_interval(mins => i * 60 + 30), 100 + i FROM generate_series(0, {tick} - 1) AS i;
CREATE TABLE system_logs (id bigserial PRIMARY KEY, created_at timestamp NOT NULL, message text);
INSERT INTO system_logs (created_at, message)
  SELECT localtimestamp - make_interval(mins => i * 60 + 30), 'log ' || i FROM generate_series(0, {logs} - 1) AS i;
CREATE TABLE backtest_results (id bigserial PRIMARY KEY, strategy_id int, created_at timestamptz NOT NULL,
                               pnl numeric);
CREATE TABLE delete_audit (table_name text, deleted bigint, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION record_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO delete_audit (table_name, deleted) SELECT TG_TABLE_NAME, count(*) FROM old_rows;
  RETURN NULL;
END $$;
CREATE TRIGGER tick_data_deletes AFTER DELETE ON tick_data REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION record_delete();
CREATE TRIGGER backtest_deletes AFTER DELETE ON backtest_results REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION record_delete();
""".format(tick=TICK_HOURS, logs=LOG_HOURS)

POLICIES = [
    {"table": "tick_data", "time_column": "time", "max_age": "30 days"},
    {"table": "backtest_results", "keep_newest": KEEP, "partition_by": "strategy_id", "order_by": "created_at"},
    {"table": "system_logs", "time_column": "created_at", "max_age": "90 days"},
]


def load_data(pg_cluster, database):
    pg_cluster.execute("DROP FUNCTION IF EXISTS record_delete() CASCADE", dbname=database)
    pg_cluster.execute(SCHEMA, dbname=database)
    for strategy, rows in BACKTESTS.items():
        pg_cluster.execute(
            "INSERT INTO backtest_results (strategy_id, created_at, pnl)"
            " SELECT %s, now() - make_interval(hours => i), i FROM generate_series(1, %s) AS i",
            (strategy, rows), dbname=database)


def count(pg_cluster, database, statement, params=None):
    return pg_cluster.execute(statement, params, dbname=database)[0][0]


def open_runner(params, check_mode=False):
    return SqlRunner(connect(params), check_mode=check_mode)


def run(params, policies, check_mode=False, **option_values):
    runner = open_runner(params, check_mode)
    try:
        return retention.run_retention(
            runner, retention.normalize_policies(policies), retention.RetentionOptions(**option_values))
    finally:
        runner.close()


# Pure tests: parser and policy validation


@pytest.mark.parametrize("text, expected", [
    ("30 days", "30 days"),
    ("1 day", "1 days"),
    ("7d", "7 days"),
    ("  90 Days ", "90 days"),
    ("1 day 12 hours", "1 days 12 hours"),
    ("12 hours 1 day", "1 days 12 hours"),
    ("2 weeks", "2 weeks"),
    ("6 months", "6 months"),
    ("1 year", "1 years"),
    ("45 minutes", "45 minutes"),
    ("0 days 1 hour", "0 days 1 hours"),
])
def test_parse_max_age_valid(text, expected):
    assert retention.parse_max_age(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "expected whole numbers with units"),
    ("30", "expected whole numbers with units"),
    ("days", "expected whole numbers with units"),
    ("-30 days", "expected whole numbers with units"),
    ("1.5 days", "expected whole numbers with units"),
    ("30 days; DROP TABLE tick_data", "expected whole numbers with units"),
    ("30 fortnights", "unknown unit \"fortnights\""),
    ("1 day 2 days", "the unit \"days\" appears twice"),
    ("0 days", "it must be longer than zero"),
    (30, "expected a string"),
    (None, "expected a string"),
])
def test_parse_max_age_invalid(text, message):
    with pytest.raises(ConfigError) as caught:
        retention.parse_max_age(text)
    assert message in str(caught.value)


@pytest.mark.parametrize("policy, message", [
    ({"table": "t", "time_column": "time"}, 'Invalid retention policy #0 (table "t"): missing "max_age".'),
    ({"table": "t"}, 'Invalid retention policy #0 (table "t"): it has neither max_age nor keep_newest.'),
    ({"table": "t", "max_age": "1 day", "time_column": "c", "keep_newest": 3},
     'Invalid retention policy #0 (table "t"): it mixes the keys of an age policy and a keep_newest policy.'),
    ({"table": "t", "max_age": "1 day", "time_column": "c", "colour": "red"},
     'Invalid retention policy #0 (table "t"): unknown keys "colour".'),
    ({"table": "t", "keep_newest": 0, "partition_by": "k", "order_by": "o"},
     'Invalid retention policy #0 (table "t"): keep_newest must be a whole number of at least 1, got 0.'),
    ({"table": "t", "keep_newest": True, "partition_by": "k", "order_by": "o"},
     'Invalid retention policy #0 (table "t"): keep_newest must be a whole number of at least 1, got True.'),
    ({"table": "bad%name", "max_age": "1 day", "time_column": "c"},
     'Invalid table name "bad%name": percent signs and NUL characters are not supported.'),
    ({"table": "t", "max_age": "1 day", "time_column": "c", "optional": "maybe"},
     'Invalid retention policy #0 (table "t"): optional must be true or false.'),
    ("tick_data", "Invalid retention policy #0: expected a mapping, got str."),
])
def test_normalize_policy_invalid(policy, message):
    with pytest.raises(ConfigError) as caught:
        retention.normalize_policy(policy, 0)
    assert str(caught.value).startswith(message)


def test_normalize_policy_keep_newest_from_strings():
    policy = retention.normalize_policy(
        {"table": "b", "keep_newest": "100", "partition_by": "strategy_id", "order_by": "created_at",
         "optional": "true"}, 0)
    assert policy["keep_newest"] == 100
    assert policy["partition_by"] == ["strategy_id"]
    assert policy["optional"] is True
    assert policy["schema"] == "public"


@pytest.mark.parametrize("mode, expected", [
    ("", 'ALTER TABLE "public"."t" DETACH PARTITION "public"."t_p1"'),
    ("CONCURRENTLY", 'ALTER TABLE "public"."t" DETACH PARTITION "public"."t_p1" CONCURRENTLY'),
    ("FINALIZE", 'ALTER TABLE "public"."t" DETACH PARTITION "public"."t_p1" FINALIZE'),
])
def test_build_detach(pg_cluster, mode, expected):
    conn = pg_cluster.connect()
    statement = retention.build_detach(table_identifier("public", "t"), table_identifier("public", "t_p1"), mode)
    assert statement.as_string(conn) == expected
    conn.close()


def test_build_sql_quotes_odd_identifiers(pg_cluster):
    conn = pg_cluster.connect()
    table = table_identifier("public", 'Tick "Data"; DROP')
    assert retention.build_age_count(table, "Time Col").as_string(conn) == (
        'SELECT count(*) AS rows FROM "public"."Tick ""Data""; DROP" WHERE "Time Col" < %s')
    assert retention.build_age_delete(table, "t").as_string(conn) == (
        'DELETE FROM "public"."Tick ""Data""; DROP" WHERE ctid = ANY(ARRAY(SELECT ctid FROM '
        '"public"."Tick ""Data""; DROP" WHERE "t" < %s LIMIT %s)) AND "t" < %s')
    keep = retention.build_keep_newest_delete(table, table, ["a", "B b"], "o").as_string(conn)
    assert 'PARTITION BY "a", "B b" ORDER BY "o" DESC NULLS LAST, ctid DESC' in keep
    assert keep.endswith("WHERE ranked.position > %s AND ranked.tableoid = %s::oid LIMIT %s))")
    conn.close()


@pytest.mark.parametrize("bound, expected", [
    ("FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-01-02 00:00:00+00')", "2024-01-02 00:00:00+00"),
    ("FOR VALUES FROM ('2024-01-01') TO ('2024-02-01')", "2024-02-01"),
    ("FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)", None),
    ("DEFAULT", None),
    ("FOR VALUES IN ('a')", None),
    (None, None),
])
def test_parse_range_upper_bound(bound, expected):
    assert retention.parse_range_upper_bound(bound) == expected


# Database tests


def test_policies_delete_exactly_expired_rows(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    assert count(pg_cluster, database, "SELECT count(*) FROM tick_data") == TICK_HOURS

    result = run(connection_params, POLICIES, batch_size=97)

    assert result["status"] == "ok"
    assert result["changed"] is True
    by_table = dict((entry["table"], entry) for entry in result["policies"])
    assert by_table["tick_data"]["rows_deleted"] == TICK_EXPIRED
    assert by_table["tick_data"]["batches"] == TICK_EXPIRED // 97 + 1
    assert count(pg_cluster, database, "SELECT count(*) FROM tick_data") == TICK_HOURS - TICK_EXPIRED
    assert count(pg_cluster, database,
                 "SELECT count(*) FROM tick_data WHERE time < now() - interval '30 days'") == 0
    assert by_table["system_logs"]["rows_deleted"] == LOG_EXPIRED
    assert count(pg_cluster, database, "SELECT count(*) FROM system_logs") == LOG_HOURS - LOG_EXPIRED
    expected_backtests_deleted = sum(max(0, rows - KEEP) for rows in BACKTESTS.values())
    assert by_table["backtest_results"]["rows_deleted"] == expected_backtests_deleted
    assert result["rows_deleted"] == TICK_EXPIRED + LOG_EXPIRED + expected_backtests_deleted
    assert any(command.startswith('DELETE FROM "public"."tick_data"') for command in result["executed_commands"])


def test_keep_newest_keeps_exactly_n_per_key(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    newest = pg_cluster.execute(
        "SELECT strategy_id, array_agg(id ORDER BY created_at DESC) FROM backtest_results GROUP BY strategy_id",
        dbname=database)
    expected = dict((strategy, sorted(ids[:KEEP])) for strategy, ids in newest)

    run(connection_params, [POLICIES[1]], batch_size=13)

    kept = pg_cluster.execute(
        "SELECT strategy_id, array_agg(id ORDER BY id) FROM backtest_results GROUP BY strategy_id",
        dbname=database)
    kept = dict(kept)
    for strategy, rows in BACKTESTS.items():
        assert len(kept[strategy]) == min(rows, KEEP)
        assert kept[strategy] == expected[strategy]


def test_keep_newest_null_key_and_null_time(pg_cluster, database, connection_params):
    pg_cluster.execute(
        "DROP TABLE IF EXISTS nullable; CREATE TABLE nullable (k int, t timestamptz);"
        "INSERT INTO nullable SELECT NULL, now() - make_interval(hours => i) FROM generate_series(1, 5) i;"
        "INSERT INTO nullable SELECT 1, NULL FROM generate_series(1, 3);"
        "INSERT INTO nullable VALUES (1, now());", dbname=database)

    run(connection_params, [{"table": "nullable", "keep_newest": 2, "partition_by": "k", "order_by": "t"}])

    rows = pg_cluster.execute("SELECT k, t IS NULL FROM nullable ORDER BY k, t", dbname=database)
    assert len([row for row in rows if row[0] is None]) == 2
    # A NULL time ranks oldest, so key 1 keeps its one dated row and one undated row.
    assert sorted(row[1] for row in rows if row[0] == 1) == [False, True]


def test_check_mode_counts_and_deletes_nothing(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    time.sleep(1.1)  # PostgreSQL 15 flushes table statistics at most once a second
    deletes_before = count(pg_cluster, database,
                           "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'tick_data'")

    result = run(connection_params, POLICIES, check_mode=True, batch_size=100)

    assert result["status"] == "ok"
    assert result["changed"] is False
    by_table = dict((entry["table"], entry) for entry in result["policies"])
    assert by_table["tick_data"]["rows_to_delete"] == TICK_EXPIRED
    assert by_table["system_logs"]["rows_to_delete"] == LOG_EXPIRED
    assert by_table["backtest_results"]["rows_to_delete"] == sum(max(0, n - KEEP) for n in BACKTESTS.values())
    assert by_table["tick_data"]["batches"] == 0
    assert "executed_commands" not in result
    assert any(statement.startswith('DELETE FROM "public"."tick_data" WHERE ctid = ANY')
               for statement in result["would_execute"])
    assert count(pg_cluster, database, "SELECT count(*) FROM tick_data") == TICK_HOURS
    assert count(pg_cluster, database, "SELECT count(*) FROM delete_audit") == 0
    time.sleep(1.1)
    assert count(pg_cluster, database,
                 "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'tick_data'") == deletes_before


def test_runner_rejects_writes_in_check_mode(connection_params, pg_cluster, database):
    pg_cluster.execute("DROP SEQUENCE IF EXISTS gate_seq; CREATE SEQUENCE gate_seq", dbname=database)
    runner = open_runner(connection_params, check_mode=True)
    try:
        with pytest.raises(CheckModeViolation):
            runner.query("DELETE FROM tick_data")
        with pytest.raises(CheckModeViolation):
            runner.query("WITH gone AS (DELETE FROM tick_data RETURNING 1) SELECT count(*) FROM gone")
        # A write hidden in a SELECT fails too, because the session is read-only.
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            runner.query("SELECT nextval('gate_seq')")
        assert runner.change("VACUUM tick_data") is None
        assert runner.would_execute == ["VACUUM tick_data"]
    finally:
        runner.close()


def test_missing_table_error_and_optional_warning(connection_params, database):
    result = run(connection_params, [{"table": "no_such_table", "time_column": "time", "max_age": "1 day"}])
    assert result["status"] == "failed"
    assert result["policies"][0]["status"] == "failed"
    assert result["policies"][0]["error"] == (
        'Table "no_such_table" not found in schema "public" of database "%s". Hint: Check the table name and '
        'schema, or mark the policy optional: true if the table may be absent.' % database)

    result = run(connection_params, [{"table": "no_such_table", "time_column": "time", "max_age": "1 day",
                                      "optional": True}])
    assert result["status"] == "ok"
    assert result["policies"][0]["status"] == "skipped"
    assert len(result["warnings"]) == 1
    assert 'Table "no_such_table" not found' in result["warnings"][0]


def test_wrong_case_table_name_gets_hint(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    result = run(connection_params, [{"table": "Tick_Data", "time_column": "time", "max_age": "1 day"}])
    assert result["policies"][0]["error"] == (
        'Table "Tick_Data" not found in schema "public" of database "%s". '
        'Hint: Names match exactly, case included; did you mean "tick_data"?' % database)


def test_missing_column_error(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    result = run(connection_params, [{"table": "tick_data", "time_column": "ts", "max_age": "1 day"}])
    assert result["policies"][0]["error"] == (
        'Column "ts" not found in table "public.tick_data". '
        'Hint: Columns of "public.tick_data": id, instrument_id, price, time.')


def test_non_time_column_rejected(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    result = run(connection_params, [{"table": "tick_data", "time_column": "price", "max_age": "1 day"}])
    assert result["policies"][0]["status"] == "failed"
    assert result["policies"][0]["error"].startswith(
        'Column "price" of table "public.tick_data" has type numeric, which an age policy cannot compare')


def test_odd_identifiers(pg_cluster, database, connection_params):
    table = 'Tick "Data"; DROP TABLE tick_data; --'
    column = 'Event Time'
    pg_cluster.execute(sql.SQL(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({c} timestamptz, {k} int);"
        "INSERT INTO {t} SELECT now() - make_interval(mins => i * 60 + 30), i % 3 FROM generate_series(0, 99) i"
    ).format(t=sql.Identifier(table), c=sql.Identifier(column), k=sql.Identifier("Key;Col")).as_string(
        pg_cluster.connect(database)), dbname=database)

    result = run(connection_params, [
        {"table": table, "time_column": column, "max_age": "50 hours"},
        {"table": table, "keep_newest": 10, "partition_by": "Key;Col", "order_by": column},
    ], batch_size=7)

    assert result["status"] == "ok"
    assert result["policies"][0]["rows_deleted"] == 50
    assert result["policies"][1]["rows_deleted"] == 20
    assert count(pg_cluster, database, sql.SQL("SELECT count(*) FROM {t}").format(
        t=sql.Identifier(table)).as_string(pg_cluster.connect(database))) == 30
    assert count(pg_cluster, database, "SELECT count(*) FROM pg_class WHERE relname = 'tick_data'") == 1


def test_lock_timeout_is_retried_then_reported(pg_cluster, database, connection_params):
    load_data(pg_cluster, database)
    blocker = pg_cluster.connect(database)
    blocker.autocommit = False
    with blocker.cursor() as cur:
        cur.execute("LOCK TABLE tick_data IN ACCESS EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        result = run(connection_params, [POLICIES[0]], lock_timeout_ms=200, lock_retries=2, retry_delay_ms=100)
        elapsed = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()

    entry = result["policies"][0]
    assert result["status"] == "failed"
    assert entry["status"] == "lock_timeout"
    assert entry["retries"] == 2
    assert entry["rows_deleted"] == 0
    assert entry["error"] == (
        'Lock not granted while deleting rows on table "public.tick_data": canceling statement due to lock '
        'timeout (3 attempts, lock_timeout 200 ms). Hint: Another session holds a conflicting lock; the next '
        'run tries again.')
    # Three waits of 200 ms and retry delays of 100 and 200 ms.
    assert elapsed < 5


def test_concurrent_writer_is_not_blocked(pg_cluster, database, connection_params):
    lock_timeout_ms = 500
    pg_cluster.execute(
        "DROP TABLE IF EXISTS busy_ticks; CREATE TABLE busy_ticks (id bigserial PRIMARY KEY, time timestamptz);"
        "CREATE INDEX ON busy_ticks (time);"
        "INSERT INTO busy_ticks (time) SELECT now() - make_interval(secs => i * 60 + 30)"
        " FROM generate_series(0, 199999) i", dbname=database)
    expired = count(pg_cluster, database,
                    "SELECT count(*) FROM busy_ticks WHERE time < now() - interval '30 days'")
    latencies = []
    stop = threading.Event()

    def write():
        conn = pg_cluster.connect(database)
        with conn.cursor() as cur:
            while not stop.is_set():
                started = time.monotonic()
                cur.execute("INSERT INTO busy_ticks (time) VALUES (now())")
                latencies.append(time.monotonic() - started)
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.2)
        result = run(connection_params, [{"table": "busy_ticks", "time_column": "time", "max_age": "30 days"}],
                     batch_size=2000, lock_timeout_ms=lock_timeout_ms)
        time.sleep(0.2)
    finally:
        stop.set()
        writer.join()

    assert result["status"] == "ok"
    assert result["policies"][0]["rows_deleted"] == expired
    assert result["policies"][0]["batches"] > 10
    assert len(latencies) > 50
    # A correctness bound, not a speed target: no insert waits longer than
    # lock_timeout, plus one second for a slow test machine.
    assert max(latencies) < lock_timeout_ms / 1000.0 + 1.0


# Partitioned tables

def create_partitioned(pg_cluster, database, name, with_default):
    """Create daily partitions for the last 11 days and tomorrow, 24 rows a day.

    Returns the inserted row times.
    """
    pg_cluster.execute(sql.SQL(
        "DROP TABLE IF EXISTS {t} CASCADE;"
        "CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY, time timestamptz NOT NULL, v int)"
        " PARTITION BY RANGE (time)").format(t=sql.Identifier(name)).as_string(pg_cluster.connect(database)),
        dbname=database)
    today = pg_cluster.execute("SELECT date_trunc('day', now())", dbname=database)[0][0]
    for day in range(-1, 11):
        lower = today - datetime.timedelta(days=day)
        upper = lower + datetime.timedelta(days=1)
        pg_cluster.execute(sql.SQL("CREATE TABLE {p} PARTITION OF {t} FOR VALUES FROM (%s) TO (%s)").format(
            p=sql.Identifier("%s_d%d" % (name, day)), t=sql.Identifier(name)).as_string(
            pg_cluster.connect(database)), (lower, upper), dbname=database)
    if with_default:
        pg_cluster.execute(sql.SQL("CREATE TABLE {p} PARTITION OF {t} DEFAULT").format(
            p=sql.Identifier(name + "_default"), t=sql.Identifier(name)).as_string(pg_cluster.connect(database)),
            dbname=database)
    start = today - datetime.timedelta(days=10)
    times = [start + datetime.timedelta(hours=h, minutes=17) for h in range(24 * 11)]
    if with_default:
        # Old rows outside every range land in the default partition.
        times += [today - datetime.timedelta(days=40, hours=h) for h in range(5)]
    conn = pg_cluster.connect(database)
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {t} (time, v) VALUES (%s, 1)").format(t=sql.Identifier(name)),
                        [(t,) for t in times])
    conn.close()
    return today, times


def expected_drops(name, today, cutoff):
    return sorted("%s_d%d" % (name, day) for day in range(-1, 11)
                  if today - datetime.timedelta(days=day) + datetime.timedelta(days=1) <= cutoff)


@pytest.mark.parametrize("with_default", [False, True], ids=["concurrent-detach", "default-partition"])
def test_partition_retention_drops_expired_partitions(pg_cluster, database, connection_params, with_default):
    name = "ticks_part"
    today, times = create_partitioned(pg_cluster, database, name, with_default)
    policy = {"table": name, "time_column": "time", "max_age": "7 days"}

    preview = run(connection_params, [policy], check_mode=True)
    cutoff = datetime.datetime.fromisoformat(preview["policies"][0]["cutoff"])
    planned = sorted(p["partition"] for p in preview["policies"][0]["partitions_to_drop"])
    assert planned == expected_drops(name, today, cutoff)
    assert count(pg_cluster, database,
                 "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", (name,)) == 12 + with_default

    result = run(connection_params, [policy], batch_size=5)
    cutoff = datetime.datetime.fromisoformat(result["policies"][0]["cutoff"])
    entry = result["policies"][0]

    assert entry["status"] == "ok"
    dropped = sorted(p["partition"] for p in entry["partitions_dropped"])
    assert dropped == expected_drops(name, today, cutoff)
    assert len(dropped) == 3
    remaining = [row[0] for row in pg_cluster.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass", (name,), dbname=database)]
    assert not set(dropped) & set(remaining)
    assert count(pg_cluster, database, "SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", (dropped,)) == 0
    in_dropped = sum(p["rows"] for p in entry["partitions_dropped"])
    assert in_dropped == 24 * 3
    kept = [t for t in times if t >= cutoff]
    assert count(pg_cluster, database, "SELECT count(*) FROM ticks_part") == len(kept)
    assert entry["rows_deleted"] == len(times) - len(kept) - in_dropped
    detach = [c for c in result["executed_commands"] if "DETACH PARTITION" in c]
    assert len(detach) == 3
    assert all(c.endswith("CONCURRENTLY") != with_default for c in detach)


def test_keep_newest_on_partitioned_table(pg_cluster, database, connection_params):
    name = "ranked_part"
    pg_cluster.execute(
        "DROP TABLE IF EXISTS ranked_part; CREATE TABLE ranked_part (k int, t timestamptz) PARTITION BY LIST (k);"
        "CREATE TABLE ranked_part_a PARTITION OF ranked_part FOR VALUES IN (1, 2);"
        "CREATE TABLE ranked_part_b PARTITION OF ranked_part FOR VALUES IN (3);"
        "INSERT INTO ranked_part SELECT 1 + i % 3, now() - make_interval(mins => i) FROM generate_series(1, 90) i",
        dbname=database)
    result = run(connection_params, [{"table": name, "keep_newest": 5, "partition_by": "k", "order_by": "t"}],
                 batch_size=4)
    assert result["policies"][0]["rows_deleted"] == 75
    assert pg_cluster.execute("SELECT k, count(*) FROM ranked_part GROUP BY k ORDER BY k", dbname=database) == [
        (1, 5), (2, 5), (3, 5)]


# The module as Ansible runs it


def test_module_runs_and_check_mode(pg_cluster, database, connection_params, module_runner):
    load_data(pg_cluster, database)
    args = dict(connection_params, policies=POLICIES, batch_size=500)

    preview = module_runner("pg_retention", args, check=True)
    assert preview.get("failed") is not True, preview
    assert preview["changed"] is False
    assert preview["rows_to_delete"] == TICK_EXPIRED + LOG_EXPIRED + sum(max(0, n - KEEP) for n in BACKTESTS.values())
    assert count(pg_cluster, database, "SELECT count(*) FROM tick_data") == TICK_HOURS
    assert count(pg_cluster, database, "SELECT count(*) FROM delete_audit") == 0

    result = module_runner("pg_retention", args)
    assert result["changed"] is True
    assert result["status"] == "ok"
    assert result["rows_deleted"] == preview["rows_to_delete"]

    again = module_runner("pg_retention", args)
    assert again["changed"] is False
    assert again["rows_deleted"] == 0


def test_module_reports_missing_table(connection_params, database, module_runner):
    args = dict(connection_params, policies=[{"table": "no_such_table", "time_column": "time", "max_age": "1d"}])
    result = module_runner("pg_retention", args)
    assert result["failed"] is True
    assert result["msg"] == 'Retention failed for tables "no_such_table"; see the policies entries for each cause.'
    assert result["policies"][0]["error"].startswith('Table "no_such_table" not found in schema "public"')


def test_module_rejects_bad_max_age(connection_params, module_runner):
    args = dict(connection_params, policies=[{"table": "t", "time_column": "time", "max_age": "30 dayz"}])
    result = module_runner("pg_retention", args)
    assert result["failed"] is True
    assert result["msg"] == ('Invalid max_age "30 dayz": unknown unit "dayz". Hint: Units: seconds, minutes, '
                             'hours, days, weeks, months, years.')


def test_module_hides_password_on_connect_failure(pg_cluster, database, module_runner):
    args = {"login_host": pg_cluster.host, "login_port": pg_cluster.port, "login_user": "nobody",
            "login_password": "s3cret-value", "login_db": database,
            "policies": [{"table": "t", "time_column": "time", "max_age": "1 day"}]}
    result = module_runner("pg_retention", args)
    assert result["failed"] is True
    assert result["msg"].startswith('Failed to connect to database "%s" as user "nobody" on "127.0.0.1"' % database)
    assert "s3cret-value" not in str(result)
