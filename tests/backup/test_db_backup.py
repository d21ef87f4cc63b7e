"""Database backups of the worker against a real PostgreSQL 15: restore, manifest, snapshot, failures."""

import hashlib
import json
import os
import subprocess
import tarfile
import time

import pytest

from conftest import (BACKUP_PASSWORD, BACKUP_USER, DB_NAME, admin_execute, file_mode, looks_like_backup,
                      wait_for)


def source_counts(cluster, tables):
    counts = {}
    for table in tables:
        counts[table] = admin_execute(cluster, "SELECT count(*) FROM ONLY %s" % table, dbname=DB_NAME)[0][0]
    return counts


def restore(cluster, path, target_db, *extra):
    """Restore a custom-format backup into a new database with two parallel jobs."""
    admin_execute(cluster, "DROP DATABASE IF EXISTS %s" % target_db)
    admin_execute(cluster, "CREATE DATABASE %s" % target_db)
    result = subprocess.run([os.path.join(cluster.bin, "pg_restore"), "--jobs=2", "--no-owner",
                             "--dbname=" + target_db, *extra, path],
                            env=cluster.env(), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_full_backup_restores_with_manifest_counts(setup):
    result = setup.run("--kind", "full", "--json")
    assert result.returncode == 0, result.stderr
    [name] = setup.backups("full_backup_")
    assert name.endswith(".dump")
    path = os.path.join(setup.dirs["postgres"], name)
    manifest = setup.manifest(name)

    assert manifest["manifest_version"] == 1
    assert manifest["kind"] == "full"
    assert manifest["database"] == DB_NAME
    assert manifest["format"] == "custom"
    assert manifest["compression"] == "gzip:6"
    assert manifest["file"] == name
    assert manifest["server_version"].startswith("15.")
    assert manifest["server_version_num"] // 10000 == 15
    assert manifest["pg_dump_version"].startswith("15.")
    assert manifest["size_bytes"] == os.path.getsize(path)
    with open(path, "rb") as handle:
        assert manifest["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert manifest["started_at"].endswith("Z")
    assert manifest["finished_at"] >= manifest["started_at"]
    assert manifest["duration_seconds"] >= 0
    assert manifest["tables"]["public.tick_data"] == 100000
    assert json.loads(result.stdout.splitlines()[0])["file"] == path

    restore(setup.cluster, path, "backup_test_restore_full")
    restored = {}
    for table in manifest["tables"]:
        restored[table] = admin_execute(setup.cluster, "SELECT count(*) FROM ONLY %s" % table,
                                        dbname="backup_test_restore_full")[0][0]
    assert restored == manifest["tables"]
    assert source_counts(setup.cluster, manifest["tables"]) == manifest["tables"]


def test_critical_backup_restores_selectively(setup):
    result = setup.run("--kind", "critical")
    assert result.returncode == 0, result.stderr
    [name] = setup.backups("critical_backup_")
    manifest = setup.manifest(name)
    assert sorted(manifest["tables"]) == ["public.order_history", "public.orders", "public.positions",
                                          "public.strategies"]
    listing = subprocess.run([os.path.join(setup.cluster.bin, "pg_restore"), "--list",
                              os.path.join(setup.dirs["postgres"], name)],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public orders" in listing
    assert "tick_data" not in listing

    admin_execute(setup.cluster, "DROP DATABASE IF EXISTS backup_test_restore_one")
    admin_execute(setup.cluster, "CREATE DATABASE backup_test_restore_one")
    admin_execute(setup.cluster, "CREATE TABLE strategies (id serial PRIMARY KEY, name text NOT NULL UNIQUE, "
                  "config jsonb NOT NULL DEFAULT '{}')", dbname="backup_test_restore_one")
    subprocess.run([os.path.join(setup.cluster.bin, "pg_restore"), "--data-only", "--table=strategies",
                    "--dbname=backup_test_restore_one", os.path.join(setup.dirs["postgres"], name)],
                   env=setup.cluster.env(), check=True)
    count = admin_execute(setup.cluster, "SELECT count(*) FROM strategies", dbname="backup_test_restore_one")
    assert count[0][0] == manifest["tables"]["public.strategies"]


def test_schema_backup_has_no_data(setup):
    result = setup.run("--kind", "schema")
    assert result.returncode == 0, result.stderr
    [name] = setup.backups("schema_backup_")
    manifest = setup.manifest(name)
    assert manifest["tables"] == {}
    listing = subprocess.run([os.path.join(setup.cluster.bin, "pg_restore"), "--list",
                              os.path.join(setup.dirs["postgres"], name)],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE public tick_data" in listing
    assert "TABLE DATA" not in listing


@pytest.mark.parametrize("min_match", ["0", "6"])
def test_zstd_backup_restores_through_pipe(setup, min_match):
    setup.set("kind:full", "compression", "zstd")
    setup.set("kind:full", "compression_level", "3")
    setup.set("kind:full", "zstd_min_match", min_match)
    result = setup.run("--kind", "full")
    assert result.returncode == 0, result.stderr
    [name] = setup.backups("full_backup_")
    assert name.endswith(".dump.zst")
    assert setup.manifest(name)["compression"] == "zstd:3"
    unpacked = os.path.join(setup.root, "unpacked.dump")
    with open(unpacked, "wb") as out:
        subprocess.run(["zstd", "-dc", os.path.join(setup.dirs["postgres"], name)], stdout=out, check=True)
    restore(setup.cluster, unpacked, "backup_test_restore_zstd" + min_match)
    count = admin_execute(setup.cluster, "SELECT count(*) FROM tick_data", dbname="backup_test_restore_zstd" + min_match)
    assert count[0][0] == 100000


@pytest.mark.parametrize("compression, expected", [
    ("zstd", "zstd -q -7 -T3 -c"),
    ("pigz", "pigz -7 -p 3 -c"),
])
def test_compressor_runs_with_configured_threads(setup, compression, expected):
    setup.set("kind:full", "compression", compression)
    setup.set("kind:full", "compression_level", "7")
    setup.set("kind:full", "compression_threads", "3")
    result = setup.run("--kind", "full", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert expected in result.stderr


def test_zstd_min_match_passed_to_zstd(setup):
    setup.set("kind:full", "compression", "zstd")
    setup.set("kind:full", "compression_level", "7")
    setup.set("kind:full", "compression_threads", "2")
    setup.set("kind:full", "zstd_min_match", "6")
    result = setup.run("--kind", "full", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "zstd -q -7 -T2 --zstd=minMatch=6 -c" in result.stderr


@pytest.mark.parametrize("value", ["2", "8", "-1"])
def test_invalid_zstd_min_match_rejected(setup, value):
    setup.set("kind:full", "compression", "zstd")
    setup.set("kind:full", "zstd_min_match", value)
    result = setup.run("--kind", "full")
    assert result.returncode == 78
    assert "[kind:full] zstd_min_match is %s; set 3 to 7, or 0 for the level's own" % value in result.stderr
    assert setup.listing() == []


def test_zero_compression_threads_rejected(setup):
    setup.set("kind:full", "compression", "zstd")
    setup.set("kind:full", "compression_threads", "0")
    result = setup.run("--kind", "full")
    assert result.returncode == 78
    assert "[kind:full] compression_threads is 0; it must be at least 1" in result.stderr
    assert setup.listing() == []


def test_counts_come_from_dump_snapshot(setup):
    """Rows committed while pg_dump runs are neither in the dump nor in the manifest's counts."""
    before = source_counts(setup.cluster, ["public.orders"])["public.orders"]
    setup.set("kind:full", "compression", "zstd")
    setup.slow_compressor(3)
    process = setup.start("--kind", "full")
    wait_for(lambda: admin_execute(setup.cluster, "SELECT count(*) FROM pg_stat_activity "
                                   "WHERE application_name = 'tradeops-backup pg_dump'")[0][0])
    admin_execute(setup.cluster, "INSERT INTO orders (strategy_id, instrument_id, quantity) "
                  "SELECT 1, 1, i FROM generate_series(1, 250) i", dbname=DB_NAME)
    try:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        [name] = setup.backups("full_backup_")
        manifest = setup.manifest(name)
        assert manifest["tables"]["public.orders"] == before
        unpacked = os.path.join(setup.root, "snapshot.dump")
        with open(unpacked, "wb") as out:
            subprocess.run(["zstd", "-dc", os.path.join(setup.dirs["postgres"], name)], stdout=out, check=True)
        restore(setup.cluster, unpacked, "backup_test_restore_snapshot")
        restored = admin_execute(setup.cluster, "SELECT count(*) FROM orders", dbname="backup_test_restore_snapshot")
        assert restored[0][0] == before
    finally:
        admin_execute(setup.cluster, "DELETE FROM orders WHERE id > %s", (before,), dbname=DB_NAME)


def test_backup_file_modes_and_owner(setup):
    setup.set("backup", "file_owner", "daemon")
    setup.set("backup", "file_group", "daemon")
    result = setup.run("--kind", "critical")
    assert result.returncode == 0, result.stderr
    [name] = setup.backups("critical_backup_")
    for path in (name, name + ".manifest.json"):
        full = os.path.join(setup.dirs["postgres"], path)
        assert file_mode(full) == 0o640
        assert os.stat(full).st_uid == 1  # daemon
        assert os.stat(full).st_gid == 1


def assert_no_new_backup(setup, earlier_backups):
    names = setup.listing()
    assert [n for n in names if n.startswith(".tmp-")] == []
    assert [n for n in names if looks_like_backup(n)] == earlier_backups


def make_earlier_backup(setup):
    result = setup.run("--kind", "critical")
    assert result.returncode == 0, result.stderr
    return [n for n in setup.listing() if looks_like_backup(n)]


def test_wrong_password_fails_cleanly(setup):
    earlier_backups = make_earlier_backup(setup)
    setup.write_pgpass("not the password")
    setup.use_alert_hook()
    result = setup.run("--kind", "full")
    assert result.returncode == 78
    assert "password authentication failed" in result.stderr
    assert "error: cannot log in to PostgreSQL" in result.stderr
    assert_no_new_backup(setup, earlier_backups)
    with open(setup.alert_log, encoding="utf-8") as handle:
        alert = handle.read()
    assert "subject=tradeops backup failed" in alert
    assert "password authentication failed" in alert
    assert BACKUP_PASSWORD not in alert


def test_unreachable_server_fails_cleanly(setup):
    earlier_backups = make_earlier_backup(setup)
    setup.set("database", "port", "1")
    result = setup.run("--kind", "full")
    assert result.returncode == 69
    assert "PostgreSQL is unreachable" in result.stderr
    assert_no_new_backup(setup, earlier_backups)


def test_pg_dump_version_mismatch_rejected(setup):
    fake = os.path.join(setup.root, "pg_dump")
    with open(fake, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\necho 'pg_dump (PostgreSQL) 16.4'\n")
    os.chmod(fake, 0o755)
    setup.set("database", "pg_dump", fake)
    result = setup.run("--kind", "full")
    assert result.returncode == 78
    assert "pg_dump 16.4" in result.stderr
    assert "does not match the server's major version 15" in result.stderr
    assert_no_new_backup(setup, [])


def test_backend_terminated_mid_dump(setup):
    earlier_backups = make_earlier_backup(setup)
    # A table far larger than the pipe and socket buffers: its COPY cannot
    # finish while the compressor is held back, so the test always finds
    # the dump in the middle of a COPY, however busy the machine is.
    admin_execute(setup.cluster, "CREATE TABLE bulk_rows AS SELECT i, repeat('x', 200) AS pad "
                                 "FROM generate_series(1, 200000) AS i", dbname=DB_NAME)
    setup.set("kind:full", "compression", "zstd")
    release = setup.held_compressor()
    setup.use_alert_hook()
    setup.set("database", "host", setup.cluster.sockdir)
    process = setup.start("--kind", "full")
    try:
        def copying_backend():
            rows = admin_execute(setup.cluster, "SELECT pid FROM pg_stat_activity WHERE application_name = "
                                 "'tradeops-backup pg_dump' AND state = 'active' "
                                 "AND query LIKE 'COPY %%'")
            return rows[0][0] if rows else None

        pid = wait_for(copying_backend)
        admin_execute(setup.cluster, "SELECT pg_terminate_backend(%s)", (pid,))
        open(release, "w", encoding="utf-8").close()
        _, stderr = process.communicate(timeout=120)
    finally:
        open(release, "w", encoding="utf-8").close()
        if process.poll() is None:
            process.kill()
            process.wait()
        admin_execute(setup.cluster, "DROP TABLE IF EXISTS bulk_rows", dbname=DB_NAME)
    assert process.returncode == 1
    assert "error: full backup failed: pg_dump exited with code 1" in stderr
    # The message carries pg_dump's own first error line: which one depends
    # on whether the server's notice arrived before the connection broke.
    assert "pg_dump exited with code 1: pg_dump: error: " in stderr
    assert_no_new_backup(setup, earlier_backups)
    with open(setup.alert_log, encoding="utf-8") as handle:
        assert "full backup on" in handle.read()


def test_full_disk_exits_73(setup):
    small = setup.dirs["postgres"]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs", small], check=True)
    try:
        earlier_backups = make_earlier_backup(setup)
        setup.set("kind:full", "compression", "none")
        result = setup.run("--kind", "full")
        assert result.returncode == 73
        assert "No space left on device" in result.stderr
        assert "is full" in result.stderr
        assert_no_new_backup(setup, earlier_backups)
    finally:
        subprocess.run(["umount", small], check=True)


def test_failing_alert_hook_keeps_exit_code(setup):
    setup.use_alert_hook(exit_code=3)
    setup.set("database", "port", "1")
    result = setup.run("--kind", "full")
    assert result.returncode == 69
    assert "alert hook" in result.stderr
    assert "exited with code 3" in result.stderr


def test_missing_alert_hook_is_logged(setup):
    setup.set("alert", "command", os.path.join(setup.root, "no-such-hook"))
    setup.set("database", "port", "1")
    result = setup.run("--kind", "full")
    assert result.returncode == 69
    assert "no alert hook installed" in result.stderr


def test_good_backup_sends_no_alert(setup):
    setup.use_alert_hook(exit_code=1)
    result = setup.run("--kind", "schema")
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(setup.alert_log)


def test_dry_run_writes_nothing(setup):
    result = setup.run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "[DRY-RUN] would write" in result.stderr
    assert setup.listing() == []


def test_second_run_exits_75(setup):
    setup.set("kind:full", "compression", "zstd")
    setup.slow_compressor(3)
    first = setup.start("--kind", "full")
    wait_for(lambda: os.path.exists(os.path.join(setup.dirs["postgres"], ".tradeops-backup.lock"))
             and any(n.startswith(".tmp-") for n in setup.listing()))
    second = setup.run("--kind", "full")
    assert second.returncode == 75
    assert "another backup run holds" in second.stderr
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    names = setup.listing()
    assert [n for n in names if n.startswith(".tmp-")] == []
    assert len([n for n in names if n.startswith("full_backup_") and n.endswith(".dump.zst")]) == 1


def test_second_run_waits_when_configured(setup):
    setup.set("backup", "lock_wait", "60")
    setup.set("kind:full", "compression", "zstd")
    setup.slow_compressor(2)
    first = setup.start("--kind", "full")
    wait_for(lambda: any(n.startswith(".tmp-") for n in setup.listing()))
    time.sleep(1.1)  # the second backup gets a later time stamp in its name
    second = setup.run("--kind", "schema")
    assert second.returncode == 0, second.stderr
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert len(setup.backups("full_backup_")) == 1
    assert len(setup.backups("schema_backup_")) == 1


def test_password_not_in_process_list_or_log(setup):
    setup.set("kind:full", "compression", "zstd")
    setup.slow_compressor(2)
    process = setup.start("--kind", "full")
    seen = []
    while process.poll() is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if "pg_dump" in cmdline or "tradeops_backup" in cmdline:
                seen.append(cmdline)
            assert BACKUP_PASSWORD not in cmdline
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert any("--snapshot=" in line for line in seen)
    assert BACKUP_PASSWORD not in stderr
    assert BACKUP_PASSWORD not in stdout
    assert BACKUP_USER in open(setup.passfile, encoding="utf-8").read()


def test_strategies_backup(setup):
    result = setup.run("--kind", "strategies")
    assert result.returncode == 0, result.stderr
    [name] = setup.backups("strategies_", "strategies")
    assert name.endswith(".dump.zst")
    manifest = setup.manifest(name, "strategies")
    assert manifest["tables"] == {"public.strategies": 5, "public.strategy_performance": 500}


def test_config_and_logs_archives(setup):
    app = setup.app_root
    os.makedirs(os.path.join(app, "config"))
    os.makedirs(os.path.join(app, "logs"))
    with open(os.path.join(app, ".env"), "w", encoding="utf-8") as handle:
        handle.write("SECRET=1\n")
    with open(os.path.join(app, "config", "app.yml"), "w", encoding="utf-8") as handle:
        handle.write("a: 1\n")
    with open(os.path.join(app, "logs", "app.log"), "w", encoding="utf-8") as handle:
        handle.write("started\n")
    result = setup.run("--kind", "config", "--kind", "logs")
    assert result.returncode == 0, result.stderr
    assert "docker-compose.yml does not exist; skipping it" in result.stderr
    [config_name] = setup.backups("config_", "config")
    assert config_name.endswith(".tar.zst")
    manifest = setup.manifest(config_name, "config")
    assert manifest["format"] == "tar"
    assert manifest["compression"] == "zstd:3"
    unpacked = subprocess.run(["zstd", "-dc", os.path.join(setup.dirs["config"], config_name)],
                              capture_output=True, check=True).stdout
    tar_path = os.path.join(setup.root, "config.tar")
    with open(tar_path, "wb") as handle:
        handle.write(unpacked)
    with tarfile.open(tar_path) as archive:
        members = archive.getnames()
    assert app.lstrip("/") + "/.env" in members
    assert app.lstrip("/") + "/config/app.yml" in members
    [logs_name] = setup.backups("logs_", "logs")
    assert setup.manifest(logs_name, "logs")["paths"] == [os.path.join(app, "logs")]


def test_archive_without_paths_fails(setup):
    result = setup.run("--kind", "config")
    assert result.returncode == 1
    assert "none of the paths exist" in result.stderr
    assert setup.listing("config") == [".tradeops-backup.lock"]


@pytest.mark.parametrize("args, code", [(["--kind", "nope"], 64), (["--bogus"], 64), (["--help"], 0)])
def test_command_line_usage(setup, args, code):
    result = setup.run(*args)
    assert result.returncode == code


def test_missing_config_exits_78(setup):
    os.unlink(setup.config_path)
    result = setup.run()
    assert result.returncode == 78
    assert "cannot read config file" in result.stderr
