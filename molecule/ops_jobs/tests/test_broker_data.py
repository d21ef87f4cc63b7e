"""The broker data job: success and failure of the application's scripts."""

from conftest import psql_db, wait_for_mails
from lab_hosts import hosts_in_group

testinfra_hosts = hosts_in_group("app")

FAIL_FLAG = "/opt/trading-app/lab-fail/refreshInstruments.ts"


def test_broker_data_succeeds(host):
    host.run("rm -f %s", FAIL_FLAG)
    host.run("truncate -s 0 /var/log/tradeops/broker-data.log")
    result = host.run("/usr/local/sbin/tradeops-broker-data")
    assert result.rc == 0, result.stderr
    log = host.file("/var/log/tradeops/broker-data.log").content_string
    assert "running scripts/updateTokens.ts as trading" in log
    assert "scripts/updateTokens.ts: updated access tokens of 2 brokers" in log
    assert "scripts/refreshInstruments.ts: refreshed 20 instruments" in log
    assert "broker-data completed" in log


def test_broker_data_failure_alerts(host):
    last_id = int(psql_db("SELECT coalesce(max(id), 0) FROM system_alerts")[0][0])
    mails_before = len(wait_for_mails(host, "broker_data", 0, timeout=0))
    host.run("touch %s", FAIL_FLAG)
    try:
        result = host.run("/usr/local/sbin/tradeops-broker-data")
    finally:
        host.run("rm -f %s", FAIL_FLAG)
    assert result.rc == 1
    log = host.file("/var/log/tradeops/broker-data.log").content_string
    assert "scripts/refreshInstruments.ts exited with code 1" in log
    assert "broker API returned HTTP 503" in log
    assert "broker-data failed (code 1)" in log
    rows = psql_db("SELECT severity, replace(message, E'\\n', ' ') FROM system_alerts "
                   "WHERE type = 'broker_data' AND id > %d" % last_id)
    assert len(rows) == 1
    assert rows[0][0] == "critical"
    assert "refreshInstruments.ts exited with code 1" in rows[0][1]
    assert len(wait_for_mails(host, "broker_data", mails_before + 1)) == mails_before + 1


def test_broker_data_dry_run_runs_nothing(host):
    host.run("touch %s", FAIL_FLAG)
    try:
        result = host.run("/usr/local/sbin/tradeops-broker-data --dry-run")
    finally:
        host.run("rm -f %s", FAIL_FLAG)
    assert result.rc == 0, result.stderr
    assert "would run in /opt/trading-app" in host.file("/var/log/tradeops/broker-data.log").content_string
