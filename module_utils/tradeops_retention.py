# -*- coding: utf-8 -*-
"""Data retention for the trading database: policies, SQL builders, the run.

Plain Python, no Ansible import: the pg_retention module and the weekly
cleanup job both call ``run_retention()``.

A policy is a dict of one of two kinds:

* age: ``{table, time_column, max_age}`` deletes rows whose time column is
  older than ``now() - max_age``.
* keep_newest: ``{table, keep_newest, partition_by, order_by}`` keeps the
  newest ``keep_newest`` rows per value of ``partition_by`` by ``order_by``
  and deletes the rest.

Either kind may add ``optional: true`` (a missing table is a warning, not an
error) and ``schema`` (default ``public``).

Rows are deleted in batches, one short transaction per batch with SET LOCAL
lock_timeout and statement_timeout, so application writes wait at most
lock_timeout behind a batch. A range-partitioned table partitioned on the
policy's time column loses whole partitions whose upper bound is at or
before the cut-off (DETACH PARTITION, then DROP TABLE); the remaining
partitions are cleaned in batches.
"""

from __future__ import absolute_import, division, print_function

import re
import time

try:
    from ansible.module_utils.tradeops_postgres import (
        ConfigError, NotFoundError, TradeopsError, SQLSTATE_DEADLOCK_DETECTED, SQLSTATE_LOCK_NOT_AVAILABLE,
        SQLSTATE_QUERY_CANCELED, check_identifier, current_database, describe_db_error, display_name, elapsed_ms,
        require_table, sqlstate_of, table_identifier)
except ImportError:
    from tradeops_postgres import (  # noqa: F401 - the job programs import from /usr/local/lib/tradeops/python
        ConfigError, NotFoundError, TradeopsError, SQLSTATE_DEADLOCK_DETECTED, SQLSTATE_LOCK_NOT_AVAILABLE,
        SQLSTATE_QUERY_CANCELED, check_identifier, current_database, describe_db_error, display_name, elapsed_ms,
        require_table, sqlstate_of, table_identifier)

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # pragma: no cover - tradeops_postgres.connect() reports it
    psycopg2 = None
    sql = None

AGE_KEYS = frozenset(["table", "time_column", "max_age"])
KEEP_NEWEST_KEYS = frozenset(["table", "keep_newest", "partition_by", "order_by"])
COMMON_KEYS = frozenset(["optional", "schema"])

# Units accepted in max_age, mapped to the PostgreSQL interval unit.
INTERVAL_UNITS = {
    "second": "seconds", "seconds": "seconds", "sec": "seconds", "secs": "seconds", "s": "seconds",
    "minute": "minutes", "minutes": "minutes", "min": "minutes", "mins": "minutes",
    "hour": "hours", "hours": "hours", "h": "hours",
    "day": "days", "days": "days", "d": "days",
    "week": "weeks", "weeks": "weeks", "w": "weeks",
    "month": "months", "months": "months", "mon": "months",
    "year": "years", "years": "years", "y": "years",
}
_UNIT_ORDER = ["years", "months", "weeks", "days", "hours", "minutes", "seconds"]
_MAX_AGE_TERM = re.compile(r"(\d+)\s*([a-z]+)")

# Column types that an age policy can compare with a timestamptz cut-off.
TIME_TYPES = frozenset(["timestamp", "timestamptz", "date"])

# SQLSTATEs after which a batch is retried: the lock was not granted in
# time, or the batch lost a deadlock. Both leave nothing half done.
RETRYABLE_SQLSTATES = frozenset([SQLSTATE_LOCK_NOT_AVAILABLE, SQLSTATE_DEADLOCK_DETECTED])


class LockTimeoutError(TradeopsError):
    """A batch did not get its lock within lock_timeout, retries included."""


