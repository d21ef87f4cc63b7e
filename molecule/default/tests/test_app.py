"""Application hosts: the application stand-in, its folders, and its view of the database."""

import pytest
from conftest import write_file
from lab_hosts import first_in_group, hosts_in_group

testinfra_hosts = hosts_in_group("app")

CRON_OUTPUT = ">>/var/log/tradeops/cron.log 2>&1"
EXPECTED_APP_CRON = [
    "45 0 * * * root /usr/local/sbin/tradeops-app-backup " + CRON_OUTPUT,
    "0 1 * * * root /usr/local/sbin/tradeops-broker-data " + CRON_OUTPUT,
    "0 * * * * root /usr/local/sbin/tradeops-health-check " + CRON_OUTPUT,
    "0 4 * * * root /usr/local/sbin/tradeops-rotate-logs " + CRON_OUTPUT,
]


def cron_entries(host):
    content = host.file("/etc/cron.d/trading_app_tasks").content_string
    return [line for line in content.splitlines()
            if line and not line.startswith("#") and "=" not in line.split()[0]]


def test_cron_file_lists_app_jobs(host):
    assert cron_entries(host) == EXPECTED_APP_CRON


def test_application_process_running(host):
    processes = host.process.filter(comm="trading-app")
    assert len(processes) == 1
    assert processes[0].user == "trading"


def test_application_log_grows(host):
    log = host.file("/opt/trading-app/logs/app.log")
    assert log.user == "trading"
    assert log.contains("heartbeat")


@pytest.mark.parametrize("path, owner, group, mode", [
    ("/opt/trading-app/logs", "trading", "trading", 0o750),
    ("/opt/trading-app/logs/archive", "trading", "trading", 0o750),
    ("/opt/trading-app/config", "root", "trading", 0o750),
    ("/opt/trading-app/scripts", "root", "trading", 0o750),
])
def test_application_directory(host, path, owner, group, mode):
    directory = host.file(path)
    assert directory.is_directory
    assert directory.user == owner
    assert directory.group == group
    assert directory.mode == mode


def test_env_file_is_private(host):
    env_file = host.file("/opt/trading-app/.env")
    assert env_file.user == "root"
    assert env_file.group == "trading"
    assert env_file.mode == 0o640


@pytest.fixture(scope="module")
def backup_pgpass(host, lab_secret):
    """Give root on the app host a .pgpass entry for the backup role."""
    password = lab_secret("trading_backup").replace("\\", "\\\\").replace(":", "\\:")
    write_file(first_in_group("app"), "/root/.pgpass-verify",
               "%s:5432:trading_db:trading_backup:%s\n" % (first_in_group("db"), password))
    return "/root/.pgpass-verify"


def test_backup_role_reaches_database_over_network(host, backup_pgpass):
    db_host = first_in_group("db")
    result = host.run("PGPASSFILE=/root/.pgpass-verify psql -X -A -t -h %s -U trading_backup "
                      "-d trading_db -c 'SELECT count(*) > 0 FROM orders'", db_host)
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "t"


def test_backup_role_session_rejects_writes(host, backup_pgpass):
    db_host = first_in_group("db")
    result = host.run("PGPASSFILE=/root/.pgpass-verify psql -X -h %s -U trading_backup -d trading_db "
                      "-c \"INSERT INTO system_alerts (type, severity, message) VALUES ('x', 'LOW', 'x')\"",
                      db_host)
    assert result.rc != 0
    assert "read-only transaction" in result.stderr


def test_backup_role_rejects_writes_even_read_write(host, backup_pgpass):
    db_host = first_in_group("db")
    result = host.run("PGPASSFILE=/root/.pgpass-verify psql -X -h %s -U trading_backup -d trading_db "
                      "-c 'SET default_transaction_read_only = off' "
                      "-c \"INSERT INTO system_alerts (type, severity, message) VALUES ('x', 'LOW', 'x')\"",
                      db_host)
    assert result.rc != 0
    assert "permission denied for table system_alerts" in result.stderr
