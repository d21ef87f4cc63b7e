"""Verification benchmark: tradeops_verify.verify_backup against a bare pg_restore of the same backup."""

import datetime
import hashlib
import json
import logging
import os
import sys
import time

from measure import median_of, ratio, run_timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The verify logic imports its neighbours as plain modules outside Ansible,
# as tests/verify and the verify job do.
sys.path.insert(0, os.path.join(REPO, "module_utils"))

from tradeops_verify import VerifyOptions, verify_backup  # noqa: E402

log = logging.getLogger("bench.verification")

BACKUP_NAME = "full_backup_20250101T003000Z.dump"
SCRATCH = "bench_bare_restore"

BARE_COMMAND = ("{pg}/pg_restore --exit-on-error --no-owner --no-privileges --jobs=2 "
                "--dbname={scratch} {path}")


def table_counts(cluster, database):
    tables = cluster.execute("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = 'public'"
                             " ORDER BY 1", dbname=database)
    return {name: cluster.value("SELECT count(*) FROM ONLY %s" % name, dbname=database) for (name,) in tables}


def make_backup(cluster, database, work_dir):
    """Write a default-format backup and a manifest with the fields the backup worker writes."""
    path = os.path.join(work_dir, BACKUP_NAME)
    started = datetime.datetime.now(datetime.timezone.utc)
    run_timed("%s/pg_dump -Fc -Z6 -f %s %s" % (cluster.pg_bin, path, database), cluster.env())
    finished = datetime.datetime.now(datetime.timezone.utc)
    with open(path, "rb") as handle:
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    server_version = cluster.value("SHOW server_version")
    manifest = {
        "manifest_version": 1, "kind": "full", "database": database, "host": "bench", "db_host": "127.0.0.1",
        "server_version": server_version, "server_version_num": int(cluster.value("SHOW server_version_num")),
        "pg_dump_version": server_version, "format": "custom", "compression": "gzip:6",
        "file": BACKUP_NAME, "size_bytes": os.path.getsize(path), "sha256": digest.hexdigest(),
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "finished_at": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_seconds": round((finished - started).total_seconds(), 3), "snapshot": "bench",
        "tables": table_counts(cluster, database),
    }
    with open(path + ".manifest.json", "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    return path


def measure_tradeops(cluster, path, settings):
    options = VerifyOptions(path=path, required_tables=settings["required_tables"], jobs=settings["jobs"],
                            amcheck_heapallindexed=settings["heapallindexed"], pg_bin_dir=cluster.pg_bin)
    started = time.perf_counter()
    result = verify_backup(cluster.params(), options)
    wall = time.perf_counter() - started
    if result["status"] != "ok":
        raise RuntimeError("tradeops verification of %s failed: %s" % (path, result["msg"]))
    checks = {check["name"]: check["status"] for check in result["checks"]}
    return {"wall_seconds": round(wall, 3), "restore_seconds": result["restore_seconds"], "checks": checks}


def measure_bare(cluster, path):
    """Time CREATE DATABASE, the pg_restore that verify_backup runs, and DROP DATABASE."""
    started = time.perf_counter()
    cluster.create_database(SCRATCH)
    try:
        restore = run_timed(BARE_COMMAND.format(pg=cluster.pg_bin, scratch=SCRATCH, path=path), cluster.env())
    finally:
        cluster.drop_database(SCRATCH)
    wall = time.perf_counter() - started
    return {"wall_seconds": round(wall, 3), "restore_seconds": restore["wall_seconds"]}


def run(cluster, database, runs, settings, log_sample):
    """Measure both methods runs times on one default-format backup.

    settings are the full kind's required tables, the restore jobs and
    heapallindexed from the pg_backup_verify role defaults.
    """
    path = make_backup(cluster, database, cluster.work_dir("verify"))
    tradeops_samples = []
    bare_samples = []
    for round_number in range(runs):
        tradeops_samples.append(measure_tradeops(cluster, path, settings))
        log_sample("verify tradeops, run %d: %s" % (round_number + 1, tradeops_samples[-1]))
        bare_samples.append(measure_bare(cluster, path))
        log_sample("verify bare pg_restore, run %d: %s" % (round_number + 1, bare_samples[-1]))
    tradeops_median = median_of(tradeops_samples, "wall_seconds")
    bare_median = median_of(bare_samples, "wall_seconds")
    return {
        "backup_bytes": os.path.getsize(path),
        "tradeops": {
            "samples": tradeops_samples, "median_wall_seconds": tradeops_median,
            "median_restore_seconds": median_of(tradeops_samples, "restore_seconds"),
            "command": "tradeops_verify.verify_backup(superuser over the socket, path=$WORK/%s, jobs=%d, "
                       "amcheck_heapallindexed=%s, required_tables=%s)"
                       % (BACKUP_NAME, settings["jobs"], settings["heapallindexed"],
                          ", ".join(settings["required_tables"])),
        },
        "bare": {
            "samples": bare_samples, "median_wall_seconds": bare_median,
            "median_restore_seconds": median_of(bare_samples, "restore_seconds"),
            "command": "CREATE DATABASE %s TEMPLATE template0; %s; DROP DATABASE %s"
                       % (SCRATCH, BARE_COMMAND.format(pg="$PG_BIN", scratch=SCRATCH, path="$WORK/" + BACKUP_NAME),
                          SCRATCH),
        },
        "tradeops_over_bare": ratio(tradeops_median, bare_median),
    }
