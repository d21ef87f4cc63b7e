"""Backup verification against a real PostgreSQL 15: good backups, damaged ones, and the safety rules."""

import json
import os
import subprocess
import sys

import pytest

from conftest import (SOURCE_DB, TEMPLATE_DB, VERIFIER, admin_execute, databases, pg_dump, run_module,
                      table_counts, write_manifest)
from tradeops_postgres import ConfigError, NotFoundError
from tradeops_verify import SCRATCH_COMMENT, VerifyOptions, verify_backup


def verify(params, cluster, check_mode=False, **options):
    options.setdefault("pg_bin_dir", cluster.bin)
    return verify_backup(params, VerifyOptions(**options), check_mode=check_mode)


def statuses(result):
    return {check["name"]: check["status"] for check in result["checks"]}


def read_record(path):
    with open(path + ".verify.json", encoding="utf-8") as handle:
        return json.load(handle)


def flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))


def test_good_backup_verifies(backups, superuser_params, verify_cluster):
    path = backups.full()

    result = verify(superuser_params, verify_cluster, path=path, required_tables=["orders", "public.strategies"])

    assert result["status"] == "ok", result["msg"]
    assert all(status == "ok" for status in statuses(result).values()), result["checks"]
    assert set(statuses(result)) == {"file", "manifest", "size", "sha256", "format", "archive_list", "restore",
                                     "tables", "required_tables", "row_counts", "amcheck", "record"}
    assert result["tables"]["public.tick_data"] == {"expected": 20000, "restored": 20000}
    assert result["restore_seconds"] > 0
    assert result["total_seconds"] >= result["restore_seconds"]
    assert result["scratch_db"].startswith("tradeops_verify_")
    assert result["scratch_db"] not in databases(verify_cluster)
    record = read_record(path)
    assert record["status"] == "ok"
    assert record["verified_at"].endswith("Z")
    assert record["restore_seconds"] == result["restore_seconds"]
    assert [check["name"] for check in record["checks"]][:3] == ["file", "manifest", "size"]
    assert oct(os.stat(path + ".verify.json").st_mode & 0o777) == "0o640"


def test_verifier_role_uses_amcheck_template(backups, verifier_params, verify_cluster):
    path = backups.full()

    result = verify(verifier_params, verify_cluster, path=path, scratch_template=TEMPLATE_DB, jobs=2)

    assert result["status"] == "ok", result["msg"]
    amcheck = [check for check in result["checks"] if check["name"] == "amcheck"][0]
    assert "passed on" in amcheck["detail"]
    assert "with 2 jobs" in [c for c in result["checks"] if c["name"] == "restore"][0]["detail"]