class RetentionOptions(object):
    """Settings for one retention run.

    batch_size: rows per DELETE transaction.
    lock_timeout_ms / statement_timeout_ms: SET LOCAL in each batch, and for
    DETACH and DROP.
    lock_retries: extra attempts after a lock timeout or deadlock.
    retry_delay_ms: delay before the first retry; it doubles each time.
    detach_concurrently: use DETACH PARTITION CONCURRENTLY where PostgreSQL
    allows it (not when the table has a default partition).
    """

    def __init__(self, batch_size=5000, lock_timeout_ms=2000, statement_timeout_ms=60000, lock_retries=3,
                 retry_delay_ms=500, detach_concurrently=True, schema="public"):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.lock_timeout_ms = _positive_int("lock_timeout_ms", lock_timeout_ms)
        self.statement_timeout_ms = _positive_int("statement_timeout_ms", statement_timeout_ms)
        self.lock_retries = _positive_int("lock_retries", lock_retries, minimum=0)
        self.retry_delay_ms = _positive_int("retry_delay_ms", retry_delay_ms, minimum=0)
        self.detach_concurrently = bool(detach_concurrently)
        self.schema = check_identifier("schema", schema)


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool):
        raise ConfigError("Invalid %s %r: expected an integer." % (name, value))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError("Invalid %s %r: expected an integer." % (name, value))
    if number < minimum:
        raise ConfigError("Invalid %s %d: it must be at least %d." % (name, number, minimum))
    return number


def parse_max_age(text):
    """Validate a max_age such as "30 days" or "1 day 12 hours".

    Returns the normalised interval text, for example "1 days 12 hours",
    which the SQL binds as an interval parameter. Raises ConfigError for
    anything else: unknown units, a repeated unit, signs, fractions or a
    total of zero.
    """
    if not isinstance(text, str):
        raise ConfigError("Invalid max_age %r: expected a string such as \"30 days\"." % (text,))
    cleaned = text.strip().lower()
    terms = []
    position = 0
    for match in _MAX_AGE_TERM.finditer(cleaned):
        if cleaned[position:match.start()].strip():
            break
        terms.append(match)
        position = match.end()
    if not terms or cleaned[position:].strip():
        raise ConfigError(
            "Invalid max_age \"%s\": expected whole numbers with units, such as \"30 days\" or \"1 day 12 hours\"."
            % text, hint="Units: seconds, minutes, hours, days, weeks, months, years.")
    amounts = {}
    for match in terms:
        amount, word = int(match.group(1)), match.group(2)
        unit = INTERVAL_UNITS.get(word)
        if unit is None:
            raise ConfigError(
                "Invalid max_age \"%s\": unknown unit \"%s\"." % (text, word),
                hint="Units: seconds, minutes, hours, days, weeks, months, years.")
        if unit in amounts:
            raise ConfigError("Invalid max_age \"%s\": the unit \"%s\" appears twice." % (text, unit))
        amounts[unit] = amount
    if not any(amounts.values()):
        raise ConfigError("Invalid max_age \"%s\": it must be longer than zero." % text,
                          hint="A zero max_age would delete every row.")
    return " ".join("%d %s" % (amounts[unit], unit) for unit in _UNIT_ORDER if unit in amounts)


def normalize_policy(raw, index, default_schema="public"):
    """Validate one policy dict and return it with defaults filled in.

    ``index`` is the policy's position in the list, used in messages.
    """
    if not isinstance(raw, dict):
        raise ConfigError("Invalid retention policy #%d: expected a mapping, got %s." % (index, type(raw).__name__))
    label = "retention policy #%d" % index
    if "table" in raw:
        label += " (table \"%s\")" % raw["table"]
    is_age = bool(set(raw) & {"time_column", "max_age"})
    is_keep = bool(set(raw) & {"keep_newest", "partition_by", "order_by"})
    if is_age and is_keep:
        raise ConfigError(
            "Invalid %s: it mixes the keys of an age policy and a keep_newest policy." % label,
            hint="Use either table, time_column, max_age or table, keep_newest, partition_by, order_by.")
    if not is_age and not is_keep:
        raise ConfigError(
            "Invalid %s: it has neither max_age nor keep_newest." % label,
            hint="Use either table, time_column, max_age or table, keep_newest, partition_by, order_by.")
    required = AGE_KEYS if is_age else KEEP_NEWEST_KEYS
    unknown = sorted(set(raw) - required - COMMON_KEYS)
    if unknown:
        raise ConfigError(
            "Invalid %s: unknown keys %s." % (label, ", ".join('"%s"' % key for key in unknown)),
            hint="Allowed keys: %s." % ", ".join(sorted(required | COMMON_KEYS)))
    missing = sorted(key for key in required if raw.get(key) in (None, ""))
    if missing:
        raise ConfigError("Invalid %s: missing %s." % (label, ", ".join('"%s"' % key for key in missing)))

    optional = raw.get("optional", False)
    if isinstance(optional, str) and optional.lower() in ("true", "yes", "false", "no"):
        optional = optional.lower() in ("true", "yes")
    if not isinstance(optional, bool):
        raise ConfigError("Invalid %s: optional must be true or false." % label)
    policy = {
        "kind": "age" if is_age else "keep_newest",
        "schema": check_identifier("schema", raw.get("schema") or default_schema),
        "table": check_identifier("table", raw["table"]),
        "optional": optional,
    }
    if is_age:
        policy["time_column"] = check_identifier("column", raw["time_column"])
        policy["max_age"] = parse_max_age(raw["max_age"])
    else:
        keep = raw["keep_newest"]
        if isinstance(keep, str) and keep.strip().isdigit():
            keep = int(keep)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError("Invalid %s: keep_newest must be a whole number of at least 1, got %r." % (label, keep))
        partition_by = raw["partition_by"]
        if isinstance(partition_by, str):
            partition_by = [partition_by]
        if not isinstance(partition_by, list) or not partition_by:
            raise ConfigError("Invalid %s: partition_by must be a column name or a list of them." % label)
        policy["keep_newest"] = keep
        policy["partition_by"] = [check_identifier("column", column) for column in partition_by]
        policy["order_by"] = check_identifier("column", raw["order_by"])
    return policy


