#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: prove that a tradeops database backup restores, in a scratch database."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_backup_verify
short_description: Restore a tradeops PostgreSQL backup into a scratch database and check it
description:
  - Verifies one backup written by the tradeops backup job (a pg_dump custom-format archive, optionally compressed
    to C(.dump.zst) or C(.dump.gz), with its manifest C(<file>.manifest.json)). A pg_dump tar archive is verified
    too; a plain SQL dump is rejected as an unsupported format.
  - "The checks run in this order: C(file) exists; C(manifest) is valid; C(size) and C(sha256) match the manifest;
    C(format) is custom or tar; C(archive_list) (C(pg_restore --list)) lists the archive, with data for every
    table of the manifest; C(restore) into a new scratch database with
    C(pg_restore --exit-on-error --no-owner --no-privileges); C(tables) of the listing all exist after the restore;
    C(required_tables) exist; C(row_counts) (exact C(count(*)) of each table) equal the manifest's counts;
    C(amcheck) (C(bt_index_check) on every restored B-tree index); C(record) is written."
  - pg_restore never runs with C(--create), so an archive made with C(pg_dump --create) is still restored into the
    scratch database and never into the database it names.
  - A compressed archive is decompressed through a pipe, or into a temporary file in I(work_dir) when I(jobs) is
    greater than 1, because a parallel restore needs a seekable file. The exit status of every stage is checked.
  - A C(critical) or C(strategies) backup holds only some tables, and its foreign keys may reference tables that
    are not in it. Its C(FK CONSTRAINT) entries are left out of the restore (C(pg_restore --use-list)), and the
    C(restore) check says how many.
  - When the size, checksum or format check fails, the file is not restored and the later checks are skipped.
  - Every failed check is collected and the module fails once, with a message that names the backup file, each
    failed check and a C(Hint:).
  - The scratch database is dropped at the end, also when a check fails, unless I(keep_scratch_db) is set.
version_added: "1.0.0"
author:
  - tradeops developers
