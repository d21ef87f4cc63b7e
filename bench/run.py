#!/usr/bin/env python3
"""Benchmark tradeops' backup, verification and retention against simpler ways to do the same.

See bench/README.md. The program starts a throwaway PostgreSQL 15 cluster,
fills it with lab/generate_trading_data.py, measures every case --runs
times, writes the raw results to bench/results/<UTC time>.json and
regenerates docs/benchmarks.md from them. The cluster is stopped and
removed at the end, also after an error or SIGTERM.
"""

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys

import yaml

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)

import backup  # noqa: E402
import converge  # noqa: E402
import data  # noqa: E402
import report  # noqa: E402
import retention  # noqa: E402
import verification  # noqa: E402
from cluster import Cluster  # noqa: E402

log = logging.getLogger("bench")

RESULTS_DIR = os.path.join(BENCH_DIR, "results")
PAGE = os.path.join(REPO, "docs", "benchmarks.md")
DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
# The parts that need the throwaway PostgreSQL cluster.
DATABASE_PARTS = ("backup", "verify", "retention")


def host_counts(text):
    """Parse --converge-hosts, such as "2,4,8"."""
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("invalid host counts %r: expected even numbers such as 2,4,8" % text)
    for count in counts:
        if count < 2 or count % 2:
            raise argparse.ArgumentTypeError("invalid host count %d: it must be even and at least 2" % count)
    return counts


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size-gb", type=float, default=2.0,
                      help="target size of the generated database in GB (10^9 bytes); the tick count comes from "
                           "two small calibration loads (default: 2)")
    size.add_argument("--ticks", type=int, help="number of tick_data rows to generate, instead of --size-gb")
    parser.add_argument("--runs", type=int, default=3, help="runs of every case; the page reports medians "
                        "(default: 3)")
    parser.add_argument("--restore-runs", type=int, default=1,
                        help="runs of the backup part that also restore each dump (default: 1)")
    parser.add_argument("--only", action="append", choices=DATABASE_PARTS + ("converge",),
                        help="measure only this part; repeat for several (default: backup, verify and retention)")
    parser.add_argument("--converge", action="store_true",
                        help="also time site.yml on throwaway podman hosts (the same as --only converge added to "
                             "the other parts)")
    parser.add_argument("--converge-hosts", type=host_counts, default=[2, 4, 8], metavar="N,N,...",
                        help="host counts of the converge part, each even: half db hosts, half app hosts "
                             "(default: 2,4,8)")
    parser.add_argument("--note", action="append", default=[],
                        help="sentence to print at the top of the page, such as what else ran on the machine; "
                             "repeat for several")
    parser.add_argument("--pg-bin", default=DEFAULT_PG_BIN,
                        help="directory of the PostgreSQL 15 programs (default: %(default)s)")
    parser.add_argument("--converge-from", metavar="RESULTS_JSON",
                        help="copy the converge part of an earlier results file into this run's results, for a "
                             "run that does not measure it; with --report-only, into the page only")
    parser.add_argument("--report-only", metavar="RESULTS_JSON",
                        help="regenerate docs/benchmarks.md from a results file and measure nothing")
    parser.add_argument("--no-page", action="store_true", help="write the results JSON but not docs/benchmarks.md")
    parser.add_argument("--results-dir", default=RESULTS_DIR,
                        help="folder for the results JSON (default: bench/results)")
    parser.add_argument("--page", default=PAGE, help="results page to write (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1, got %d" % args.runs)
    if not 0 <= args.restore_runs <= args.runs:
        parser.error("--restore-runs must be between 0 and --runs (%d), got %d" % (args.runs, args.restore_runs))
    if args.ticks is not None and args.ticks < 1000:
        parser.error("--ticks must be at least 1000, got %d" % args.ticks)
    if args.size_gb <= 0:
        parser.error("--size-gb must be positive, got %s" % args.size_gb)
    return args


def read_role_defaults():
    """Read the defaults that the benchmark compares against from the roles themselves."""
    with open(os.path.join(REPO, "roles", "pg_backup", "defaults", "main.yml"), encoding="utf-8") as handle:
        backup_defaults = yaml.safe_load(handle)
    with open(os.path.join(REPO, "roles", "pg_backup_verify", "defaults", "main.yml"), encoding="utf-8") as handle:
        verify_defaults = yaml.safe_load(handle)
    with open(os.path.join(REPO, "roles", "pg_maintenance", "defaults", "main.yml"), encoding="utf-8") as handle:
        maintenance_defaults = yaml.safe_load(handle)
    policies = [policy for policy in maintenance_defaults["pg_maintenance_retention_policies"]
                if policy.get("table") == "tick_data"]
    if not policies:
        raise RuntimeError("roles/pg_maintenance/defaults/main.yml has no retention policy for tick_data")
    prefix = "pg_maintenance_retention_"
    return {
        "backup": {"compression": backup_defaults["pg_backup_db_compression"],
                   "level": int(backup_defaults["pg_backup_db_compression_level"]),
                   "threads": int(backup_defaults["pg_backup_db_compression_threads"]),
                   "min_match": int(backup_defaults["pg_backup_db_zstd_min_match"])},
        "verify": {"jobs": int(verify_defaults["pg_backup_verify_jobs"]),
                   "heapallindexed": bool(verify_defaults["pg_backup_verify_amcheck_heapallindexed"]),
                   "required_tables": verify_defaults["pg_backup_verify_required_tables"]["full"]},
        "retention": {
            "policy": policies[0],
            "options": {name: maintenance_defaults[prefix + name] for name in (
                "batch_size", "lock_timeout_ms", "statement_timeout_ms", "lock_retries", "retry_delay_ms")},
        },
    }


