#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: VACUUM, ANALYZE and REINDEX the trading database, with reports."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_maintenance
short_description: VACUUM, ANALYZE and REINDEX PostgreSQL tables while writes go on, and report index use and bloat
description:
  - Runs, in this order, VACUUM with ANALYZE of I(vacuum_tables), the handling of invalid indexes,
    C(REINDEX INDEX) of I(reindex_indexes), C(ANALYZE) of I(analyze_tables) and of the whole database when
    I(analyze_database) is set, then the reports.
  - REINDEX runs with C(CONCURRENTLY) by default, which, like VACUUM, takes only a SHARE UPDATE EXCLUSIVE lock,
    so the application keeps reading and writing the tables.
  - An invalid index (C(pg_index.indisvalid = false)) is found in every run. A leftover of an interrupted
    C(REINDEX CONCURRENTLY) is named after the original index with C(_ccnew) or C(_ccold) and a number.
    With I(invalid_indexes=rebuild) leftovers are dropped, because the original index is still in place,
    and other invalid indexes are rebuilt with REINDEX.
  - Unknown tables and indexes fail the module before any command runs.
  - A command that fails later is recorded in I(steps) and I(errors), the other commands still run, and the
    module fails at the end.
version_added: "1.0.0"
author:
  - tradeops developers
options:
  vacuum_tables:
    description: Tables for VACUUM with the ANALYZE option.
    type: list
    elements: str
    default: []
  analyze_tables:
    description: Tables for C(ANALYZE) alone.
    type: list
    elements: str
    default: []
  analyze_database:
    description: Run C(ANALYZE) on every table of the database after the other steps.
    type: bool
    default: false
  reindex_indexes:
    description: Indexes for C(REINDEX INDEX).
    type: list
    elements: str
    default: []
  concurrently:
    description:
      - Use C(REINDEX INDEX CONCURRENTLY) and C(DROP INDEX CONCURRENTLY).
      - When false, REINDEX holds a SHARE lock that blocks writes to the table until it ends.
    type: bool
    default: true
  invalid_indexes:
    description:
      - What to do with invalid indexes of I(schema).
      - C(report) lists them in I(invalid_indexes_found) and I(reports.invalid_indexes).
      - C(rebuild) also drops REINDEX leftovers (C(_ccnew), C(_ccold)) and rebuilds other invalid indexes.
        A rebuild of a unique index over duplicate rows fails again; the failure is reported and the copy
        that the failed attempt created is dropped.
    type: str
    choices: [report, rebuild]
    default: report
  reports:
    description:
      - Reports to return.
      - C(unused_indexes) lists valid indexes with no scan since the statistics were reset, leaving out
        primary keys, unique indexes and exclusion-constraint indexes.
      - C(sizes) lists table and index sizes.
      - C(table_stats) lists live and dead tuples and the last vacuum, autovacuum, analyze and autoanalyze
        of each table.
      - The list of invalid indexes is always returned.
    type: list
    elements: str
    choices: [unused_indexes, sizes, table_stats]
    default: [unused_indexes, sizes, table_stats]
  schema:
    description: Schema of the tables and indexes.
    type: str
    default: public
  lock_timeout_ms:
    description:
      - C(lock_timeout) for each command in milliseconds; C(0) waits without limit.
      - A command that does not get its lock in time fails and is reported; the others still run.
    type: int
    default: 5000
  login_host:
    description: Host name or IP address of the PostgreSQL server. Empty means the default Unix socket.
    type: str
    default: ""
  login_port:
    description: TCP port of the PostgreSQL server.
    type: int
    default: 5432
  login_user:
    description: Database role to connect as.
    type: str
    default: postgres
  login_password:
    description:
      - Password of I(login_user). When empty, libpq reads the password file (C(PGPASSFILE) or C(~/.pgpass)).
    type: str
    default: ""
  login_db:
    description: Database to connect to.
    type: str
    default: trading_db
  login_unix_socket:
    description: Directory of the Unix socket; it takes precedence over I(login_host).
    type: str
    default: ""
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 10
attributes:
  check_mode:
    description:
      - In check mode the module runs only SELECT statements in a read-only session, returns the reports and
        lists the VACUUM, REINDEX, DROP INDEX and ANALYZE statements in I(would_execute) without running them.
    support: full
  diff_mode:
    description: The module returns no diff.
    support: none