options:
  path:
    description:
      - Backup file to verify. Mutually exclusive with I(backup_dir).
    type: path
  backup_dir:
    description:
      - Folder of the backups. The module verifies the newest backup of I(kind) that has a manifest, by the time
        stamp in its name.
    type: path
  kind:
    description: Backup kind to pick from I(backup_dir). Required with I(backup_dir).
    type: str
    choices: [full, schema, critical, strategies]
  scratch_db:
    description:
      - Name of the scratch database to restore into. Lower-case letters, digits and underscores only.
      - Empty makes a new unique name C(tradeops_verify_<YYYYmmddHHMMSS>_<6 hex digits>).
      - The name may never be the backup's source database (the manifest's C(database)), I(login_db), C(postgres),
        a template or I(scratch_template).
    type: str
    default: ""
  scratch_db_reuse:
    description:
      - Accept an existing I(scratch_db), which is dropped and made again before the restore.
      - Only a database that an earlier verification created (it carries the module's database comment) is
        replaced. Any other existing database makes the module fail.
    type: bool
    default: false
  scratch_template:
    description:
      - Template of the scratch database.
      - The pg_backup_verify role creates C(tradeops_verify_template), which contains the amcheck extension, so a
        role without superuser rights can run amcheck in the scratch database.
    type: str
    default: template0
  required_tables:
    description:
      - Tables that must exist after the restore, as C(schema.table) or a bare name in schema C(public).
      - In check mode they must appear in the archive listing.
    type: list
    elements: str
    default: []
  compare_row_counts:
    description: Compare the exact row count of each restored table with the manifest's per-table count.
    type: bool
    default: true
  keep_scratch_db:
    description: Keep the scratch database after the checks, for a person to inspect; it is then in I(scratch_db).
    type: bool
    default: false
  jobs:
    description:
      - Parallel pg_restore jobs (C(--jobs)). Used for custom-format archives only; a compressed file is then
        decompressed into I(work_dir) first.
    type: int
    default: 1
  amcheck:
    description:
      - Run amcheck's C(bt_index_check) on every B-tree index of the scratch database.
      - When the scratch database lacks the amcheck extension, the module creates it, which needs a superuser;
        otherwise the check fails. Use a I(scratch_template) with amcheck for roles without superuser rights.
    type: bool
    default: true
  amcheck_heapallindexed:
    description: Also check that every table row has its index entry (C(heapallindexed)); slower, more thorough.
    type: bool
    default: true
  pg_bin_dir:
    description: Folder of pg_restore. Its major version must be at least the version of the pg_dump that made the
      archive.
    type: path
    default: /usr/lib/postgresql/15/bin
  work_dir:
    description: Folder for the decompressed copy of a compressed archive when I(jobs) is greater than 1.
      Empty means the system's temporary folder.
    type: path
    default: ""
  write_record:
    description:
      - Write the verification record C(<file>.verify.json) beside the backup, through a temporary file and a
        rename, with C(status), C(verified_at), C(checks) and C(restore_seconds).
      - The backup job's retention reads its C(status) for the kinds in C(pg_backup_retention_require_verified_kinds).
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
    description:
      - Database role to connect and restore as. It needs C(CREATEDB); the restored objects belong to it.
    type: str
    default: postgres
  login_password:
    description:
      - Password of I(login_user). When empty, libpq reads the password file (C(PGPASSFILE) or C(~/.pgpass)).
      - pg_restore gets it through a temporary password file of mode 0600, never on its command line.
    type: str
    default: ""
  login_db:
    description: Database the module connects to for C(CREATE DATABASE) and C(DROP DATABASE). Nothing is written in
      it.
    type: str
    default: postgres
  login_unix_socket:
    description: Directory of the Unix socket; it takes precedence over I(login_host).
    type: str
    default: ""
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
attributes:
  check_mode:
    description:
      - In check mode the module runs the file, manifest, size, sha256, format and archive listing checks and
        checks that the scratch database name may be used. It creates no database, restores nothing and writes no
        record; the later checks are reported as C(skipped).
    support: full
  diff_mode:
    description: The module returns no diff.
    support: none
notes:
  - Requires psycopg2 on the host that runs the module and the PostgreSQL client programs (pg_restore), plus
    C(zstd) or C(gzip) for compressed backups.
  - The module runs on the host that holds the backup file and restores over the connection options, so the
    scratch database can live on another server than the backup's source.
  - The restore needs as much free space on the database server as the restored data and its indexes.
  - amcheck is not a trusted extension in PostgreSQL 15, so only a superuser can create it. The pg_backup_verify
    role makes a template database with amcheck and grants C(EXECUTE) on C(bt_index_check) to the verifying role;
    scratch databases cloned from it can then be checked without superuser rights.
  - When the module process is killed (for example by a task timeout) while a restore runs, the scratch
    database is left behind; it carries the module's database comment, and I(scratch_db_reuse) can replace it.
seealso:
  - name: pg_restore in the PostgreSQL 15 manual
    description: Options of pg_restore, including --exit-on-error and --jobs.
    link: https://www.postgresql.org/docs/15/app-pgrestore.html
  - name: amcheck in the PostgreSQL 15 manual
    description: B-tree index checks, and who may run them.
    link: https://www.postgresql.org/docs/15/amcheck.html
"""

EXAMPLES = r"""
- name: Verify the newest full backup as the verification role
  pg_backup_verify:
    backup_dir: /opt/backups/postgres
    kind: full
    login_host: 127.0.0.1
    login_user: trading_verify
    login_password: "{{ vault_trading_verify_password }}"
    scratch_template: tradeops_verify_template
    required_tables: [public.orders, public.positions, public.strategies]
    jobs: 2
  register: verification

- name: Check one backup file without restoring it
  pg_backup_verify:
    path: /opt/backups/postgres/full_backup_20250101T003000Z.dump
  check_mode: true

- name: Restore a backup for a person to look at, as the postgres superuser
  pg_backup_verify:
    path: /opt/backups/postgres/critical_backup_20250101T003000Z.dump
    scratch_db: trading_db_inspect
    keep_scratch_db: true
    write_record: false
  become: true
  become_user: postgres
"""

RETURN = r"""
changed:
  description: True only when the module wrote a verification record C(<file>.verify.json). Always false in check
    mode and with I(write_record=false).
  returned: always
  type: bool
status:
  description: C(ok) when no check failed, else C(failed).
  returned: always
  type: str
  sample: ok
backup:
  description: Absolute path of the backup file verified.
  returned: always
  type: str
  sample: /opt/backups/postgres/full_backup_20250101T003000Z.dump
kind:
  description: Backup kind from the manifest, or null without a valid manifest.
  returned: always
  type: str
  sample: full
source_database:
  description: Database the backup was taken from, from the manifest.
  returned: always
  type: str
  sample: trading_db
checks:
  description: Every check in order, each with C(name), C(status) (C(ok), C(failed) or C(skipped)) and C(detail).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "sha256", "status": "ok", "detail": "9f2c..."}]