def test_verifier_without_template_fails_amcheck(backups, verifier_params, verify_cluster):
    path = backups.full()

    result = verify(verifier_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert statuses(result)["restore"] == "ok"
    assert statuses(result)["amcheck"] == "failed"
    assert "cannot create extension \"amcheck\"" in result["msg"]
    assert "Hint: Create the scratch database from a template that has amcheck" in result["msg"]


@pytest.mark.parametrize("compression, jobs", [("zstd", 1), ("zstd", 2), ("gzip", 1), ("gzip", 2)])
def test_compressed_backup_verifies(backups, superuser_params, verify_cluster, compression, jobs):
    plain = os.path.join(backups.dir, "archive.dump")
    pg_dump(verify_cluster, plain, "--format=custom", "--compress=0")
    suffix = {"zstd": ".zst", "gzip": ".gz"}[compression]
    path = os.path.join(backups.dir, "full_backup_20250101T003000Z.dump" + suffix)
    with open(path, "wb") as out:
        subprocess.run([compression, "-c", plain], stdout=out, check=True)
    write_manifest(path, tables=table_counts(verify_cluster), compression=compression + ":3")

    result = verify(superuser_params, verify_cluster, path=path, jobs=jobs, work_dir=backups.dir)

    assert result["status"] == "ok", result["msg"]
    assert sorted(os.listdir(backups.dir)) == sorted(["archive.dump", os.path.basename(path),
                                                      os.path.basename(path) + ".manifest.json",
                                                      os.path.basename(path) + ".verify.json"])


def test_corrupt_compressed_stream_fails(backups, superuser_params, verify_cluster):
    plain = os.path.join(backups.dir, "archive.dump")
    pg_dump(verify_cluster, plain, "--format=custom", "--compress=0")
    path = os.path.join(backups.dir, "full_backup_20250101T003000Z.dump.zst")
    with open(path, "wb") as out:
        subprocess.run(["zstd", "-c", plain], stdout=out, check=True)
    flip_byte(path, os.path.getsize(path) // 2)
    # A manifest written after the damage, so only the decompressor can notice it.
    write_manifest(path, tables=table_counts(verify_cluster))

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert statuses(result)["sha256"] == "ok"
    assert "zstd exited with code" in result["msg"] or "pg_restore exited with code" in result["msg"]


def test_backup_from_real_worker_verifies(tmp_path, superuser_params, verify_cluster):
    """The backup worker's own manifest and zstd file name are read as it writes them."""
    worker = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "pg_backup", "files", "usr", "local",
                          "lib", "tradeops", "tradeops_backup.py")
    directory = tmp_path / "postgres"
    directory.mkdir()
    config = tmp_path / "backup.conf"
    config.write_text(
        "[backup]\nkinds = full critical\n[database]\nhost = %s\nport = %d\nname = %s\nuser = postgres\n"
        "pg_dump = %s/pg_dump\n[retention]\nkeep_min = 3\n[alert]\ncommand =\n"
        "[kind:full]\ndirectory = %s\nretention_days = 7\ncompression = zstd\ncompression_level = 3\n"
        "[kind:critical]\ndirectory = %s\nretention_days = 7\ncompression = gzip\ncompression_level = 6\n"
        "tables = public.orders public.strategies\n"
        % (verify_cluster.sockdir, verify_cluster.port, SOURCE_DB, verify_cluster.bin, directory, directory))
    worker_run = subprocess.run([sys.executable, worker, "--config", str(config)], capture_output=True, text=True,
                                check=False, env=verify_cluster.env())
    assert worker_run.returncode == 0, worker_run.stderr

    full = verify(superuser_params, verify_cluster, backup_dir=str(directory), kind="full")
    critical = verify(superuser_params, verify_cluster, backup_dir=str(directory), kind="critical")

    assert full["status"] == "ok", full["msg"]
    assert full["backup"].endswith(".dump.zst")
    assert full["tables"]["public.orders"] == {"expected": 2000, "restored": 2000}
    assert critical["status"] == "ok", critical["msg"]
    assert sorted(critical["tables"]) == ["public.orders", "public.strategies"]
    restore = [check for check in critical["checks"] if check["name"] == "restore"][0]
    assert "foreign keys left out" in restore["detail"]


def test_truncated_file_fails_size(backups, superuser_params, verify_cluster):
    path = backups.full()
    size = os.path.getsize(path)
    os.truncate(path, size // 2)

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert "size: the file has %d bytes but its manifest records %d bytes" % (size // 2, size) in result["msg"]
    assert result["msg"].startswith("Backup \"%s\" failed verification" % path)
    assert "Hint: The file was truncated" in result["msg"]
    assert statuses(result)["restore"] == "skipped"
    assert read_record(path)["status"] == "failed"


def test_truncated_file_with_matching_manifest_fails_restore(backups, superuser_params, verify_cluster):
    path = backups.full()
    os.truncate(path, os.path.getsize(path) * 2 // 3)
    write_manifest(path, tables=table_counts(verify_cluster))

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert statuses(result)["size"] == "ok"
    assert "failed: pg_restore exited with code 1" in result["msg"]
    assert statuses(result)["row_counts"] == "skipped"


def test_flipped_byte_fails_sha256(backups, superuser_params, verify_cluster):
    path = backups.full()
    flip_byte(path, os.path.getsize(path) // 2)

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert "sha256: checksum mismatch: the file's sha256 is" in result["msg"]
    assert statuses(result)["size"] == "ok"
    assert "Hint: The file changed after the backup finished" in result["msg"]


def test_zero_byte_file_fails(backups, superuser_params, verify_cluster):
    path = backups.full()
    os.truncate(path, 0)

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert "size: the file is empty (0 bytes); the manifest records" in result["msg"]


def test_plain_sql_dump_is_unsupported(backups, superuser_params, verify_cluster):
    path = os.path.join(backups.dir, "full_backup_20250101T003000Z.dump")
    pg_dump(verify_cluster, path, "--format=plain")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("THIS IS NOT SQL;\nCREATE TABLE after_error (id int);\n")
    write_manifest(path, tables=table_counts(verify_cluster), format="plain")

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert "format: unsupported format: \"%s\" is a plain SQL dump" % os.path.basename(path) in result["msg"]
    assert statuses(result)["restore"] == "skipped"


def test_row_count_mismatch_fails(backups, superuser_params, verify_cluster):
    path = backups.full()
    counts = backups.read_manifest(path)["tables"]
    counts["public.orders"] += 1
    backups.rewrite_manifest(path, tables=counts)

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert ("row_counts: row count mismatch: table \"public.orders\" has 2000 rows, the manifest records 2001"
            in result["msg"])
    assert result["tables"]["public.orders"] == {"expected": 2001, "restored": 2000}
    assert statuses(result)["amcheck"] == "ok"


def test_missing_file_fails(backups, superuser_params, verify_cluster):
    path = os.path.join(backups.dir, "full_backup_20250101T003000Z.dump")

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "failed"
    assert "file: backup file \"%s\" not found" % path in result["msg"]
    assert "Hint: Check the path" in result["msg"]
    assert not os.path.exists(path + ".verify.json")


def test_required_table_missing_fails(backups, superuser_params, verify_cluster):
    path = backups.full()

    result = verify(superuser_params, verify_cluster, path=path, required_tables=["public.positions"])

    assert result["status"] == "failed"
    assert "required tables missing from the restored database: public.positions" in result["msg"]


def test_newest_backup_with_manifest_is_picked(backups, superuser_params, verify_cluster):
    older = backups.full("20250101T003000Z")
    newer = backups.full("20250102T003000Z")
    unfinished = os.path.join(backups.dir, "full_backup_20250103T003000Z.dump")
    pg_dump(verify_cluster, unfinished, "--format=custom")

    result = verify(superuser_params, verify_cluster, backup_dir=backups.dir, kind="full")

    assert result["backup"] == newer
    assert result["status"] == "ok", result["msg"]
    assert not os.path.exists(older + ".verify.json")


def test_no_backup_of_kind_raises(backups, superuser_params, verify_cluster):
    with pytest.raises(NotFoundError, match="No schema backup with a manifest found"):
        verify(superuser_params, verify_cluster, backup_dir=backups.dir, kind="schema")


def test_existing_database_is_never_dropped(backups, superuser_params, verify_cluster):
    path = backups.full()
    admin_execute(verify_cluster, "DROP DATABASE IF EXISTS verify_keep_me")
    admin_execute(verify_cluster, "CREATE DATABASE verify_keep_me")
    admin_execute(verify_cluster, "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)",
                  dbname="verify_keep_me")

    with pytest.raises(ConfigError, match="Scratch database \"verify_keep_me\" already exists"):
        verify(superuser_params, verify_cluster, path=path, scratch_db="verify_keep_me")
    with pytest.raises(ConfigError, match="was not made by a backup verification"):
        verify(superuser_params, verify_cluster, path=path, scratch_db="verify_keep_me", scratch_db_reuse=True)

    assert admin_execute(verify_cluster, "SELECT count(*) FROM precious", dbname="verify_keep_me") == [(1,)]
    admin_execute(verify_cluster, "DROP DATABASE verify_keep_me")


@pytest.mark.parametrize("name", [SOURCE_DB, "postgres", "template1", TEMPLATE_DB])
def test_protected_scratch_names_rejected(backups, superuser_params, verify_cluster, name):
    path = backups.full()

    with pytest.raises(ConfigError, match="Invalid scratch database \"%s\"" % name):
        verify(superuser_params, verify_cluster, path=path, scratch_db=name, scratch_db_reuse=True,
               scratch_template=TEMPLATE_DB)

    assert not os.path.exists(path + ".verify.json")


def test_reuse_replaces_earlier_scratch_database(backups, superuser_params, verify_cluster):
    path = backups.full()
    kept = verify(superuser_params, verify_cluster, path=path, scratch_db="tradeops_verify_kept",
                  keep_scratch_db=True)
    assert kept["status"] == "ok", kept["msg"]
    comment = admin_execute(verify_cluster, "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                                            " WHERE datname = 'tradeops_verify_kept'")
    assert comment == [(SCRATCH_COMMENT,)]

    again = verify(superuser_params, verify_cluster, path=path, scratch_db="tradeops_verify_kept",
                   scratch_db_reuse=True)

    assert again["status"] == "ok", again["msg"]
    assert "tradeops_verify_kept" not in databases(verify_cluster)


def test_dump_made_with_create_restores_into_scratch(backups, superuser_params, verify_cluster):
    path = backups.full("20250101T003000Z", "--create")

    result = verify(superuser_params, verify_cluster, path=path)

    assert result["status"] == "ok", result["msg"]
    listing = [check for check in result["checks"] if check["name"] == "archive_list"][0]
    assert "dumped from database \"%s\"" % SOURCE_DB in listing["detail"]
    assert result["scratch_db"] != SOURCE_DB


def test_check_mode_does_not_restore(backups, superuser_params, verify_cluster):
    path = backups.full()
    before = databases(verify_cluster)

    result = verify(superuser_params, verify_cluster, check_mode=True, path=path, write_record=False,
                    required_tables=["public.orders"])

    assert result["status"] == "ok", result["msg"]
    checks = statuses(result)
    assert checks["sha256"] == "ok"
    assert checks["archive_list"] == "ok"
    assert checks["required_tables"] == "ok"
    assert checks["restore"] == "skipped"
    assert checks["row_counts"] == "skipped"
    assert result["restore_seconds"] is None
    assert result["scratch_db"] is None
    assert databases(verify_cluster) == before
    assert not os.path.exists(path + ".verify.json")


def test_module_verifies_through_ansible(backups, verify_cluster):
    path = backups.full()

    result = run_module({"path": path, "login_user": VERIFIER, "login_host": verify_cluster.host,
                         "login_port": verify_cluster.port, "login_password": "v:er\\ify pass",
                         "scratch_template": TEMPLATE_DB, "pg_bin_dir": verify_cluster.bin})

    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert result["status"] == "ok"
    assert result["record"] == path + ".verify.json"
    assert "v:er" not in json.dumps(result)


def test_module_check_mode_changes_nothing(backups, verify_cluster):
    path = backups.full()

    result = run_module({"path": path, "login_unix_socket": verify_cluster.sockdir,
                         "login_port": verify_cluster.port, "pg_bin_dir": verify_cluster.bin}, check=True)

    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    assert result["record"] is None
    assert not os.path.exists(path + ".verify.json")


def test_module_fails_through_ansible(backups, verify_cluster):
    path = backups.full()
    flip_byte(path, 100)

    result = run_module({"path": path, "login_unix_socket": verify_cluster.sockdir,
                         "login_port": verify_cluster.port, "pg_bin_dir": verify_cluster.bin})

    assert result["failed"] is True, json.dumps(result)
    assert result["changed"] is True, json.dumps(result)
    assert result["status"] == "failed"
    assert "sha256: checksum mismatch" in result["msg"]
    assert "Hint:" in result["msg"]
    assert read_record(path)["status"] == "failed"
