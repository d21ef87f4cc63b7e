"""The health check: each fault alerts once, is not repeated, and its recovery is announced once."""

import datetime
import json

import pytest
from conftest import wait_for_mails, write_file
from lab_hosts import first_in_group, hosts_in_group

testinfra_hosts = hosts_in_group("app")

HEALTH = "/usr/local/sbin/tradeops-health-check"


def fresh_backup(host, container):
    """Write a small backup with its manifest, finished now, so that the backup checks pass."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    host.run("printf 'backup' > /opt/backups/config/config_test.tar.zst")
    write_file(container, "/opt/backups/config/config_test.tar.zst.manifest.json",
               json.dumps({"kind": "config", "file": "config_test.tar.zst", "size_bytes": 6,
                           "finished_at": now, "duration_seconds": 0.1}))


def settings_with(host, path, **changes):
    """Write a copy of the health check settings with some values changed."""
    lines = host.file("/etc/tradeops/health_check.json").content_string.splitlines()
    settings = json.loads("\n".join(line for line in lines if not line.startswith("#")))
    settings.update(changes)
    write_file(first_in_group("app"), path, json.dumps(settings))
    return path


def problems_and_recoveries(host, key, skip=0):
    found = wait_for_mails(host, key, 0, timeout=0)[skip:]
    problems = [mail for mail in found if "PROBLEM on" in mail["subject"]]
    recoveries = [mail for mail in found if "RECOVERED on" in mail["subject"]]
    return problems, recoveries


def run_cycle(host, key, break_it, fix_it, config=None, fixed_config=None):
    """Break, check twice, fix, check twice; return the exit codes and the new mails with key."""
    before = wait_for_mails(host, key, 0, timeout=0)
    args = " --config %s" % config if config else ""
    fixed_args = " --config %s" % fixed_config if fixed_config else args
    codes = []
    break_it()
    try:
        codes.append(host.run(HEALTH + args).rc)
        wait_for_mails(host, key, len(before) + 1)
        codes.append(host.run(HEALTH + args).rc)
    finally:
        fix_it()
    codes.append(host.run(HEALTH + fixed_args).rc)
    wait_for_mails(host, key, len(before) + 2)
    codes.append(host.run(HEALTH + fixed_args).rc)
    return codes, problems_and_recoveries(host, key, skip=len(before))


@pytest.fixture(scope="module", autouse=True)
def healthy_start(host):
    fresh_backup(host, first_in_group("app"))
    # Start from a clean alert state: open problems of earlier runs are
    # dropped without recovery mails.
    host.run("rm -f /var/lib/tradeops/health/*.problem")
    result = host.run(HEALTH)
    assert result.rc == 0, host.file("/var/log/tradeops/health-check.log").content_string[-2000:]


def test_health_check_healthy_host(host):
    assert host.run(HEALTH).rc == 0
    assert "0 problems" in host.file("/var/log/tradeops/health-check.log").content_string.splitlines()[-2]


def test_stopped_application_alerts_once(host):
    codes, (problems, recoveries) = run_cycle(
        host, "health:app-process",
        lambda: host.run("/etc/init.d/trading-app stop"),
        lambda: host.run("/etc/init.d/trading-app start && sleep 1"))
    assert codes == [1, 1, 0, 0]
    assert len(problems) == 1
    assert "process trading-app is not running" in problems[0]["subject"]
    assert len(recoveries) == 1


def test_stopped_database_alerts_once(host):
    db = host.get_host("podman://" + first_in_group("db"))
    codes, (problems, recoveries) = run_cycle(
        host, "health:database",
        lambda: db.run("service postgresql stop"),
        lambda: db.run("service postgresql start && for i in $(seq 30); do pg_isready -q && break; sleep 1; done"))
    assert codes == [1, 1, 0, 0]
    assert len(problems) == 1
    assert "does not answer" in problems[0]["subject"] or "rejects" in problems[0]["subject"]
    assert len(recoveries) == 1


def test_full_disk_alerts_once(host):
    # The threshold is lowered below the file system's real use, which
    # stands for a full disk without filling the machine.
    full = settings_with(host, "/tmp/health-disk.json", disk_max_percent=1)
    codes, (problems, recoveries) = run_cycle(
        host, "health:disk:/opt/backups", lambda: None, lambda: None, config=full,
        fixed_config="/etc/tradeops/health_check.json")
    assert codes == [1, 1, 0, 0]
    assert len(problems) == 1
    assert "file system of /opt/backups is" in problems[0]["subject"]
    assert len(recoveries) == 1


def test_oversized_logs_alert_once(host):
    small = settings_with(host, "/tmp/health-logs.json", log_dir_max_mb=2)
    codes, (problems, recoveries) = run_cycle(
        host, "health:app-logs",
        lambda: host.run("dd if=/dev/urandom of=/opt/trading-app/logs/bulk.log bs=1M count=3 status=none"),
        lambda: host.run("rm -f /opt/trading-app/logs/bulk.log"), config=small)
    assert codes == [1, 1, 0, 0]
    assert len(problems) == 1
    assert "log folder /opt/trading-app/logs uses" in problems[0]["subject"]
    assert len(recoveries) == 1


def test_old_backup_alerts(host):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=30)
    write_file(first_in_group("app"), "/opt/backups/config/config_test.tar.zst.manifest.json",
               json.dumps({"kind": "config", "file": "config_test.tar.zst", "size_bytes": 6,
                           "finished_at": old.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    before = len(wait_for_mails(host, "health:backup-age", 0, timeout=0))
    try:
        assert host.run(HEALTH).rc == 1
        problems = wait_for_mails(host, "health:backup-age", before + 1)[before:]
        assert len(problems) == 1
        assert "is 30.0 h old (limit 26 h)" in problems[0]["subject"]
    finally:
        fresh_backup(host, first_in_group("app"))
    assert host.run(HEALTH).rc == 0


def test_health_check_rejects_unknown_option(host):
    assert host.run(HEALTH + " --bogus").rc == 64