tables:
  description: Per table (C(schema.table)), the C(expected) row count from the manifest and the C(restored) count
    (null when the table is missing). Empty when the row counts were not compared.
  returned: always
  type: dict
  sample: {"public.orders": {"expected": 3000, "restored": 3000}}
scratch_db:
  description: The scratch database restored into, or null when none was created. It no longer exists unless
    I(keep_scratch_db) is set.
  returned: always
  type: str
record:
  description: Path of the verification record written, or null.
  returned: always
  type: str
restore_seconds:
  description: Duration of pg_restore (and the decompression) in seconds, or null when no restore ran.
  returned: always
  type: float
total_seconds:
  description: Duration of the whole verification in seconds.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.tradeops_postgres import (
    CONNECTION_ARGUMENT_SPEC, DATABASE_ERRORS, TradeopsError, describe_db_error)
from ansible.module_utils.tradeops_verify import KIND_PREFIXES, VerifyOptions, verify_backup


def main():
    argument_spec = dict(
        path=dict(type="path"),
        backup_dir=dict(type="path"),
        kind=dict(type="str", choices=list(KIND_PREFIXES)),
        scratch_db=dict(type="str", default=""),
        scratch_db_reuse=dict(type="bool", default=False),
        scratch_template=dict(type="str", default="template0"),
        required_tables=dict(type="list", elements="str", default=[]),
        compare_row_counts=dict(type="bool", default=True),
        keep_scratch_db=dict(type="bool", default=False),
        jobs=dict(type="int", default=1),
        amcheck=dict(type="bool", default=True),
        amcheck_heapallindexed=dict(type="bool", default=True),
        pg_bin_dir=dict(type="path", default="/usr/lib/postgresql/15/bin"),
        work_dir=dict(type="path", default=""),
        write_record=dict(type="bool", default=True),
    )
    argument_spec.update(CONNECTION_ARGUMENT_SPEC)
    argument_spec["login_db"] = dict(type="str", default="postgres")
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("path", "backup_dir")],
        required_one_of=[("path", "backup_dir")],
        required_by={"backup_dir": "kind"},
        supports_check_mode=True,
    )
    params = module.params

    try:
        options = VerifyOptions(
            path=params["path"], backup_dir=params["backup_dir"], kind=params["kind"],
            scratch_db=params["scratch_db"], scratch_db_reuse=params["scratch_db_reuse"],
            scratch_template=params["scratch_template"], required_tables=params["required_tables"],
            compare_row_counts=params["compare_row_counts"], keep_scratch_db=params["keep_scratch_db"],
            jobs=params["jobs"], amcheck=params["amcheck"],
            amcheck_heapallindexed=params["amcheck_heapallindexed"], pg_bin_dir=params["pg_bin_dir"],
            work_dir=params["work_dir"], write_record=params["write_record"] and not module.check_mode)
        result = verify_backup(params, options, check_mode=module.check_mode)
    except TradeopsError as error:
        module.fail_json(changed=False, status="failed", **error.as_dict())
    except DATABASE_ERRORS as error:
        module.fail_json(changed=False, status="failed",
                         msg="Backup verification failed: %s Hint: check the verifying role's privileges."
                         % describe_db_error(error))

    result["changed"] = result["record"] is not None
    if result["status"] != "ok":
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