def normalize_policies(raw_policies, default_schema="public"):
    """Validate a list of policies; raise ConfigError on the first invalid one."""
    if not isinstance(raw_policies, list):
        raise ConfigError("Invalid retention policies: expected a list.")
    return [normalize_policy(raw, index, default_schema) for index, raw in enumerate(raw_policies)]


# SQL builders. Each returns a psycopg2.sql.Composed with %s placeholders for
# values: the cut-off, row limits and OIDs are always bound, never formatted.

def build_age_count(table_id, column):
    """SELECT count(*) of rows older than the cut-off (one %s)."""
    return sql.SQL("SELECT count(*) AS rows FROM {table} WHERE {column} < %s").format(
        table=table_id, column=sql.Identifier(column))


def build_age_delete(table_id, column):
    """DELETE one batch of rows older than the cut-off (%s cut-off, %s limit, %s cut-off).

    The outer condition repeats the cut-off, so a row whose physical
    location (ctid) was reused between the two scans is never deleted.
    """
    return sql.SQL(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM {table} WHERE {column} < %s LIMIT %s)) AND {column} < %s").format(
        table=table_id, column=sql.Identifier(column))


def _ranked_rows(table_id, partition_by, order_by):
    return sql.SQL(
        "SELECT tableoid, ctid, row_number() OVER ("
        "PARTITION BY {keys} ORDER BY {order} DESC NULLS LAST, ctid DESC) AS position FROM {table}").format(
        keys=sql.SQL(", ").join(sql.Identifier(column) for column in partition_by),
        order=sql.Identifier(order_by), table=table_id)


def build_keep_newest_count(table_id, partition_by, order_by):
    """SELECT count(*) of rows beyond the newest N per key (one %s: N)."""
    return sql.SQL("SELECT count(*) AS rows FROM ({ranked}) AS ranked WHERE ranked.position > %s").format(
        ranked=_ranked_rows(table_id, partition_by, order_by))


def build_keep_newest_delete(target_id, source_id, partition_by, order_by):
    """DELETE one batch of rows beyond the newest N per key from one relation.

    Placeholders: N, the target's OID, the batch size. Rows are ranked over
    ``source_id`` (the whole table, partitions included) and deleted from
    ``target_id`` (the table itself or one leaf partition), because a ctid
    is unique only within one relation. NULL order_by values rank oldest.
    """
    return sql.SQL(
        "DELETE FROM {target} WHERE ctid = ANY(ARRAY("
        "SELECT ranked.ctid FROM ({ranked}) AS ranked"
        " WHERE ranked.position > %s AND ranked.tableoid = %s::oid LIMIT %s))").format(
        target=target_id, ranked=_ranked_rows(source_id, partition_by, order_by))


def build_detach(parent_id, partition_id, mode):
    """ALTER TABLE ... DETACH PARTITION; mode is "", "CONCURRENTLY" or "FINALIZE"."""
    if mode not in ("", "CONCURRENTLY", "FINALIZE"):
        raise ValueError("unknown detach mode %r" % mode)
    statement = sql.SQL("ALTER TABLE {parent} DETACH PARTITION {partition}").format(
        parent=parent_id, partition=partition_id)
    if mode:
        statement = statement + sql.SQL(" " + mode)
    return statement