def interpreter_name():
    """Return the Python interpreter as a path relative to the repository when it is the project's venv."""
    path = os.path.abspath(sys.executable)
    if path.startswith(REPO + os.sep):
        return os.path.relpath(path, REPO)
    return "python3"


def first_line(argv):
    try:
        process = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return None
    lines = (process.stdout or process.stderr).strip().splitlines()
    if not lines:
        return None
    # zstd prints its version between asterisks.
    return lines[0].strip("* ")


def describe_machine(cluster=None):
    cpu_model = None
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as handle:
        memory_kb = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    machine = {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }
    if cluster is not None:
        machine.update({
            "postgresql": cluster.value("SELECT version()"),
            "pg_dump": first_line([cluster.bin("pg_dump"), "--version"]),
            "gzip": first_line(["gzip", "--version"]),
            "zstd": first_line(["zstd", "--version"]),
            "pigz": first_line(["pigz", "--version"]),
        })
    return machine


def log_sample(message):
    log.info("%s", message)


def raise_on_sigterm(signum, frame):
    raise SystemExit("stopped by signal %d" % signum)


def measure(args):
    """Run the requested parts and return the results document."""
    defaults = read_role_defaults()
    parts = list(args.only or DATABASE_PARTS)
    if args.converge and "converge" not in parts:
        parts.append("converge")
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {"started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "runs": args.runs, "notes": args.note,
               "command": shlex.join([interpreter_name(), "bench/run.py"] + sys.argv[1:]), "role_defaults": defaults}

    if any(part in DATABASE_PARTS for part in parts):
        measure_database(args, parts, defaults, results)
    else:
        results["machine"] = describe_machine()
    if "converge" in parts:
        results["converge"] = converge.run(args.converge_hosts, args.runs, log_sample)
        results["machine"]["load_average_end"] = os.getloadavg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    results["finished_at"] = finished.strftime("%Y-%m-%dT%H:%M:%SZ")
    results["total_seconds"] = round((finished - started).total_seconds(), 1)
    return results


def measure_database(args, parts, defaults, results):
    """Measure the database parts on a new cluster and add them to results."""
    cluster = Cluster(args.pg_bin)
    try:
        cluster.start()
        results["machine"] = describe_machine(cluster)
        results["server_settings"] = {name: cluster.value("SHOW %s" % name) for name in (
            "fsync", "synchronous_commit", "shared_buffers", "max_wal_size", "checkpoint_timeout")}
        ticks = args.ticks
        if ticks is None:
            results["calibration"] = data.calibrate_ticks(cluster, args.size_gb * 1e9)
            ticks = results["calibration"]["ticks"]
        results["data"] = data.load(cluster, ticks)

        if "backup" in parts:
            results["backup"] = backup.run(cluster, data.DATABASE, args.runs, defaults["backup"], log_sample,
                                           restore_runs=args.restore_runs)
        if "verify" in parts:
            results["verification"] = verification.run(cluster, data.DATABASE, args.runs, defaults["verify"],
                                                       defaults["backup"], log_sample)
        if "retention" in parts:
            results["retention"] = retention.run(cluster, data.DATABASE, args.runs, defaults["retention"],
                                                 log_sample)
        results["machine"]["load_average_end"] = os.getloadavg()
    finally:
        cluster.stop()


def earlier_converge(path):
    """Return the converge part of an earlier results file, with where and when it was measured."""
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    if "converge" not in earlier:
        raise SystemExit("%s has no converge part; run bench/run.py --only converge first" % path)
    converge = dict(earlier["converge"])
    converge.update(source=os.path.basename(path), runs=earlier["runs"], started_at=earlier["started_at"],
                    load_average=[earlier["machine"]["load_average_start"][0],
                                  earlier["machine"].get("load_average_end", [None])[0]])
    return converge


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report_only:
        with open(args.report_only, encoding="utf-8") as handle:
            results = json.load(handle)
        if args.converge_from:
            results["converge"] = earlier_converge(args.converge_from)
        # Notes given now describe the measured run, such as load that it
        # could not see.
        results["notes"] = results.get("notes", []) + [note for note in args.note
                                                       if note not in results.get("notes", [])]
    else:
        signal.signal(signal.SIGTERM, raise_on_sigterm)
        results = measure(args)
        if args.converge_from and "converge" not in results:
            results["converge"] = earlier_converge(args.converge_from)
        os.makedirs(args.results_dir, exist_ok=True)
        path = os.path.join(args.results_dir, results["started_at"].replace(":", "") + ".json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
        log.info("wrote %s", path)
    if not args.no_page:
        with open(args.page, "w", encoding="utf-8") as handle:
            handle.write(report.render(results))
        log.info("wrote %s", args.page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
