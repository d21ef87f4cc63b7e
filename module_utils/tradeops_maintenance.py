# -*- coding: utf-8 -*-
"""Nightly PostgreSQL maintenance for the trading database, and its reports.

Plain Python, no Ansible import: the pg_maintenance module and the nightly
maintenance job both call ``run_maintenance()``.

The steps run in this order: VACUUM (ANALYZE) of the listed tables, repair
or report of invalid indexes, REINDEX of the listed indexes, ANALYZE, then
the reports. VACUUM takes a SHARE UPDATE EXCLUSIVE lock and REINDEX
CONCURRENTLY does too, so application reads and writes go on meanwhile.
A plain REINDEX (``concurrently=False``) blocks writes to the table.
"""

from __future__ import absolute_import, division, print_function

import re
import time

try:
    from ansible.module_utils.tradeops_postgres import (
        ConfigError, TradeopsError, check_identifier, current_database, describe_db_error, elapsed_ms,
        require_index, require_table, sqlstate_of, table_identifier)
except ImportError:
    from tradeops_postgres import (  # noqa: F401 - the job programs import from /usr/local/lib/tradeops/python
        ConfigError, TradeopsError, check_identifier, current_database, describe_db_error, elapsed_ms,
        require_index, require_table, sqlstate_of, table_identifier)

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # pragma: no cover - tradeops_postgres.connect() reports it
    psycopg2 = None
    sql = None

REPORTS = ("unused_indexes", "sizes", "table_stats")
INVALID_INDEX_ACTIONS = ("report", "rebuild")

# REINDEX CONCURRENTLY builds "<name>_ccnew" and swaps it in, leaving the old
# index as "<name>_ccold" until it is dropped. An interrupted run leaves one
# of them behind, invalid; a number follows when the name was taken.
_LEFTOVER_NAME = re.compile(r"^(?P<index>.+)_cc(?P<kind>new|old)\d*$")


class MaintenanceOptions(object):
    """What one maintenance run does.

    vacuum_tables: tables for VACUUM (ANALYZE).
    analyze_tables: tables for ANALYZE alone.
    analyze_database: run ANALYZE on the whole database.
    reindex_indexes: indexes for REINDEX INDEX.
    concurrently: use REINDEX ... CONCURRENTLY and DROP INDEX CONCURRENTLY.
    invalid_indexes: "report" lists invalid indexes; "rebuild" also drops
    REINDEX leftovers (_ccnew, _ccold) and rebuilds other invalid indexes.
    reports: names from REPORTS.
    lock_timeout_ms: lock_timeout for each maintenance command; 0 waits forever.
    """

    def __init__(self, vacuum_tables=(), analyze_tables=(), analyze_database=False, reindex_indexes=(),
                 concurrently=True, invalid_indexes="report", reports=REPORTS, schema="public",
                 lock_timeout_ms=5000):
        self.schema = check_identifier("schema", schema)
        self.vacuum_tables = [check_identifier("table", name) for name in vacuum_tables or ()]
        self.analyze_tables = [check_identifier("table", name) for name in analyze_tables or ()]
        self.analyze_database = bool(analyze_database)
        self.reindex_indexes = [check_identifier("index", name) for name in reindex_indexes or ()]
        self.concurrently = bool(concurrently)
        if invalid_indexes not in INVALID_INDEX_ACTIONS:
            raise ConfigError("Invalid invalid_indexes \"%s\": expected one of %s."
                              % (invalid_indexes, ", ".join(INVALID_INDEX_ACTIONS)))
        self.invalid_indexes = invalid_indexes
        unknown = sorted(set(reports or ()) - set(REPORTS))
        if unknown:
            raise ConfigError("Invalid reports %s: expected names from %s."
                              % (", ".join('"%s"' % name for name in unknown), ", ".join(REPORTS)))
        self.reports = list(reports or ())
        if isinstance(lock_timeout_ms, bool) or int(lock_timeout_ms) < 0:
            raise ConfigError("Invalid lock_timeout_ms %r: expected 0 or more milliseconds." % (lock_timeout_ms,))
        self.lock_timeout_ms = int(lock_timeout_ms)


def build_vacuum(table_id):
    return sql.SQL("VACUUM (ANALYZE) {table}").format(table=table_id)


def build_analyze(table_id=None):
    if table_id is None:
        return sql.SQL("ANALYZE")
    return sql.SQL("ANALYZE {table}").format(table=table_id)


def build_reindex(index_id, concurrently):
    keyword = "REINDEX INDEX CONCURRENTLY {index}" if concurrently else "REINDEX INDEX {index}"
    return sql.SQL(keyword).format(index=index_id)


def build_drop_index(index_id, concurrently):
    keyword = "DROP INDEX CONCURRENTLY {index}" if concurrently else "DROP INDEX {index}"
    return sql.SQL(keyword).format(index=index_id)


def leftover_of(index_name):
    """Return (original index, "new" or "old") for a REINDEX leftover name, else None."""
    match = _LEFTOVER_NAME.match(index_name)
    if not match:
        return None
    return match.group("index"), match.group("kind")