def build_drop_table(table_id):
    return sql.SQL("DROP TABLE {table}").format(table=table_id)


def parse_range_upper_bound(bound_expression):
    """Return the upper bound literal of a single-column range partition.

    ``bound_expression`` is pg_get_expr(relpartbound), for example
    "FOR VALUES FROM ('2024-01-01') TO ('2024-02-01')". Returns the text
    inside the quotes, None for MAXVALUE, a default partition or anything
    that is not a one-column range bound.
    """
    match = re.match(r"^FOR VALUES FROM \(.*\) TO \((.*)\)$", bound_expression or "")
    if not match:
        return None
    value = match.group(1).strip()
    literal = re.match(r"^'((?:[^']|'')*)'$", value)
    if not literal:
        return None
    return literal.group(1).replace("''", "'")


class _PolicyRun(object):
    """State and steps of one policy in one run."""

    def __init__(self, runner, policy, options, log):
        self.runner = runner
        self.policy = policy
        self.options = options
        self.log = log
        self.name = display_name(policy["schema"], policy["table"])
        self.table_id = table_identifier(policy["schema"], policy["table"])
        self.result = {
            "table": policy["table"],
            "schema": policy["schema"],
            "kind": policy["kind"],
            "status": "ok",
            "batches": 0,
            "retries": 0,
        }
        if runner.check_mode:
            self.result.update(rows_to_delete=0, partitions_to_drop=[])
        else:
            self.result.update(rows_deleted=0, partitions_dropped=[])

    # Catalog look-ups

    def columns(self, table_oid):
        rows = self.runner.query(
            "SELECT a.attnum, a.attname, t.typname FROM pg_catalog.pg_attribute a"
            " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (table_oid,))
        return dict((row["attname"], row) for row in rows)

    def require_column(self, columns, column):
        if column in columns:
            return columns[column]
        raise NotFoundError(
            "Column \"%s\" not found in table \"%s\"." % (column, self.name),
            hint="Columns of \"%s\": %s." % (self.name, ", ".join(sorted(columns))),
            table=self.policy["table"], column=column)

    def leaf_partitions(self, table_oid, exclude_oids=()):
        """Return the leaf partitions, leaving out those under the excluded partitions."""
        return self.runner.query(
            "SELECT c.oid, c.relname, n.nspname FROM pg_catalog.pg_partition_tree(%s::regclass) AS tree"
            " JOIN pg_catalog.pg_class c ON c.oid = tree.relid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE tree.isleaf AND NOT EXISTS ("
            "SELECT 1 FROM unnest(%s::oid[]) AS excluded(oid),"
            " LATERAL pg_catalog.pg_partition_tree(excluded.oid::regclass) AS sub WHERE sub.relid = tree.relid)"
            " ORDER BY c.relname",
            (table_oid, list(exclude_oids)))

    # Writes with retries

    def with_retries(self, action, what):
        """Run action(); retry a lock timeout or deadlock with backoff."""
        attempt = 0
        while True:
            try:
                return action()
            except psycopg2.Error as error:
                state = sqlstate_of(error)
                if state == SQLSTATE_QUERY_CANCELED:
                    raise TradeopsError(
                        "Statement timed out while %s on table \"%s\" after %d ms."
                        % (what, self.name, self.options.statement_timeout_ms),
                        hint="Lower batch_size or raise statement_timeout_ms.",
                        table=self.policy["table"], sqlstate=state)
                if state not in RETRYABLE_SQLSTATES:
                    raise
                if attempt >= self.options.lock_retries:
                    raise LockTimeoutError(
                        "Lock not granted while %s on table \"%s\": %s (%d attempts, lock_timeout %d ms)."
                        % (what, self.name, describe_db_error(error), attempt + 1, self.options.lock_timeout_ms),
                        hint="Another session holds a conflicting lock; the next run tries again.",
                        table=self.policy["table"], sqlstate=state, attempts=attempt + 1)
                delay = self.options.retry_delay_ms * (2 ** attempt) / 1000.0
                attempt += 1
                self.result["retries"] += 1
                self.log("retrying %s on %s in %.1f s after: %s" % (what, self.name, delay,
                                                                      describe_db_error(error)))
                time.sleep(delay)

    def delete_in_batches(self, statement, params, what):
        """Run a batch DELETE until it removes fewer rows than batch_size."""
        total = 0
        while True:
            count = self.with_retries(
                lambda: self.runner.change_in_transaction(
                    statement, params, self.options.lock_timeout_ms, self.options.statement_timeout_ms),
                what)
            if count is None:
                return total
            self.result["batches"] += 1
            total += count
            if count < self.options.batch_size:
                return total

    def count(self, statement, params):
        return int(self.runner.query_value(statement, params) or 0)

    # Policy kinds

    def run(self, database):
        table = require_table(self.runner, self.policy["schema"], self.policy["table"], database)
        columns = self.columns(table["oid"])
        if self.policy["kind"] == "age":
            self.run_age(table, columns)
        else:
            self.run_keep_newest(table, columns)

    def run_age(self, table, columns):
        column = self.require_column(columns, self.policy["time_column"])
        if column["typname"] not in TIME_TYPES:
            raise TradeopsError(
                "Column \"%s\" of table \"%s\" has type %s, which an age policy cannot compare with a cut-off time."
                % (self.policy["time_column"], self.name, column["typname"]),
                hint="Use a date, timestamp or timestamptz column as time_column.",
                table=self.policy["table"], column=self.policy["time_column"])
        cutoff = self.runner.query_value("SELECT now() - %s::interval", (self.policy["max_age"],))
        self.result["max_age"] = self.policy["max_age"]
        self.result["cutoff"] = cutoff.isoformat()

        targets = [table]
        if table["relkind"] == "p":
            # In check mode the expired partitions are still attached, so
            # they are left out here rather than counted twice.
            expired = self.drop_expired_partitions(table, column, cutoff)
            targets = self.leaf_partitions(table["oid"], expired)

        for target in targets:
            target_id = table_identifier(target["nspname"], target["relname"])
            if self.runner.check_mode:
                self.result["rows_to_delete"] += self.count(
                    build_age_count(target_id, column["attname"]), (cutoff,))
            statement = build_age_delete(target_id, column["attname"])
            deleted = self.delete_in_batches(
                statement, (cutoff, self.options.batch_size, cutoff), "deleting rows")
            if not self.runner.check_mode:
                self.result["rows_deleted"] += deleted

    def drop_expired_partitions(self, table, column, cutoff):
        """Detach and drop the partitions whose upper bound is at or before the cut-off.

        Returns the OIDs of those partitions.
        """
        key = self.runner.query(
            "SELECT partstrat, partnatts, partattrs::int2[] AS attrs, partdefid"
            " FROM pg_catalog.pg_partitioned_table WHERE partrelid = %s",
            (table["oid"],))[0]
        if key["partstrat"] != "r" or key["partnatts"] != 1 or key["attrs"][0] != column["attnum"]:
            self.log("%s is not range-partitioned on %s alone; deleting in batches instead"
                     % (self.name, column["attname"]))
            return []
        partitions = self.runner.query(
            "SELECT c.oid, c.relname, n.nspname, pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound,"
            " i.inhdetachpending AS detach_pending"
            " FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE i.inhparent = %s ORDER BY c.relname",
            (table["oid"],))
        # PostgreSQL 15 rejects DETACH ... CONCURRENTLY when a default partition exists.
        concurrently = self.options.detach_concurrently and not key["partdefid"]
        expired_oids = []
        for partition in partitions:
            upper = parse_range_upper_bound(partition["bound"])
            if upper is None:
                continue
            expired = self.runner.query_value("SELECT %s::timestamptz <= %s::timestamptz AS expired", (upper, cutoff))
            if not expired:
                continue
            self.drop_partition(table, partition, upper, concurrently)
            expired_oids.append(partition["oid"])
        return expired_oids

    def drop_partition(self, table, partition, upper, concurrently):
        parent_id = table_identifier(table["nspname"], table["relname"])
        partition_id = table_identifier(partition["nspname"], partition["relname"])
        rows = self.count(sql.SQL("SELECT count(*) AS rows FROM {table}").format(table=partition_id), None)
        entry = {"partition": partition["relname"], "upper_bound": upper, "rows": rows}
        lock_ms, statement_ms = self.options.lock_timeout_ms, self.options.statement_timeout_ms
        if partition["detach_pending"]:
            # An earlier DETACH ... CONCURRENTLY was interrupted; finish it.
            self.with_retries(lambda: self.runner.change(
                build_detach(parent_id, partition_id, "FINALIZE"), None, lock_ms, statement_ms),
                "finishing the detach of partition \"%s\"" % partition["relname"])
        elif concurrently:
            self.with_retries(lambda: self.runner.change(
                build_detach(parent_id, partition_id, "CONCURRENTLY"), None, lock_ms, statement_ms),
                "detaching partition \"%s\"" % partition["relname"])
        else:
            self.with_retries(lambda: self.runner.change_in_transaction(
                build_detach(parent_id, partition_id, ""), None, lock_ms, statement_ms),
                "detaching partition \"%s\"" % partition["relname"])
        self.with_retries(lambda: self.runner.change_in_transaction(
            build_drop_table(partition_id), None, lock_ms, statement_ms),
            "dropping partition \"%s\"" % partition["relname"])
        if self.runner.check_mode:
            self.result["partitions_to_drop"].append(entry)
        else:
            self.result["partitions_dropped"].append(entry)
            self.log("dropped partition %s of %s (%d rows, upper bound %s)"
                     % (partition["relname"], self.name, rows, upper))

    def run_keep_newest(self, table, columns):
        for column in self.policy["partition_by"] + [self.policy["order_by"]]:
            self.require_column(columns, column)
        keep = self.policy["keep_newest"]
        self.result["keep_newest"] = keep
        partition_by, order_by = self.policy["partition_by"], self.policy["order_by"]
        if self.runner.check_mode:
            self.result["rows_to_delete"] = self.count(
                build_keep_newest_count(self.table_id, partition_by, order_by), (keep,))
        targets = [table] if table["relkind"] != "p" else self.leaf_partitions(table["oid"])
        for target in targets:
            target_id = table_identifier(target["nspname"], target["relname"])
            statement = build_keep_newest_delete(target_id, self.table_id, partition_by, order_by)
            deleted = self.delete_in_batches(
                statement, (keep, target["oid"], self.options.batch_size), "deleting rows")
            if not self.runner.check_mode:
                self.result["rows_deleted"] += deleted


def run_retention(runner, policies, options, log=None):
    """Apply normalised policies in order and return the run's result dict.

    A policy that fails is reported in its entry and the run goes on with
    the next one. The result's ``status`` is "ok" when every policy ended
    ok or skipped, else "failed". ``changed`` is true only when rows were
    deleted or partitions dropped; it is always false in check mode.
    """
    log = log or (lambda message: None)
    started = time.monotonic()
    database = current_database(runner)
    results = []
    warnings = []
    for policy in policies:
        policy_started = time.monotonic()
        run = _PolicyRun(runner, policy, options, log)
        statement_log = runner.would_execute if runner.check_mode else runner.executed_commands
        first_statement = len(statement_log)
        try:
            run.run(database)
        except NotFoundError as error:
            if policy["optional"]:
                run.result["status"] = "skipped"
                warnings.append("Skipped optional %s: %s" % (policy["kind"] + " policy", error))
            else:
                run.result.update(status="failed", error=str(error))
        except LockTimeoutError as error:
            run.result.update(status="lock_timeout", error=str(error))
        except TradeopsError as error:
            run.result.update(status="failed", error=str(error))
        except psycopg2.Error as error:
            run.result.update(status="failed", error="Retention on table \"%s\" failed: %s"
                              % (run.name, describe_db_error(error)), sqlstate=sqlstate_of(error))
        run.result["statements"] = statement_log[first_statement:]
        run.result["duration_ms"] = elapsed_ms(policy_started)
        if run.result["status"] not in ("ok", "skipped"):
            log("policy on %s: %s" % (run.name, run.result["error"]))
        results.append(run.result)

    summary = {"policies": results, "warnings": warnings, "duration_ms": elapsed_ms(started)}
    if runner.check_mode:
        summary["rows_to_delete"] = sum(r.get("rows_to_delete", 0) for r in results)
        summary["partitions_to_drop"] = sum(len(r.get("partitions_to_drop", [])) for r in results)
        summary["would_execute"] = list(runner.would_execute)
        summary["changed"] = False
    else:
        summary["rows_deleted"] = sum(r.get("rows_deleted", 0) for r in results)
        summary["partitions_dropped"] = sum(len(r.get("partitions_dropped", [])) for r in results)
        summary["executed_commands"] = list(runner.executed_commands)
        summary["changed"] = bool(summary["rows_deleted"] or summary["partitions_dropped"])
    failed = [r for r in results if r["status"] not in ("ok", "skipped")]
    summary["status"] = "failed" if failed else "ok"
    summary["failed_tables"] = [r["table"] for r in failed]
    return summary
