"""Run the installed maintenance and cleanup jobs on the molecule db host."""

import pytest

DB = "trading_db"
LOG_DIR = "/var/log/tradeops"


def psql(host, query):
    """Return the single value of a query run as postgres."""
    command = host.run("runuser -u postgres -- psql -XAtq -d %s -c %s" % (DB, host.quote_shell(query)))
    assert command.rc == 0, command.stderr
    return command.stdout.strip()


def run_job(host, job, env=""):
    return host.run("runuser -u tradeops -- env %s /usr/local/sbin/%s" % (env, job))


@pytest.fixture(scope="module")
def quote_host(host):
    host.quote_shell = lambda text: "'" + text.replace("'", "'\\''") + "'"
    return host


def test_files_installed(host):
    for name in ("tradeops_postgres.py", "tradeops_maintenance.py", "tradeops_retention.py",
                 "tradeops_pg_jobs.py"):
        assert host.file("/usr/local/lib/tradeops/python/" + name).is_file
    for job in ("tradeops-db-maintenance", "tradeops-data-cleanup"):
        assert host.file("/usr/local/sbin/" + job).mode == 0o755
    pgpass = host.file("/var/lib/tradeops/.pgpass")
    assert pgpass.user == "tradeops"
    assert pgpass.mode == 0o600
    assert "127.0.0.1:5432:trading_db:trading_maint:maint\\:pass\\\\word 1" in pgpass.content_string
    config = host.file("/etc/tradeops/pg_maintenance.json")
    assert config.mode == 0o640
    assert config.group == "tradeops"
    assert "maint:pass" not in config.content_string


def test_cleanup_dry_run_deletes_nothing(quote_host):
    host = quote_host
    before = psql(host, "SELECT count(*) FROM tick_data")
    job = run_job(host, "tradeops-data-cleanup", "TRADEOPS_DRY_RUN=1")
    assert job.rc == 0, job.stderr
    assert psql(host, "SELECT count(*) FROM tick_data") == before
    log = host.file(LOG_DIR + "/data-cleanup.log").content_string
    assert "[DRY-RUN] pg_job: retention tick_data: would delete" in log


def test_cleanup_deletes_expired_rows(quote_host):
    host = quote_host
    expired = int(psql(host, "SELECT count(*) FROM tick_data WHERE time < now() - interval '30 days'"))
    assert expired > 0
    total = int(psql(host, "SELECT count(*) FROM tick_data"))

    job = run_job(host, "tradeops-data-cleanup")

    assert job.rc == 0, job.stderr
    assert psql(host, "SELECT count(*) FROM tick_data WHERE time < now() - interval '30 days'") == "0"
    assert int(psql(host, "SELECT count(*) FROM tick_data")) == total - expired
    assert psql(host, "SELECT count(*) FROM order_book_snapshots WHERE time < now() - interval '7 days'") == "0"
    assert psql(host, "SELECT count(*) FROM system_logs WHERE created_at < now() - interval '90 days'") == "0"
    assert psql(host, "SELECT max(n) FROM (SELECT count(*) AS n FROM backtest_results GROUP BY strategy_id) s") == "100"
    log = host.file(LOG_DIR + "/data-cleanup.log").content_string
    assert "pg_job: retention tick_data: deleted %d rows" % expired in log
    assert "pg_job: ANALYZE tick_data: ok" in log
    assert log.rstrip().endswith("data-cleanup completed")
    assert "maint:pass" not in log


def test_maintenance_runs_and_reports(quote_host):
    host = quote_host
    job = run_job(host, "tradeops-db-maintenance")
    assert job.rc == 0, job.stderr
    log = host.file(LOG_DIR + "/db-maintenance.log").content_string
    for line in ("pg_job: VACUUM tick_data: ok", "pg_job: VACUUM order_history: ok",
                 "pg_job: REINDEX idx_tick_data_instrument_time: ok", "pg_job: REINDEX idx_orders_strategy: ok",
                 "pg_job: ANALYZE trading_db: ok", "pg_job: unused indexes:", "pg_job: table size tick_data:",
                 "pg_job: table stats orders:"):
        assert line in log
    assert log.rstrip().endswith("db-maintenance completed")
    assert psql(host, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == "0"
    status = host.file("/var/lib/tradeops/status/db-maintenance.status").content_string
    assert "exit_code=0" in status


def test_maintenance_bad_config_exits_78(quote_host):
    host = quote_host
    host.run("printf '{not json' > /tmp/bad.json && chmod 0644 /tmp/bad.json")
    job = run_job(host, "tradeops-db-maintenance", "TRADEOPS_PG_CONFIG=/tmp/bad.json")
    assert job.rc == 78
    log = host.file(LOG_DIR + "/db-maintenance.log").content_string
    assert 'Invalid JSON in the settings file "/tmp/bad.json"' in log


def test_cleanup_unreachable_database_exits_69(quote_host):
    host = quote_host
    host.run("sed 's/\"login_port\": 5432/\"login_port\": 5999/' /etc/tradeops/pg_maintenance.json"
             " > /tmp/wrong-port.json && chmod 0644 /tmp/wrong-port.json")
    job = run_job(host, "tradeops-data-cleanup", "TRADEOPS_PG_CONFIG=/tmp/wrong-port.json")
    assert job.rc == 69
    log = host.file(LOG_DIR + "/data-cleanup.log").content_string
    assert 'Failed to connect to database "trading_db" as user "trading_maint"' in log