def _iso(value):
    return value.isoformat() if value is not None else None


def find_invalid_indexes(runner, schema):
    """Return the indexes of the schema with pg_index.indisvalid = false."""
    rows = runner.query(
        "SELECT ic.relname AS index, tc.relname AS table, i.indisunique AS is_unique,"
        " pg_catalog.pg_relation_size(i.indexrelid) AS size_bytes"
        " FROM pg_catalog.pg_index i"
        " JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace"
        " WHERE n.nspname = %s AND NOT i.indisvalid ORDER BY ic.relname",
        (schema,))
    for row in rows:
        leftover = leftover_of(row["index"])
        row["leftover"] = leftover[1] if leftover else None
        row["leftover_of"] = leftover[0] if leftover else None
    return rows


def report_unused_indexes(runner, schema):
    """List valid indexes never scanned since the statistics were last reset.

    Primary keys, unique indexes and exclusion-constraint indexes are left
    out: they enforce constraints even when no query scans them.
    """
    since = runner.query(
        "SELECT d.stats_reset, pg_catalog.pg_postmaster_start_time() AS postmaster_start"
        " FROM pg_catalog.pg_stat_database d WHERE d.datname = current_database()")[0]
    if since["stats_reset"] is not None:
        counted_since, source = since["stats_reset"], "stats_reset"
    else:
        counted_since, source = since["postmaster_start"], "postmaster_start"
    rows = runner.query(
        "SELECT s.relname AS table, s.indexrelname AS index, s.idx_scan,"
        " pg_catalog.pg_relation_size(s.indexrelid) AS size_bytes,"
        " pg_catalog.pg_size_pretty(pg_catalog.pg_relation_size(s.indexrelid)) AS size"
        " FROM pg_catalog.pg_stat_user_indexes s JOIN pg_catalog.pg_index i ON i.indexrelid = s.indexrelid"
        " WHERE s.schemaname = %s AND s.idx_scan = 0 AND i.indisvalid"
        " AND NOT i.indisprimary AND NOT i.indisunique AND NOT i.indisexclusion"
        " ORDER BY pg_catalog.pg_relation_size(s.indexrelid) DESC, s.indexrelname",
        (schema,))
    return {"since": _iso(counted_since), "since_source": source, "indexes": rows}


def report_sizes(runner, schema):
    """Return table sizes (heap, indexes, total) and index sizes, largest first."""
    tables = runner.query(
        "SELECT c.relname AS table, pg_catalog.pg_table_size(c.oid) AS table_bytes,"
        " pg_catalog.pg_indexes_size(c.oid) AS indexes_bytes,"
        " pg_catalog.pg_total_relation_size(c.oid) AS total_bytes,"
        " pg_catalog.pg_size_pretty(pg_catalog.pg_total_relation_size(c.oid)) AS total"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'm')"
        " ORDER BY pg_catalog.pg_total_relation_size(c.oid) DESC, c.relname",
        (schema,))
    indexes = runner.query(
        "SELECT tc.relname AS table, ic.relname AS index, pg_catalog.pg_relation_size(ic.oid) AS size_bytes,"
        " pg_catalog.pg_size_pretty(pg_catalog.pg_relation_size(ic.oid)) AS size"
        " FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace"
        " WHERE n.nspname = %s AND ic.relkind = 'i'"
        " ORDER BY pg_catalog.pg_relation_size(ic.oid) DESC, ic.relname",
        (schema,))
    return {"tables": tables, "indexes": indexes}


def report_table_stats(runner, schema):
    """Return live and dead tuples and the last (auto)vacuum and (auto)analyze per table."""
    rows = runner.query(
        "SELECT relname AS table, n_live_tup, n_dead_tup, last_vacuum, last_autovacuum,"
        " last_analyze, last_autoanalyze, vacuum_count, autovacuum_count, analyze_count, autoanalyze_count"
        " FROM pg_catalog.pg_stat_user_tables WHERE schemaname = %s"
        " ORDER BY n_dead_tup DESC, relname",
        (schema,))
    for row in rows:
        for key in ("last_vacuum", "last_autovacuum", "last_analyze", "last_autoanalyze"):
            row[key] = _iso(row[key])
        total = row["n_live_tup"] + row["n_dead_tup"]
        row["dead_ratio"] = round(float(row["n_dead_tup"]) / total, 4) if total else 0.0
    return rows


