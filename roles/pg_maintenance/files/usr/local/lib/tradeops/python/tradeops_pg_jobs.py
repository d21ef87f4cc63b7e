#!/usr/bin/python3
"""Run the nightly maintenance or the weekly cleanup of the trading database.

Usage: tradeops_pg_jobs.py {maintenance,cleanup} [--config PATH] [--check]

The settings come from the JSON file that the pg_maintenance role renders
(default /etc/tradeops/pg_maintenance.json); leading lines that start with
"#" are skipped. The password comes from the password file named there.
Messages go to stderr, one line each, for the job log. Exit codes follow
sysexits.h like the shell jobs: 0 ok, 1 work failed, 64 usage, 69
PostgreSQL unreachable, 78 bad configuration.
"""

import argparse
import sys

try:
    from ansible.module_utils.tradeops_postgres import (
        EX_FAILURE, EX_OK, EX_USAGE, ConfigError, DATABASE_ERRORS, SqlRunner, TradeopsError, connect,
        describe_db_error, load_job_settings)
    from ansible.module_utils.tradeops_maintenance import MaintenanceOptions, run_maintenance
    from ansible.module_utils.tradeops_retention import RetentionOptions, normalize_policies, run_retention
except ImportError:
    sys.path.insert(0, "/usr/local/lib/tradeops/python")
    from tradeops_postgres import (
        EX_FAILURE, EX_OK, EX_USAGE, ConfigError, DATABASE_ERRORS, SqlRunner, TradeopsError, connect,
        describe_db_error, load_job_settings)
    from tradeops_maintenance import MaintenanceOptions, run_maintenance
    from tradeops_retention import RetentionOptions, normalize_policies, run_retention

DEFAULT_CONFIG = "/etc/tradeops/pg_maintenance.json"


def say(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def load_config(path):
    """Read the JSON settings; raise ConfigError when missing or invalid."""
    return load_job_settings(path, "pg_maintenance",
                             (("connection", dict), ("maintenance", dict), ("cleanup", dict)))


def maintenance_options(section, **overrides):
    values = dict(section)
    values.update(overrides)
    try:
        return MaintenanceOptions(**values)
    except TypeError as error:
        raise ConfigError("Invalid maintenance settings: %s." % error)


def report_maintenance(result):
    for step in result["steps"]:
        if step["status"] == "failed":
            say("%s %s failed after %d ms: %s" % (step["step"], step["object"], step["duration_ms"], step["error"]))
        else:
            say("%s %s: %s in %d ms" % (step["step"], step["object"], step["status"], step["duration_ms"]))
    for row in result["invalid_indexes_found"]:
        say("invalid index %s on table %s: %s" % (row["index"], row["table"], row["action"]))
    reports = result["reports"]
    if "unused_indexes" in reports:
        unused = reports["unused_indexes"]
        say("unused indexes: %d, counting scans since %s (%s)"
            % (len(unused["indexes"]), unused["since"], unused["since_source"]))
        for row in unused["indexes"]:
            say("unused index %s on table %s: %s, %d scans" % (row["index"], row["table"], row["size"], row["idx_scan"]))
    if "sizes" in reports:
        for row in reports["sizes"]["tables"]:
            say("table size %s: total %s (table %d bytes, indexes %d bytes)"
                % (row["table"], row["total"], row["table_bytes"], row["indexes_bytes"]))
    if "table_stats" in reports:
        for row in reports["table_stats"]:
            say("table stats %s: %d live, %d dead tuples; last vacuum %s, autovacuum %s, analyze %s, autoanalyze %s"
                % (row["table"], row["n_live_tup"], row["n_dead_tup"], row["last_vacuum"], row["last_autovacuum"],
                   row["last_analyze"], row["last_autoanalyze"]))
    for row in reports["invalid_indexes"]:
        say("invalid index left: %s on table %s" % (row["index"], row["table"]))


def report_retention(result, check_mode):
    for entry in result["policies"]:
        if entry["status"] in ("failed", "lock_timeout"):
            say("retention %s: %s after %d ms: %s"
                % (entry["table"], entry["status"], entry["duration_ms"], entry["error"]))
            continue
        if entry["status"] == "skipped":
            say("retention %s: skipped, the table does not exist" % entry["table"])
            continue
        if check_mode:
            say("retention %s: would delete %d rows and drop %d partitions"
                % (entry["table"], entry["rows_to_delete"], len(entry["partitions_to_drop"])))
        else:
            say("retention %s: deleted %d rows in %d batches, dropped %d partitions (%d rows), %d retries, %d ms"
                % (entry["table"], entry["rows_deleted"], entry["batches"], len(entry["partitions_dropped"]),
                   sum(p["rows"] for p in entry["partitions_dropped"]), entry["retries"], entry["duration_ms"]))
    for warning in result["warnings"]:
        say("warning: %s" % warning)


def run_job(job, config, check_mode):
    """Run one job; return its exit code. TradeopsError passes up."""
    connection = config["connection"]
    if job == "maintenance":
        options = maintenance_options(config["maintenance"])
        runner = SqlRunner(connect(connection, "tradeops-db-maintenance"), check_mode=check_mode)
        try:
            result = run_maintenance(runner, options, log=say)
        finally:
            runner.close()
        report_maintenance(result)
        return EX_OK if result["status"] == "ok" else EX_FAILURE

    cleanup = dict(config["cleanup"])
    analyze_tables = cleanup.pop("analyze_tables", [])
    raw_policies = cleanup.pop("policies", None)
    try:
        options = RetentionOptions(**cleanup)
    except TypeError as error:
        raise ConfigError("Invalid cleanup settings: %s." % error)
    policies = normalize_policies(raw_policies, options.schema)
    runner = SqlRunner(connect(connection, "tradeops-data-cleanup"), check_mode=check_mode)
    try:
        result = run_retention(runner, policies, options, log=say)
        report_retention(result, check_mode)
        analyzed = run_maintenance(runner, maintenance_options(
            {"schema": options.schema, "analyze_tables": analyze_tables, "reports": []}), log=say)
    finally:
        runner.close()
    report_maintenance(analyzed)
    total = result["rows_to_delete"] if check_mode else result["rows_deleted"]
    say("retention %s %d rows in total" % ("would delete" if check_mode else "deleted", total))
    ok = result["status"] == "ok" and analyzed["status"] == "ok"
    return EX_OK if ok else EX_FAILURE


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the trading database maintenance or cleanup.")
    parser.add_argument("job", choices=["maintenance", "cleanup"])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="JSON settings file (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="run only reads and list what would run")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return EX_USAGE if exit_request.code else EX_OK
    try:
        config = load_config(args.config)
        return run_job(args.job, config, args.check)
    except TradeopsError as error:
        say(str(error))
        return error.exit_code
    except DATABASE_ERRORS as error:
        say("The %s job failed: %s" % (args.job, describe_db_error(error)))
        return EX_FAILURE


if __name__ == "__main__":
    sys.exit(main())
