#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: delete trading data past its retention limit."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_retention
short_description: Delete PostgreSQL rows past their retention limit in short batches
description:
  - Applies a list of retention policies to tables of the trading database, one policy after another.
  - An age policy deletes the rows whose I(time_column) is older than the cut-off, which is the current time minus I(max_age).
  - A keep-newest policy keeps the newest I(keep_newest) rows per value of I(partition_by), ordered by
    I(order_by), and deletes the rest.
  - Rows are deleted in batches of I(batch_size) rows. Each batch is its own transaction with
    C(SET LOCAL lock_timeout) and C(SET LOCAL statement_timeout), so application writes wait at most
    I(lock_timeout_ms) for a batch. A batch that does not get its lock in time, or that loses a deadlock,
    is retried I(lock_retries) times with a doubling delay, and then the policy is reported as
    C(lock_timeout).
  - On a table that is range-partitioned on the age policy's time column, partitions whose upper bound
    is at or before the cut-off are detached (C(DETACH PARTITION CONCURRENTLY) where PostgreSQL allows
    it) and dropped. Rows past the cut-off in the other partitions are deleted in batches.
  - A policy that fails is reported and the module goes on with the next one, then fails at the end.
version_added: "1.0.0"
author:
  - tradeops developers
options:
  policies:
    description:
      - Retention policies, applied in list order.
      - "An age policy has the keys C(table), C(time_column) (a date, timestamp or timestamptz column)
        and C(max_age): whole numbers with units, such as C(30 days) or C(1 day 12 hours). Units:
        seconds, minutes, hours, days, weeks, months, years. The value is bound as an interval
        parameter."
      - "A keep-newest policy has the keys C(table), C(keep_newest) (at least 1), C(partition_by)
        (a column, or a list of columns) and C(order_by) (the column that orders rows newest first)."
      - "Either kind may add C(optional: true), which turns a missing table into a warning, and
        C(schema), which overrides I(schema) for that policy."
      - Names are matched exactly, case included, and quoted as identifiers. Names containing C(%)
        are rejected.
    type: list
    elements: dict
    required: true
  schema:
    description: Schema of the tables, unless a policy sets its own.
    type: str
    default: public
  batch_size:
    description: Rows deleted per transaction.
    type: int
    default: 5000
  lock_timeout_ms:
    description:
      - C(lock_timeout) for each batch, detach and drop, in milliseconds. This is the longest time an
        application write can wait behind the cleanup.
    type: int
    default: 2000
  statement_timeout_ms:
    description: C(statement_timeout) for each batch, detach and drop, in milliseconds.
    type: int
    default: 60000
  lock_retries:
    description: Extra attempts for a batch, detach or drop after a lock timeout or a deadlock.
    type: int
    default: 3
  retry_delay_ms:
    description: Delay before the first retry in milliseconds; it doubles with each further retry.
    type: int
    default: 500
  detach_concurrently:
    description:
      - Detach expired partitions with C(DETACH PARTITION ... CONCURRENTLY), which does not block writes to
        the partitioned table.
      - PostgreSQL 15 does not allow it when the table has a default partition; then the module uses a plain
        C(DETACH PARTITION), which takes an ACCESS EXCLUSIVE lock for at most I(lock_timeout_ms) of waiting.
    type: bool
    default: true
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
      - In check mode the module runs only SELECT statements in a read-only session. It returns the rows and
        partitions each policy would remove (counted with SELECT count) and the statements in I(would_execute).
      - No DELETE, DETACH or DROP runs, not even in a transaction that is rolled back.
    support: full
  diff_mode:
    description: The module returns no diff.
    support: none
notes:
  - Requires psycopg2 on the host that runs the module (python3-psycopg2 on Debian).
  - The connecting role needs DELETE on the tables. Dropping a partition needs ownership of the partitioned
    table, which in PostgreSQL 15 means being its owner or a member of the owner role.
  - A keep-newest batch ranks the rows again each time, so rows inserted meanwhile are ranked too. Rows of a
    key that another session deletes during the run may leave that key with fewer than I(keep_newest) rows.
  - Rows inserted with an old timestamp while the policy runs may stay until the next run.
  - An interrupted C(DETACH PARTITION CONCURRENTLY) leaves the partition pending detach; the next run
    completes it with C(DETACH PARTITION ... FINALIZE) before dropping it.
  - The cut-off is computed once per policy, at its start, in the session time zone of the server.
seealso:
  - module: pg_maintenance
    description: VACUUM, ANALYZE and REINDEX of the same tables, for instance after a large cleanup.
  - name: DELETE in the PostgreSQL 15 manual
    description: The statement that each batch runs.
    link: https://www.postgresql.org/docs/15/sql-delete.html
  - name: Table partitioning in the PostgreSQL 15 manual
    description: Partition maintenance with DETACH PARTITION.
    link: https://www.postgresql.org/docs/15/ddl-partitioning.html
"""

EXAMPLES = r"""
- name: Delete trading data past its retention limit
  pg_retention:
    login_host: 127.0.0.1
    login_user: trading_maint
    login_password: "{{ vault_trading_maint_password }}"
    login_db: trading_db
    batch_size: 5000
    lock_timeout_ms: 2000
    policies:
      - table: tick_data
        time_column: time
        max_age: 30 days
      - table: order_book_snapshots
        time_column: time
        max_age: 7 days
      - table: backtest_results
        keep_newest: 100
        partition_by: strategy_id
        order_by: created_at
      - table: system_logs
        time_column: created_at
        max_age: 90 days
        optional: true
  register: retention

