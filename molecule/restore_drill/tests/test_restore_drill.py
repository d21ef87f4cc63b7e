"""The restore drill's report and its effects, and the scheduled verification job, on the drill db host."""

import glob
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
from lab_hosts import first_in_group, hosts_in_group  # noqa: E402

testinfra_hosts = hosts_in_group("db")
REPORT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "reports")
BACKUP_DIR = "/opt/backups/postgres"


def psql(host, query, database="trading_db"):
    command = host.run("runuser -u postgres -- psql -XAtq -d %s -c \"%s\"" % (database, query))
    assert command.rc == 0, command.stderr
    return command.stdout.strip()


@pytest.fixture(scope="module")
def report():
    """Return the newest drill report of this scenario's db host."""
    pattern = os.path.join(REPORT_DIR, "restore-drill-%s-*.json" % first_in_group("db"))
    paths = sorted(glob.glob(pattern))
    assert paths, "no report matches %s" % pattern
    with open(paths[-1], encoding="utf-8") as handle:
        return json.load(handle)


def newest_full_backup(host):
    return host.check_output("ls -1 %s/full_backup_*.dump.zst | sort | tail -n 1" % BACKUP_DIR)


def test_report_says_ok(report):
    assert report["status"] == "ok"
    assert [run["kind"] for run in report["backups"]] == ["full", "schema", "critical"]
    for run in report["backups"]:
        assert run["status"] == "ok", run["msg"]
        assert {check["name"]: check["status"] for check in run["checks"]}["restore"] == "ok"
    assert report["backups"][0]["restore_seconds"] > 0


def test_drill_checks_heapallindexed(report):
    checks = {check["name"]: check for check in report["backups"][0]["checks"]}
    assert checks["amcheck"]["status"] == "ok"
    assert "with heapallindexed" in checks["amcheck"]["detail"]


def test_markdown_report_exists(report):
    path = os.path.join(REPORT_DIR, "restore-drill-%s-%s.md" % (report["host"], report["started_at"]))
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert "Result: **ok**" in text
    assert "| row_counts | ok |" in text


def test_scratch_databases_gone(host):
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname LIKE 'tradeops_verify_2%'", "postgres") == "0"


def test_production_rows_unchanged(host, report):
    full = report["backups"][0]
    for table, counts in full["tables"].items():
        assert int(psql(host, "SELECT count(*) FROM ONLY %s" % table)) == counts["expected"], table


def test_verify_role_is_least_privilege(host):
    flags = psql(host, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'trading_verify'",
                 "postgres")
    assert flags == "f|t|f"
    memberships = psql(host, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
                             " WHERE r.rolname = 'trading_verify'", "postgres")
    assert memberships == "0"


def test_verify_pgpass_private(host):
    passfile = host.file("/var/lib/tradeops/verify.pgpass")
    assert passfile.user == "tradeops"
    assert passfile.mode == 0o600
    assert ":*:trading_verify:" in passfile.content_string
    config = host.file("/etc/tradeops/verify-backups.json")
    assert config.mode == 0o640
    assert "verify.pgpass" in config.content_string


def test_scheduled_job_verifies(host):
    host.run("rm -f %s/*.verify.json" % BACKUP_DIR)

    job = host.run("runuser -u tradeops -- /usr/local/sbin/tradeops-verify-backups")

    assert job.rc == 0, host.file("/var/log/tradeops/verify-backups.log").content_string
    record = json.loads(host.file(newest_full_backup(host) + ".verify.json").content_string)
    assert record["status"] == "ok"
    # The daily job leaves heapallindexed to the drill.
    amcheck = {check["name"]: check for check in record["checks"]}["amcheck"]
    assert amcheck["status"] == "ok"
    assert "heapallindexed" not in amcheck["detail"]
    assert "exit_code=0" in host.file("/var/lib/tradeops/status/verify-backups.status").content_string


def test_cron_runs_verify_job(host):
    cron = host.file("/etc/cron.d/trading_app_tasks").content_string
    assert "30 1 * * * tradeops /usr/local/sbin/tradeops-verify-backups" in cron
