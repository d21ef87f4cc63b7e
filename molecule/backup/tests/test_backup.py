"""The installed backup jobs: files and modes, a backup by each job, its manifest, a restore."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
from lab_hosts import hosts_in_group  # noqa: E402 (the path is set just above)

testinfra_hosts = hosts_in_group("all")


@pytest.fixture(scope="session")
def backup_password():
    """Return the lab's generated password of trading_backup."""
    secrets_dir = os.environ.get("TRADEOPS_LAB_SECRETS") or os.path.join(
        os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "secrets")
    with open(os.path.join(secrets_dir, "trading_backup"), encoding="utf-8") as handle:
        return handle.read().rstrip("\n")


def is_db(host):
    return "db" in host.backend.get_hostname()


def run_ok(host, command):
    result = host.run(command)
    assert result.rc == 0, "%s: rc=%d\n%s\n%s" % (command, result.rc, result.stdout, result.stderr)
    return result


@pytest.mark.parametrize("path, user, group, mode", [
    ("/opt/backups", "root", "tradeops", 0o750),
    ("/etc/tradeops", "root", "tradeops", 0o750),
    ("/usr/local/lib/tradeops/tradeops_backup.py", "root", "root", 0o755),
])
def test_common_paths(host, path, user, group, mode):
    target = host.file(path)
    assert target.exists
    assert target.user == user
    assert target.group == group
    assert target.mode == mode


def test_db_job_files(host):
    if not is_db(host):
        pytest.skip("db host only")
    script = host.file("/usr/local/sbin/tradeops-db-backup")
    assert script.mode == 0o755
    assert script.user == "root"
    conf = host.file("/etc/tradeops/db-backup.conf")
    assert conf.user == "root"
    assert conf.group == "tradeops"
    assert conf.mode == 0o640
    assert conf.contains("^kinds = full schema critical$")
    assert conf.contains("^zstd_min_match = 6$")
    passfile = host.file("/var/lib/tradeops/backup.pgpass")
    assert passfile.user == "tradeops"
    assert passfile.mode == 0o600
    folder = host.file("/opt/backups/postgres")
    assert folder.user == "tradeops"
    assert folder.mode == 0o750


def test_app_job_files(host):
    if is_db(host):
        pytest.skip("app host only")
    assert host.file("/usr/local/sbin/tradeops-app-backup").mode == 0o755
    conf = host.file("/etc/tradeops/app-backup.conf")
    assert conf.contains("^host = tradeops-backup-db$")
    passfile = host.file("/etc/tradeops/app-backup.pgpass")
    assert passfile.user == "root"
    assert passfile.mode == 0o600
    for kind in ("config", "logs", "strategies"):
        folder = host.file("/opt/backups/" + kind)
        assert folder.user == "tradeops"
        assert folder.mode == 0o750


def test_db_backup_as_tradeops_restores(host):
    if not is_db(host):
        pytest.skip("db host only")
    result = run_ok(host, "runuser -u tradeops -- /usr/local/sbin/tradeops-db-backup --json")
    written = [json.loads(line) for line in result.stdout.splitlines()]
    assert [item["kind"] for item in written] == ["full", "schema", "critical"]
    full = written[0]
    backup = host.file(full["file"])
    assert backup.user == "tradeops"
    assert backup.group == "tradeops"
    assert backup.mode == 0o640
    manifest = json.loads(host.file(full["manifest"]).content_string)
    assert manifest["database"] == "trading_db"
    assert manifest["compression"] == "zstd:7"
    assert full["file"].endswith(".dump.zst")
    assert manifest["server_version"].startswith("15.")
    assert manifest["size_bytes"] == backup.size
    assert manifest["sha256"] == host.check_output("sha256sum %s | cut -d' ' -f1" % full["file"])
    assert manifest["tables"]["public.tick_data"] >= 5000

    # postgres may not read the backup folder, so it restores from a
    # decompressed copy, which pg_restore --jobs needs.
    run_ok(host, "umask 077 && zstd -q -d -c %s > /tmp/restore_check.dump && chown postgres /tmp/restore_check.dump"
           % full["file"])
    run_ok(host, "runuser -u postgres -- dropdb --if-exists backup_restore_check")
    run_ok(host, "runuser -u postgres -- createdb backup_restore_check")
    run_ok(host, "runuser -u postgres -- pg_restore --jobs=2 --no-owner --dbname=backup_restore_check "
           "/tmp/restore_check.dump")
    for table, count in manifest["tables"].items():
        restored = host.check_output("runuser -u postgres -- psql -tAc 'SELECT count(*) FROM ONLY %s' "
                                     "backup_restore_check" % table)
        assert int(restored) == count, table

    log = host.file("/var/log/tradeops/db-backup.log").content_string
    assert "db-backup completed" in log


def test_db_backup_status_file(host):
    if not is_db(host):
        pytest.skip("db host only")
    run_ok(host, "runuser -u tradeops -- /usr/local/sbin/tradeops-db-backup --kind schema")
    status = host.file("/var/lib/tradeops/status/db-backup.status").content_string
    assert "exit_code=0" in status


def test_app_backup_as_root(host):
    if is_db(host):
        pytest.skip("app host only")
    result = run_ok(host, "/usr/local/sbin/tradeops-app-backup --json")
    written = {json.loads(line)["kind"]: json.loads(line) for line in result.stdout.splitlines()}
    assert sorted(written) == ["config", "logs", "strategies"]
    config = written["config"]
    assert config["file"].endswith(".tar.zst")
    assert host.file(config["file"]).user == "tradeops"
    members = host.check_output("zstd -dc %s | tar -t" % config["file"])
    assert "opt/trading-app/.env" in members.splitlines()
    strategies = json.loads(host.file(written["strategies"]["manifest"]).content_string)
    assert strategies["tables"]["public.strategies"] >= 0
    assert strategies["db_host"] == "tradeops-backup-db"


def test_password_only_in_pgpass(host, backup_password):
    passfile = "/var/lib/tradeops/backup.pgpass" if is_db(host) else "/etc/tradeops/app-backup.pgpass"
    assert host.file(passfile).content_string.splitlines()[-1].endswith(":" + backup_password
                                                                       .replace("\\", "\\\\")
                                                                       .replace(":", "\\:"))
    for path in ("/etc/tradeops/db-backup.conf", "/etc/tradeops/app-backup.conf",
                 "/var/log/tradeops/db-backup.log", "/var/log/tradeops/app-backup.log"):
        if host.file(path).exists:
            assert backup_password not in host.file(path).content_string, path
