"""Verification benchmark: tradeops_verify.verify_backup against a bare pg_restore of the same backup."""

import logging
import os
import sys
import time

import worker
from backup import decompress_first
from measure import median_of, ratio, run_timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The verify logic imports its neighbours as plain modules outside Ansible,
# as tests/verify and the verify job do.
sys.path.insert(0, os.path.join(REPO, "module_utils"))

from tradeops_verify import VerifyOptions, verify_backup  # noqa: E402

log = logging.getLogger("bench.verification")

SCRATCH = "bench_bare_restore"

# The bare restore of each compression, as docs/restore.md restores by
# hand: a backup compressed outside the archive is decompressed to a file,
# which pg_restore --jobs needs; measure_bare removes that file.
RESTORE = ("{pg}/pg_restore --exit-on-error --no-owner --no-privileges --jobs={jobs} "
           "--dbname={scratch} {path}")
BARE_COMMANDS = {
    "zstd": decompress_first("zstd", RESTORE, "{path}"),
    "pigz": decompress_first("pigz", RESTORE, "{path}"),
    "gzip": RESTORE,
    "none": RESTORE,
}


def make_backup(cluster, database, work_dir, backup_defaults):
    """Write a full backup and its manifest with the backup worker and the pg_backup role's defaults."""
    settings_path = worker.write_settings(cluster, database, work_dir, backup_defaults)
    _, path = worker.run_backup(cluster, settings_path)
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


def measure_bare(cluster, path, command):
    """Time CREATE DATABASE, a bare restore like the one verify_backup runs, and DROP DATABASE."""
    started = time.perf_counter()
    cluster.create_database(SCRATCH)
    try:
        restore = run_timed(command.format(pg=cluster.pg_bin, scratch=SCRATCH, path=path), cluster.env())
    finally:
        cluster.drop_database(SCRATCH)
        if os.path.exists(path + ".restore"):
            os.unlink(path + ".restore")
    wall = time.perf_counter() - started
    return {"wall_seconds": round(wall, 3), "restore_seconds": restore["wall_seconds"]}


def summarize(samples, command):
    return {"samples": samples, "median_wall_seconds": median_of(samples, "wall_seconds"),
            "median_restore_seconds": median_of(samples, "restore_seconds"), "command": command}


def tradeops_command(path, settings, heapallindexed):
    return ("tradeops_verify.verify_backup(superuser over the socket, path=$WORK/%s, jobs=%d, "
            "amcheck_heapallindexed=%s, required_tables=%s)"
            % (os.path.basename(path), settings["jobs"], heapallindexed, ", ".join(settings["required_tables"])))


def run(cluster, database, runs, settings, backup_defaults, log_sample):
    """Measure the methods runs times on one backup that the worker wrote with the role's defaults.

    settings are the full kind's required tables, the restore jobs and
    heapallindexed from the pg_backup_verify role defaults. When the
    defaults leave heapallindexed out, the restore drill's verification
    with it is measured too.
    """
    path = make_backup(cluster, database, cluster.work_dir("verify"), backup_defaults)
    bare_command = BARE_COMMANDS[backup_defaults["compression"]].replace("{jobs}", str(settings["jobs"]))
    thorough_settings = dict(settings, heapallindexed=True) if not settings["heapallindexed"] else None
    samples = {"tradeops": [], "thorough": [], "bare": []}
    for round_number in range(runs):
        samples["tradeops"].append(measure_tradeops(cluster, path, settings))
        log_sample("verify tradeops, run %d: %s" % (round_number + 1, samples["tradeops"][-1]))
        if thorough_settings:
            samples["thorough"].append(measure_tradeops(cluster, path, thorough_settings))
            log_sample("verify tradeops with heapallindexed, run %d: %s" % (round_number + 1,
                                                                             samples["thorough"][-1]))
        samples["bare"].append(measure_bare(cluster, path, bare_command))
        log_sample("verify bare pg_restore, run %d: %s" % (round_number + 1, samples["bare"][-1]))
    result = {
        "backup_bytes": os.path.getsize(path),
        "tradeops": summarize(samples["tradeops"], tradeops_command(path, settings, settings["heapallindexed"])),
        "bare": summarize(samples["bare"], "CREATE DATABASE %s TEMPLATE template0; %s; DROP DATABASE %s"
                          % (SCRATCH, bare_command.format(pg="$PG_BIN", scratch=SCRATCH,
                                                           path="$WORK/" + os.path.basename(path)), SCRATCH)),
    }
    bare_median = result["bare"]["median_wall_seconds"]
    result["tradeops_over_bare"] = ratio(result["tradeops"]["median_wall_seconds"], bare_median)
    if thorough_settings:
        result["thorough"] = summarize(samples["thorough"], tradeops_command(path, settings, True))
        result["thorough_over_bare"] = ratio(result["thorough"]["median_wall_seconds"], bare_median)
    return result