notes:
  - Requires psycopg2 on the host that runs the module (python3-psycopg2 on Debian).
  - In PostgreSQL 15, VACUUM, ANALYZE of a table and REINDEX need the table's owner or a member of the owner
    role; there is no narrower privilege before PostgreSQL 16 and 17 (C(MAINTAIN), C(pg_maintain)). Such a
    role can also alter and drop the tables, so keep its password in a vault and its C(.pgpass) private.
    C(ANALYZE) of the whole database skips, with a warning, the tables the role does not own.
  - C(REINDEX CONCURRENTLY) and C(DROP INDEX CONCURRENTLY) cannot run inside a transaction; the module runs
    every command in autocommit mode.
  - The unused-index report counts scans since C(pg_stat_database.stats_reset), or since the server start when
    the statistics were never reset (I(reports.unused_indexes.since_source)). A crash or an immediate shutdown
    also resets the counters, and scans on a standby are not counted here.
seealso:
  - module: pg_retention
    description: Batch deletes of old rows, which leave dead tuples for VACUUM.
  - name: Routine vacuuming in the PostgreSQL 15 manual
    description: Why and when to VACUUM and ANALYZE.
    link: https://www.postgresql.org/docs/15/routine-vacuuming.html
  - name: REINDEX in the PostgreSQL 15 manual
    description: Rebuilding indexes concurrently, and the invalid indexes a failed rebuild leaves.
    link: https://www.postgresql.org/docs/15/sql-reindex.html
"""

EXAMPLES = r"""
- name: Run the nightly maintenance of the trading database
  pg_maintenance:
    login_host: 127.0.0.1
    login_user: trading_maint
    login_password: "{{ vault_trading_maint_password }}"
    login_db: trading_db
    vacuum_tables: [tick_data, ohlc_candles, orders, positions, order_history]
    reindex_indexes: [idx_tick_data_instrument_time, idx_orders_strategy]
    analyze_database: true
    invalid_indexes: rebuild
  register: maintenance

- name: Show unused indexes and table sizes without changing anything
  pg_maintenance:
    login_db: trading_db
    reports: [unused_indexes, sizes]
  check_mode: true
  register: maintenance_report
"""

RETURN = r"""
changed:
  description: True when any VACUUM, ANALYZE, REINDEX or DROP INDEX ran; these always rewrite something.
    Always false in check mode.
  returned: always
  type: bool
status:
  description: C(ok) when every command succeeded, else C(failed).
  returned: always
  type: str
  sample: ok
database:
  description: Database the module worked on.
  returned: always
  type: str
executed_commands:
  description: Statements that ran, in order.
  returned: when not in check mode
  type: list
  elements: str
  sample: ['VACUUM (ANALYZE) "public"."orders"', 'REINDEX INDEX CONCURRENTLY "public"."idx_orders_strategy"']
would_execute:
  description: Statements that would run, in order.
  returned: in check mode
  type: list
  elements: str
steps:
  description: One entry per command with C(step), C(object), C(status) (C(ok), C(would_run) or C(failed)),
    C(duration_ms), and C(error) when it failed.
  returned: always
  type: list
  elements: dict
errors:
  description: Messages of the commands that failed.
  returned: always
  type: list
  elements: str
invalid_indexes_found:
  description: Invalid indexes found before the REINDEX step, each with C(index), C(table), C(leftover)
    (C(new), C(old) or null), C(leftover_of), C(size_bytes) and C(action) (C(reported), C(dropped),
    C(rebuilt) or C(failed)).
  returned: always
  type: list
  elements: dict
