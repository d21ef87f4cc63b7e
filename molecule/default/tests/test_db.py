"""Database hosts: PostgreSQL, the trading schema and data, least privilege."""

import json

import pytest
from lab_hosts import hosts_in_group

testinfra_hosts = hosts_in_group("db")

TABLES = [
    "tick_data", "ohlc_candles", "orders", "positions", "strategies",
    "order_history", "order_book_snapshots", "backtest_results", "system_logs",
    "strategy_performance", "broker_credentials", "system_alerts",
]
INDEXES = [
    "idx_tick_data_instrument_time", "idx_ohlc_instrument_timeframe",
    "idx_orders_strategy", "idx_positions_strategy",
]

CRON_OUTPUT = ">>/var/log/tradeops/cron.log 2>&1"
EXPECTED_DB_CRON = [
    "30 1 * * * tradeops /usr/local/sbin/tradeops-verify-backups " + CRON_OUTPUT,
    "0 2 * * 0 tradeops /usr/local/sbin/tradeops-data-cleanup " + CRON_OUTPUT,
    "30 0 * * * tradeops /usr/local/sbin/tradeops-db-backup " + CRON_OUTPUT,
    "0 3 * * * tradeops /usr/local/sbin/tradeops-db-maintenance " + CRON_OUTPUT,
    "0 * * * * root /usr/local/sbin/tradeops-health-check " + CRON_OUTPUT,
    "0 4 * * * root /usr/local/sbin/tradeops-rotate-logs " + CRON_OUTPUT,
    "0 6 * * 1 tradeops /usr/local/sbin/tradeops-weekly-report " + CRON_OUTPUT,
]


def psql(host, sql):
    """Run one query in trading_db as the postgres superuser and return its rows."""
    result = host.run("runuser -u postgres -- psql -X -A -t -q -v ON_ERROR_STOP=1 "
                      "-d trading_db -c %s", sql)
    assert result.rc == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines() if line]


def cron_entries(host):
    content = host.file("/etc/cron.d/trading_app_tasks").content_string
    return [line for line in content.splitlines()
            if line and not line.startswith("#") and "=" not in line.split()[0]]


def test_cron_file_lists_db_jobs(host):
    assert cron_entries(host) == EXPECTED_DB_CRON


def test_postgresql_accepts_connections(host):
    assert host.run("pg_isready -q").rc == 0


def test_postgresql_listens_on_network(host):
    assert psql(host, "SHOW listen_addresses") == [["*"]]


@pytest.mark.parametrize("table", TABLES)
def test_table_owned_by_app_role(host, table):
    rows = psql(host, "SELECT tableowner FROM pg_tables WHERE schemaname = 'public' "
                      "AND tablename = '%s'" % table)
    assert rows == [["trading_user"]]


@pytest.mark.parametrize("table", TABLES)
def test_table_has_rows(host, table):
    count = int(psql(host, "SELECT count(*) FROM %s" % table)[0][0])
    assert count > 0


@pytest.mark.parametrize("index", INDEXES)
def test_named_index_exists(host, index):
    rows = psql(host, "SELECT count(*) FROM pg_indexes WHERE indexname = '%s'" % index)
    assert rows == [["1"]]


@pytest.mark.parametrize("table, column, age", [
    ("tick_data", "time", "30 days"),
    ("order_book_snapshots", "time", "7 days"),
    ("system_logs", "created_at", "90 days"),
])
def test_retention_rule_has_rows_both_sides(host, table, column, age):
    rows = psql(host, "SELECT count(*) FILTER (WHERE {c} < now() - interval '{a}'), "
                      "count(*) FILTER (WHERE {c} >= now() - interval '{a}') FROM {t}"
                      .format(c=column, a=age, t=table))
    older, newer = (int(value) for value in rows[0])
    assert older > 0
    assert newer > 0


def test_some_strategy_has_over_100_backtests(host):
    rows = psql(host, "SELECT max(n) FROM (SELECT count(*) AS n FROM backtest_results "
                      "GROUP BY strategy_id) AS per_strategy")
    assert int(rows[0][0]) > 100


@pytest.mark.parametrize("table", TABLES)
def test_backup_role_can_read_table(host, table):
    rows = psql(host, "SELECT has_table_privilege('trading_backup', 'public.%s', 'SELECT')" % table)
    assert rows == [["t"]]


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("privilege", ["INSERT", "UPDATE", "DELETE", "TRUNCATE"])
def test_backup_role_cannot_write_table(host, table, privilege):
    rows = psql(host, "SELECT has_table_privilege('trading_backup', 'public.%s', '%s')"
                % (table, privilege))
    assert rows == [["f"]]


def test_backup_role_is_not_privileged(host):
    rows = psql(host, "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls "
                      "FROM pg_roles WHERE rolname = 'trading_backup'")
    assert rows == [["f", "f", "f", "f"]]


def test_backup_role_sessions_are_read_only(host):
    rows = psql(host, "SELECT setconfig FROM pg_db_role_setting s "
                      "JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = 'trading_backup'")
    assert rows == [["{default_transaction_read_only=on}"]]


def test_public_cannot_connect(host):
    rows = psql(host, "SELECT has_database_privilege('public', 'trading_db', 'CONNECT')")
    assert rows == [["f"]]


def test_data_generator_rerun_keeps_data(host):
    result = host.run("cd /tmp && PGDATABASE=trading_db runuser -u postgres -- "
                      "/usr/local/share/tradeops/generate_trading_data.py --ticks 1000")
    assert result.rc == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["changed"] is False


def test_cron_runs_cron_d_entry(host):
    # A throwaway entry proves that cron reads /etc/cron.d and runs jobs,
    # not only that the daemon is up. Cron rereads the folder each minute.
    host.run("rm -f /tmp/tradeops-cron-proof")
    host.run("echo '* * * * * root touch /tmp/tradeops-cron-proof' > /etc/cron.d/tradeops_cron_proof")
    try:
        result = host.run("for i in $(seq 1 130); do [ -e /tmp/tradeops-cron-proof ] && exit 0; "
                          "sleep 1; done; exit 1")
        assert result.rc == 0, "cron did not run an /etc/cron.d entry within 130 seconds"
    finally:
        host.run("rm -f /etc/cron.d/tradeops_cron_proof /tmp/tradeops-cron-proof")