class _MaintenanceRun(object):
    """State and steps of one maintenance run."""

    def __init__(self, runner, options, log):
        self.runner = runner
        self.options = options
        self.log = log
        self.lock_timeout_ms = options.lock_timeout_ms or None
        self.errors = []
        self.steps = []

    def identifier(self, name):
        return table_identifier(self.options.schema, name)

    def step(self, kind, name, statement):
        """Run one maintenance command; record its duration or its error."""
        entry = {"step": kind, "object": name}
        started = time.monotonic()
        try:
            self.runner.change(statement, None, self.lock_timeout_ms)
            entry["status"] = "would_run" if self.runner.check_mode else "ok"
        except psycopg2.Error as error:
            message = "%s of \"%s\" failed: %s" % (kind, name, describe_db_error(error))
            entry.update(status="failed", error=message, sqlstate=sqlstate_of(error))
            self.errors.append(message)
            self.log(message)
        entry["duration_ms"] = elapsed_ms(started)
        self.steps.append(entry)
        return entry

    def check_names(self, database):
        """Raise NotFoundError before any command runs when a name is unknown."""
        for table in self.options.vacuum_tables + self.options.analyze_tables:
            require_table(self.runner, self.options.schema, table, database)
        for index in self.options.reindex_indexes:
            require_index(self.runner, self.options.schema, index, database)

    def handle_invalid_indexes(self):
        found = find_invalid_indexes(self.runner, self.options.schema)
        for row in found:
            if row["leftover"]:
                self.log("invalid index %s is a leftover of an interrupted REINDEX CONCURRENTLY of %s"
                         % (row["index"], row["leftover_of"]))
            else:
                self.log("invalid index %s on table %s" % (row["index"], row["table"]))
            if self.options.invalid_indexes != "rebuild":
                row["action"] = "reported"
                continue
            index_id = self.identifier(row["index"])
            if row["leftover"]:
                # The original index is still in place, so the copy is dropped.
                entry = self.step("DROP INDEX", row["index"], build_drop_index(index_id, self.options.concurrently))
                row["action"] = "dropped"
            else:
                entry = self.reindex(row["index"])
                row["action"] = "rebuilt"
            if entry["status"] == "failed":
                row["action"] = "failed"
                row["error"] = entry["error"]
        return found

    def reindex(self, index):
        before = set(row["index"] for row in find_invalid_indexes(self.runner, self.options.schema))
        entry = self.step("REINDEX", index, build_reindex(self.identifier(index), self.options.concurrently))
        if entry["status"] == "failed" and self.options.concurrently:
            self.drop_new_leftovers(index, before)
        return entry

    def drop_new_leftovers(self, index, before):
        """Drop the _ccnew copy that a failed REINDEX CONCURRENTLY left behind."""
        for row in find_invalid_indexes(self.runner, self.options.schema):
            if row["index"] in before or row["leftover_of"] != index:
                continue
            self.step("DROP INDEX", row["index"], build_drop_index(self.identifier(row["index"]), True))

    def index_validity(self, indexes):
        if not indexes:
            return {}
        rows = self.runner.query(
            "SELECT ic.relname AS index, i.indisvalid AS valid FROM pg_catalog.pg_index i"
            " JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace"
            " WHERE n.nspname = %s AND ic.relname = ANY(%s)",
            (self.options.schema, list(indexes)))
        return dict((row["index"], row["valid"]) for row in rows)


def run_maintenance(runner, options, log=None):
    """Run the maintenance steps and the reports; return the result dict.

    Unknown tables or indexes raise NotFoundError before anything runs. A
    command that fails later is recorded and the run goes on; ``status`` is
    then "failed". ``changed`` is true when any command ran (never in check
    mode), because VACUUM, ANALYZE and REINDEX always rewrite something.
    """
    log = log or (lambda message: None)
    started = time.monotonic()
    run = _MaintenanceRun(runner, options, log)
    database = current_database(runner)
    run.check_names(database)
    result = {"database": database, "schema": options.schema}

    phase = time.monotonic()
    for table in options.vacuum_tables:
        run.step("VACUUM", table, build_vacuum(run.identifier(table)))
    result["vacuum_ms"] = elapsed_ms(phase)

    phase = time.monotonic()
    result["invalid_indexes_found"] = run.handle_invalid_indexes()
    for index in options.reindex_indexes:
        run.reindex(index)
    result["reindex_ms"] = elapsed_ms(phase)
    result["reindexed_valid"] = run.index_validity(options.reindex_indexes)

    phase = time.monotonic()
    for table in options.analyze_tables:
        run.step("ANALYZE", table, build_analyze(run.identifier(table)))
    if options.analyze_database:
        run.step("ANALYZE", database, build_analyze())
    result["analyze_ms"] = elapsed_ms(phase)

    phase = time.monotonic()
    reports = {}
    if "unused_indexes" in options.reports:
        reports["unused_indexes"] = report_unused_indexes(runner, options.schema)
    if "sizes" in options.reports:
        reports["sizes"] = report_sizes(runner, options.schema)
    if "table_stats" in options.reports:
        reports["table_stats"] = report_table_stats(runner, options.schema)
    reports["invalid_indexes"] = find_invalid_indexes(runner, options.schema)
    result["reports"] = reports
    result["reports_ms"] = elapsed_ms(phase)

    result["steps"] = run.steps
    result["errors"] = run.errors
    if runner.check_mode:
        result["would_execute"] = list(runner.would_execute)
        result["changed"] = False
    else:
        result["executed_commands"] = list(runner.executed_commands)
        result["changed"] = bool(runner.executed_commands)
    result["status"] = "failed" if run.errors else "ok"
    result["duration_ms"] = elapsed_ms(started)
    return result