reindexed_valid:
  description: For each index in I(reindex_indexes), whether it is valid after the run.
  returned: always
  type: dict
  sample: {"idx_orders_strategy": true}
reports:
  description: The requested reports, and the invalid indexes left after the run.
  returned: always
  type: dict
  contains:
    unused_indexes:
      description: C(since) (ISO 8601), C(since_source) (C(stats_reset) or C(postmaster_start)) and
        C(indexes), each with C(table), C(index), C(idx_scan), C(size_bytes) and C(size).
      type: dict
      returned: when requested
    sizes:
      description: C(tables), each with C(table_bytes), C(indexes_bytes), C(total_bytes) and C(total), and
        C(indexes), each with C(size_bytes) and C(size); largest first.
      type: dict
      returned: when requested
    table_stats:
      description: Per table C(n_live_tup), C(n_dead_tup), C(dead_ratio), C(last_vacuum), C(last_autovacuum),
        C(last_analyze), C(last_autoanalyze) and the four counts; most dead tuples first.
      type: list
      returned: when requested
    invalid_indexes:
      description: Invalid indexes after the run, as in I(invalid_indexes_found) without C(action).
      type: list
      returned: always
vacuum_ms:
  description: Duration of the VACUUM step in milliseconds.
  returned: always
  type: int
reindex_ms:
  description: Duration of the invalid-index handling and REINDEX step in milliseconds.
  returned: always
  type: int
analyze_ms:
  description: Duration of the ANALYZE step in milliseconds.
  returned: always
  type: int
reports_ms:
  description: Duration of the reports in milliseconds.
  returned: always
  type: int
duration_ms:
  description: Run time of the module's work in milliseconds.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.tradeops_postgres import (
    CONNECTION_ARGUMENT_SPEC, DATABASE_ERRORS, SqlRunner, TradeopsError, connect, describe_db_error)
from ansible.module_utils.tradeops_maintenance import INVALID_INDEX_ACTIONS, REPORTS, MaintenanceOptions, run_maintenance


def main():
    argument_spec = dict(
        vacuum_tables=dict(type="list", elements="str", default=[]),
        analyze_tables=dict(type="list", elements="str", default=[]),
        analyze_database=dict(type="bool", default=False),
        reindex_indexes=dict(type="list", elements="str", default=[]),
        concurrently=dict(type="bool", default=True),
        invalid_indexes=dict(type="str", choices=list(INVALID_INDEX_ACTIONS), default="report"),
        reports=dict(type="list", elements="str", choices=list(REPORTS), default=list(REPORTS)),
        schema=dict(type="str", default="public"),
        lock_timeout_ms=dict(type="int", default=5000),
    )
    argument_spec.update(CONNECTION_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params

    runner = None
    try:
        options = MaintenanceOptions(
            vacuum_tables=params["vacuum_tables"], analyze_tables=params["analyze_tables"],
            analyze_database=params["analyze_database"], reindex_indexes=params["reindex_indexes"],
            concurrently=params["concurrently"], invalid_indexes=params["invalid_indexes"],
            reports=params["reports"], schema=params["schema"], lock_timeout_ms=params["lock_timeout_ms"])
        runner = SqlRunner(connect(params, "tradeops pg_maintenance"), check_mode=module.check_mode)
        result = run_maintenance(runner, options)
    except TradeopsError as error:
        module.fail_json(changed=False, status="failed", **error.as_dict())
    except DATABASE_ERRORS as error:
        module.fail_json(changed=False, status="failed",
                         msg="Maintenance failed on database \"%s\": %s" % (params["login_db"], describe_db_error(error)))
    finally:
        if runner is not None:
            runner.close()

    for row in result["invalid_indexes_found"]:
        if row["action"] in ("reported", "failed"):
            module.warn("Index \"%s\" on table \"%s\" is invalid (%s)." % (
                row["index"], row["table"], row["action"]))
    if result["status"] != "ok":
        module.fail_json(msg="Maintenance failed: %s" % " ".join(result["errors"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