- name: Show how many rows would go, without deleting any
  pg_retention:
    login_db: trading_db
    policies:
      - table: tick_data
        time_column: time
        max_age: 30 days
  check_mode: true
  register: preview
"""

RETURN = r"""
changed:
  description: True when rows were deleted or partitions dropped. Always false in check mode.
  returned: always
  type: bool
status:
  description: C(ok) when every policy ended C(ok) or C(skipped), else C(failed).
  returned: always
  type: str
  sample: ok
rows_deleted:
  description: Rows deleted by batch deletes, all policies together (rows of dropped partitions not included).
  returned: when not in check mode
  type: int
  sample: 125000
partitions_dropped:
  description: Number of partitions detached and dropped, all policies together.
  returned: when not in check mode
  type: int
  sample: 2
rows_to_delete:
  description: Rows that batch deletes would remove, all policies together.
  returned: in check mode
  type: int
partitions_to_drop:
  description: Number of partitions that would be detached and dropped.
  returned: in check mode
  type: int
executed_commands:
  description: Statements that ran, with values filled in. A batch statement that ran several times is listed once.
  returned: when not in check mode
  type: list
  elements: str
would_execute:
  description: Statements that would run, with values filled in. A batch statement repeats until it deletes
    fewer than I(batch_size) rows.
  returned: in check mode
  type: list
  elements: str
failed_tables:
  description: Tables whose policy ended C(failed) or C(lock_timeout).
  returned: always
  type: list
  elements: str
duration_ms:
  description: Run time of the module's work in milliseconds.
  returned: always
  type: int
policies:
  description: One entry per policy, in order.
  returned: always
  type: list
  elements: dict
  contains:
    table:
      description: Table name.
      type: str
    schema:
      description: Schema name.
      type: str
    kind:
      description: C(age) or C(keep_newest).
      type: str
    status:
      description: C(ok), C(skipped) (optional table missing), C(failed) or C(lock_timeout).
      type: str
    error:
      description: Why the policy failed.
      type: str
      returned: when status is failed or lock_timeout
    cutoff:
      description: Cut-off time of an age policy (ISO 8601); older rows are removed.
      type: str
      returned: for age policies that reached the database
    rows_deleted:
      description: Rows deleted by this policy's batches.
      type: int
      returned: when not in check mode
    rows_to_delete:
      description: Rows this policy's batches would delete.
      type: int
      returned: in check mode
    partitions_dropped:
      description: Dropped partitions, each with C(partition), C(upper_bound) and C(rows).
      type: list
      returned: when not in check mode
    partitions_to_drop:
      description: Partitions that would be dropped, each with C(partition), C(upper_bound) and C(rows).
      type: list
      returned: in check mode
    batches:
      description: DELETE transactions that ran.
      type: int
    retries:
      description: Retries after lock timeouts or deadlocks.
      type: int
    statements:
      description: This policy's part of I(executed_commands) or I(would_execute).
      type: list
    duration_ms:
      description: Run time of this policy in milliseconds.
      type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.tradeops_postgres import (
    CONNECTION_ARGUMENT_SPEC, DATABASE_ERRORS, SqlRunner, TradeopsError, connect, describe_db_error)
from ansible.module_utils.tradeops_retention import RetentionOptions, normalize_policies, run_retention


def main():
    argument_spec = dict(
        policies=dict(type="list", elements="dict", required=True),
        schema=dict(type="str", default="public"),
        batch_size=dict(type="int", default=5000),
        lock_timeout_ms=dict(type="int", default=2000),
        statement_timeout_ms=dict(type="int", default=60000),
        lock_retries=dict(type="int", default=3),
        retry_delay_ms=dict(type="int", default=500),
        detach_concurrently=dict(type="bool", default=True),
    )
    argument_spec.update(CONNECTION_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params

    runner = None
    try:
        options = RetentionOptions(
            batch_size=params["batch_size"], lock_timeout_ms=params["lock_timeout_ms"],
            statement_timeout_ms=params["statement_timeout_ms"], lock_retries=params["lock_retries"],
            retry_delay_ms=params["retry_delay_ms"], detach_concurrently=params["detach_concurrently"],
            schema=params["schema"])
        policies = normalize_policies(params["policies"], params["schema"])
        runner = SqlRunner(connect(params, "tradeops pg_retention"), check_mode=module.check_mode)
        result = run_retention(runner, policies, options)
    except TradeopsError as error:
        module.fail_json(changed=False, status="failed", **error.as_dict())
    except DATABASE_ERRORS as error:
        module.fail_json(changed=False, status="failed",
                         msg="Retention failed on database \"%s\": %s" % (params["login_db"], describe_db_error(error)))
    finally:
        if runner is not None:
            runner.close()

    for warning in result.pop("warnings"):
        module.warn(warning)
    if result["status"] != "ok":
        module.fail_json(
            msg="Retention failed for tables %s; see the policies entries for each cause."
            % ", ".join('"%s"' % table for table in result["failed_tables"]),
            **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
