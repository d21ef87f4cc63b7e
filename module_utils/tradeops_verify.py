# -*- coding: utf-8 -*-
"""Prove that a tradeops database backup restores: the backup verification logic.

Plain Python 3.9+, no Ansible import: the pg_backup_verify module and the
scheduled job tradeops-verify-backups both call ``verify_backup()``.

A verification compares the file with its manifest ``<file>.manifest.json``
(size, sha256), lists the archive with ``pg_restore --list``, restores it
into a new scratch database with ``pg_restore --exit-on-error --no-owner
--no-privileges`` (never ``--create``, so the archive's own database name
is never used), compares the tables and their exact row counts with the
manifest, runs amcheck's ``bt_index_check`` on every restored B-tree index,
and drops the scratch database again, also when a check fails.

Safety rules, enforced in ``check_scratch_name()``: the scratch database is
never the backup's source database (the manifest's ``database``), the
database the session connects to, ``postgres``, a template, or an existing
database that this code did not create earlier (``scratch_db_reuse``
accepts only a database that carries ``SCRATCH_COMMENT``).
"""

from __future__ import absolute_import, division, print_function

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

try:
    from ansible.module_utils.tradeops_postgres import (
        ConfigError, NotFoundError, TradeopsError, connect, describe_db_error, sqlstate_of)
except ImportError:
    from tradeops_postgres import (  # noqa: F401 - the job program imports from /usr/local/lib/tradeops/python
        ConfigError, NotFoundError, TradeopsError, connect, describe_db_error, sqlstate_of)

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:  # pragma: no cover - tradeops_postgres.connect() reports it
    psycopg2 = None
    sql = None

# Database backup kinds and their file name prefixes, as the pg_backup
# worker writes them: <prefix>_<YYYYmmddTHHMMSSZ>.dump[.zst|.gz].
KIND_PREFIXES = {
    "full": "full_backup",
    "schema": "schema_backup",
    "critical": "critical_backup",
    "strategies": "strategies",
}
MANIFEST_SUFFIX = ".manifest.json"
RECORD_SUFFIX = ".verify.json"
RECORD_VERSION = 1

# Databases that a verification never creates, restores into or drops.
PROTECTED_DATABASES = ("postgres", "template0", "template1")
SCRATCH_PREFIX = "tradeops_verify_"
SCRATCH_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Set on every scratch database this code creates; scratch_db_reuse drops
# an existing database only when it carries this comment.
SCRATCH_COMMENT = "tradeops backup verification scratch database; dropped after each check"
AMCHECK_SCHEMA = "tradeops_verify"

# External compressions by file name suffix, with the command that
# decompresses the file to stdout.
DECOMPRESSORS = {
    ".zst": ("zstd", ["-q", "-d", "-c"]),
    ".gz": ("gzip", ["-d", "-c"]),
}

# Kinds that dump only some tables. Their foreign keys may reference
# tables outside the archive, which pg_restore --exit-on-error cannot
# create, so their FK CONSTRAINT entries are left out of the restore.
PARTIAL_KINDS = ("critical", "strategies")
FK_ENTRY_RE = re.compile(r"^\d+; \d+ \d+ FK CONSTRAINT ")

CHECK_NAMES = ("file", "manifest", "size", "sha256", "format", "archive_list", "restore", "tables",
               "required_tables", "row_counts", "amcheck", "record")

# What to do next, by the first failed check.
HINTS = {
    "file": "Check the path, or run the backup job (tradeops-db-backup) to make a backup first.",
    "manifest": "Only backups that the tradeops backup job finished have a valid manifest; take a new backup.",
    "size": "The file was truncated or changed after the backup finished; take a new backup and check the disk.",
    "sha256": "The file changed after the backup finished (disk or copy error); take a new backup.",
    "format": "Verify pg_dump custom-format (-Fc) or tar (-Ft) archives; a plain SQL dump cannot be checked "
              "safely because psql would run its \\connect lines.",
    "archive_list": "The archive is damaged or was written by a newer pg_dump; take a new backup.",
    "restore": "Read the pg_restore error above; a backup that does not restore must be replaced: "
               "take a new backup now.",
    "tables": "The archive lacks tables or contains others than its manifest; compare pg_restore --list with "
              "the manifest.",
    "required_tables": "Check required_tables, or the tables that the backup kind dumps.",
    "row_counts": "The restored rows differ from the counts taken in the dump's snapshot; take a new backup.",
    "amcheck": "Create the scratch database from a template that has amcheck (scratch_template), or run the "
               "verification as a superuser.",
    "record": "Make the backup folder writable by the user that verifies the backups.",
}


# --------------------------------------------------------------------------
# Options and result


class VerifyOptions(object):
    """Settings of one verification; see the pg_backup_verify module for each."""

    def __init__(self, path=None, backup_dir=None, kind=None, scratch_db=None, scratch_db_reuse=False,
                 scratch_template="template0", required_tables=None, compare_row_counts=True,
                 keep_scratch_db=False, jobs=1, amcheck=True, amcheck_heapallindexed=True,
                 pg_bin_dir="/usr/lib/postgresql/15/bin", work_dir=None, write_record=True):
        if bool(path) == bool(backup_dir):
            raise ConfigError("Invalid options: set either path or backup_dir with kind.",
                              hint="Pass path=<backup file>, or backup_dir=<folder> and kind=full.")
        if backup_dir and kind not in KIND_PREFIXES:
            raise ConfigError("Invalid backup kind \"%s\": allowed are %s." % (kind, ", ".join(KIND_PREFIXES)),
                              hint="Pass kind with backup_dir.")
        if jobs < 1:
            raise ConfigError("Invalid jobs %d: it must be at least 1." % jobs)
        if scratch_db is not None and scratch_db != "" and not SCRATCH_NAME_RE.fullmatch(scratch_db):
            raise ConfigError(
                "Invalid scratch database name \"%s\": use lower-case letters, digits and underscores, "
                "at most 63 characters." % scratch_db,
                hint="Leave scratch_db empty for a new unique name such as %s<stamp>_<random>." % SCRATCH_PREFIX)
        self.path = path
        self.backup_dir = backup_dir
        self.kind = kind
        self.scratch_db = scratch_db or None
        self.scratch_db_reuse = scratch_db_reuse
        self.scratch_template = scratch_template or "template0"
        self.required_tables = [qualify_table(name) for name in (required_tables or [])]
        self.compare_row_counts = compare_row_counts
        self.keep_scratch_db = keep_scratch_db
        self.jobs = jobs
        self.amcheck = amcheck
        self.amcheck_heapallindexed = amcheck_heapallindexed
        self.pg_bin_dir = pg_bin_dir
        self.work_dir = work_dir or None
        self.write_record = write_record


def qualify_table(name):
    """Return "schema.table" for a table name; a bare name is in schema public."""
    return name if "." in name else "public." + name


class Verification(object):
    """The checks of one run, in order, with helpers that record each outcome."""

    def __init__(self, path):
        self.path = path
        self.checks = []
        self.tables = {}
        self.restore_seconds = None
        self.started = time.monotonic()

    def add(self, name, status, detail):
        self.checks.append({"name": name, "status": status, "detail": detail})
        return status == "ok"

    def ok(self, name, detail):
        return self.add(name, "ok", detail)

    def failed(self, name, detail):
        return self.add(name, "failed", detail)

    def skipped(self, name, detail):
        return self.add(name, "skipped", detail)

    def skip_rest(self, detail):
        """Mark every check that has no outcome yet as skipped."""
        done = {check["name"] for check in self.checks}
        for name in CHECK_NAMES:
            if name not in done and name != "record":
                self.skipped(name, detail)

    def failures(self):
        return [check for check in self.checks if check["status"] == "failed"]

    @property
    def status(self):
        return "failed" if self.failures() else "ok"

    def message(self):
        """Return the one failure message: the backup, every failed check, and a hint."""
        failures = self.failures()
        if not failures:
            return None
        lines = "; ".join("%s: %s" % (check["name"], check["detail"]) for check in failures)
        hint = HINTS.get(failures[0]["name"], "")
        return "Backup \"%s\" failed verification (%d failed checks): %s Hint: %s" % (
            self.path, len(failures), lines, hint)

    def result(self, scratch_db, record_path, manifest):
        return {
            "backup": self.path,
            "status": self.status,
            "checks": self.checks,
            "tables": self.tables,
            "scratch_db": scratch_db,
            "source_database": (manifest or {}).get("database"),
            "kind": (manifest or {}).get("kind"),
            "record": record_path,
            "restore_seconds": self.restore_seconds,
            "total_seconds": round(time.monotonic() - self.started, 3),
            "msg": self.message() or "Backup \"%s\" verified: every check passed." % self.path,
        }


# --------------------------------------------------------------------------
# Files


def backup_name_pattern(kind):
    """Return the regex of the backup file names of a kind."""
    return re.compile(r"%s_(?P<stamp>\d{8}T\d{6}Z)\.dump(?:\.zst|\.gz)?" % re.escape(KIND_PREFIXES[kind]))


def newest_backup(backup_dir, kind):
    """Return the path of the newest backup of a kind that has a manifest, or raise NotFoundError."""
    pattern = backup_name_pattern(kind)
    try:
        names = os.listdir(backup_dir)
    except OSError as error:
        raise NotFoundError("Failed to list the backup folder \"%s\": %s." % (backup_dir, error.strerror),
                            hint="Check backup_dir and that this user may read it.")
    found = []
    for name in names:
        match = pattern.fullmatch(name)
        if match and name + MANIFEST_SUFFIX in names:
            found.append((match.group("stamp"), name))
    if not found:
        raise NotFoundError("No %s backup with a manifest found in \"%s\"." % (kind, backup_dir),
                            hint="Run the backup job (tradeops-db-backup --kind %s) first." % kind)
    return os.path.join(backup_dir, max(found)[1])


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path):
    """Return the manifest of a backup, or raise ValueError with the reason."""
    manifest_path = path + MANIFEST_SUFFIX
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise ValueError("manifest \"%s\" not found" % manifest_path)
    except OSError as error:
        raise ValueError("cannot read manifest \"%s\": %s" % (manifest_path, error.strerror))
    except ValueError as error:
        raise ValueError("manifest \"%s\" is not valid JSON: %s" % (manifest_path, error))
    if not isinstance(manifest, dict):
        raise ValueError("manifest \"%s\" is not a JSON object" % manifest_path)
    problems = []
    if manifest.get("manifest_version") != 1:
        problems.append("manifest_version is %r, expected 1" % manifest.get("manifest_version"))
    if manifest.get("file") != os.path.basename(path):
        problems.append("it names file \"%s\", not \"%s\"" % (manifest.get("file"), os.path.basename(path)))
    if not isinstance(manifest.get("size_bytes"), int) or not isinstance(manifest.get("sha256"), str):
        problems.append("size_bytes or sha256 is missing")
    if not isinstance(manifest.get("tables", {}), dict):
        problems.append("tables is not an object")
    if problems:
        raise ValueError("manifest \"%s\" is invalid: %s" % (manifest_path, "; ".join(problems)))
    return manifest


def decompressor_for(path):
    """Return the argv that writes the decompressed file to stdout, or None for an uncompressed file."""
    for suffix, (tool, args) in DECOMPRESSORS.items():
        if path.endswith(suffix):
            program = shutil.which(tool) or "/usr/bin/" + tool
            return [program] + args + [path]
    return None


def read_head(path, decompress, size=512):
    """Return the first bytes of the (decompressed) archive."""
    if decompress is None:
        with open(path, "rb") as handle:
            return handle.read(size)
    process = subprocess.Popen(decompress, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        head = process.stdout.read(size)
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()
    return head


def archive_format(head):
    """Return "custom", "tar", "plain" or None from the first bytes of an archive."""
    if head.startswith(b"PGDMP"):
        return "custom"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    text = head.lstrip()
    if text.startswith(b"--") or text[:20].upper().startswith((b"SET ", b"CREATE ", b"BEGIN", b"\\")):
        return "plain"
    return None


def write_record(path, record):
    """Write <path>.verify.json through a temporary file and a rename; return its path."""
    record_path = path + RECORD_SUFFIX
    directory, name = os.path.split(record_path)
    fd, temp_path = tempfile.mkstemp(prefix=".tmp-" + name + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file 0600; the backups' group reads the record
        # like the manifest.
        os.chmod(temp_path, 0o640)
        os.rename(temp_path, record_path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
    return record_path


def utc_now_text():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# Processes


class StageError(Exception):
    """A process of a pipeline ended with a status other than 0."""


def first_error_line(text):
    """Return the first line that reports an error, else the last line, of a program's stderr."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\b(error|fatal|FATAL|ERROR)\b", line):
            return line
    return lines[-1] if lines else ""


def describe_exit(name, code, stderr):
    if code < 0:
        status = "was killed by signal %s" % signal.Signals(-code).name
    else:
        status = "exited with code %d" % code
    detail = first_error_line(stderr)
    return "%s %s%s" % (name, status, ": " + detail if detail else "")


def run_pipeline(decompress, argv, env, input_path, reads_all=True):
    """Run argv on the archive, through the decompressor when there is one; return its stdout.

    Raises StageError naming the stage that failed. Every stage's exit
    status is checked, and the consumer's failure is reported first. A
    decompressor killed by SIGPIPE is accepted only when the consumer
    succeeded and need not read the whole stream (``reads_all`` false):
    ``pg_restore --list`` stops after the archive's table of contents.
    """
    if decompress is None:
        completed = subprocess.run(argv + [input_path], env=env, capture_output=True, encoding="utf-8",
                                   errors="replace", check=False)
        if completed.returncode != 0:
            raise StageError(describe_exit(os.path.basename(argv[0]), completed.returncode, completed.stderr))
        return completed.stdout
    with tempfile.TemporaryFile() as decompress_stderr:
        producer = subprocess.Popen(decompress, stdout=subprocess.PIPE, stderr=decompress_stderr)
        try:
            consumer = subprocess.Popen(argv, stdin=producer.stdout, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, encoding="utf-8",
                                        errors="replace")
        except OSError:
            producer.kill()
            producer.wait()
            raise
        # Only the consumer holds the read end now, so its early exit
        # reaches the decompressor as SIGPIPE.
        producer.stdout.close()
        stdout, stderr = consumer.communicate()
        producer.wait()
        decompress_stderr.seek(0)
        producer_error = decompress_stderr.read().decode("utf-8", "replace")
    if consumer.returncode != 0:
        raise StageError(describe_exit(os.path.basename(argv[0]), consumer.returncode, stderr))
    if producer.returncode == -signal.SIGPIPE and not reads_all:
        return stdout
    if producer.returncode != 0:
        raise StageError(describe_exit(os.path.basename(decompress[0]), producer.returncode, producer_error))
    return stdout


def decompress_to_file(decompress, directory):
    """Write the decompressed archive to a temporary file; return its path (the caller removes it)."""
    fd, temp_path = tempfile.mkstemp(prefix="tradeops-verify-", suffix=".dump", dir=directory)
    with os.fdopen(fd, "wb") as handle:
        completed = subprocess.run(decompress, stdout=handle, stderr=subprocess.PIPE, check=False)
    if completed.returncode != 0:
        os.unlink(temp_path)
        raise StageError(describe_exit(os.path.basename(decompress[0]), completed.returncode,
                                       completed.stderr.decode("utf-8", "replace")))
    return temp_path


# TOC lines of pg_restore --list: "<id>; <catalog oid> <oid> TABLE DATA <schema> <name> <owner>"
TOC_ENTRY_RE = re.compile(r"^\d+; \d+ \d+ (?P<desc>TABLE DATA|TABLE) (?P<schema>\S+) (?P<name>\S+)")
TOC_DBNAME_RE = re.compile(r"^;\s+dbname: (?P<name>.*)$", re.MULTILINE)


def parse_listing(listing):
    """Return the tables, the tables with data, and the source database name of a TOC listing."""
    tables, data = set(), set()
    for line in listing.splitlines():
        match = TOC_ENTRY_RE.match(line)
        if not match:
            continue
        name = "%s.%s" % (match.group("schema"), match.group("name"))
        (tables if match.group("desc") == "TABLE" else data).add(name)
    dbname = TOC_DBNAME_RE.search(listing)
    return tables, data, dbname.group("name").strip() if dbname else None


# --------------------------------------------------------------------------
# Database


class ClientEnvironment(object):
    """libpq settings for pg_restore, with the password in a private temporary password file.

    A password is never put on a command line or into the environment.
    """

    def __init__(self, params):
        self.params = params
        self.passfile = None

    def __enter__(self):
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        env.pop("PGDATABASE", None)
        host = self.params.get("login_unix_socket") or self.params.get("login_host")
        if host:
            env["PGHOST"] = host
        else:
            env.pop("PGHOST", None)
        env["PGPORT"] = str(self.params.get("login_port") or 5432)
        env["PGUSER"] = self.params.get("login_user") or "postgres"
        env["PGCONNECT_TIMEOUT"] = str(self.params.get("connect_timeout") or 10)
        env["PGAPPNAME"] = "tradeops pg_backup_verify"
        if self.params.get("login_password"):
            fd, self.passfile = tempfile.mkstemp(prefix="tradeops-verify-", suffix=".pgpass")
            fields = ["*", "*", "*", "*", self.params["login_password"]]
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(":".join(f.replace("\\", "\\\\").replace(":", "\\:") if i == 4 else f
                                      for i, f in enumerate(fields)) + "\n")
            env["PGPASSFILE"] = self.passfile
        elif self.params.get("passfile"):
            env["PGPASSFILE"] = self.params["passfile"]
        return env

    def __exit__(self, *exc_info):
        if self.passfile:
            try:
                os.unlink(self.passfile)
            except OSError:
                pass
        return False


def database_exists(conn, name):
    with conn.cursor() as cur:
        cur.execute("SELECT datistemplate, shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database"
                    " WHERE datname = %s", (name,))
        return cur.fetchone()


def new_scratch_name():
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
    return "%s%s_%s" % (SCRATCH_PREFIX, stamp, secrets.token_hex(3))


def check_scratch_name(conn, options, name, manifest, login_db):
    """Raise ConfigError when the scratch database may not be used; return True when it exists."""
    forbidden = {db for db in PROTECTED_DATABASES}
    forbidden.add(login_db)
    forbidden.add(options.scratch_template)
    source = (manifest or {}).get("database")
    if source:
        forbidden.add(source)
    if name in forbidden:
        raise ConfigError(
            "Invalid scratch database \"%s\": it is the backup's source database, the connection database, "
            "postgres or a template, which a verification never restores into or drops." % name,
            hint="Leave scratch_db empty for a new unique name.")
    existing = database_exists(conn, name)
    if existing is None:
        return False
    is_template, comment = existing
    if is_template:
        raise ConfigError("Invalid scratch database \"%s\": it is a template database." % name,
                          hint="Leave scratch_db empty for a new unique name.")
    if not options.scratch_db_reuse:
        raise ConfigError(
            "Scratch database \"%s\" already exists; a verification never restores into or drops a database "
            "it did not create." % name,
            hint="Leave scratch_db empty for a new unique name, or set scratch_db_reuse: true to replace a "
                 "scratch database left by an earlier verification.")
    if comment != SCRATCH_COMMENT:
        raise ConfigError(
            "Scratch database \"%s\" exists but was not made by a backup verification (its comment differs), "
            "so scratch_db_reuse does not replace it." % name,
            hint="Choose another scratch_db, or drop that database yourself if it is really unused.")
    return True


# SQLSTATE of "database is being accessed by other users".
OBJECT_IN_USE = "55006"
DROP_ATTEMPTS = 10
DROP_RETRY_SECONDS = 1.0


def drop_database(conn, name):
    """Drop a scratch database, retrying while other sessions still leave it.

    A plain DROP DATABASE stops the autovacuum workers in the database by
    itself, which a freshly restored database attracts. WITH (FORCE) would
    try to terminate them too, but PostgreSQL 15 lets only members of
    pg_signal_backend do that, which the verifying role is not.
    """
    statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    for attempt in range(1, DROP_ATTEMPTS + 1):
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
            return
        except psycopg2.Error as error:
            if sqlstate_of(error) != OBJECT_IN_USE or attempt == DROP_ATTEMPTS:
                raise TradeopsError(
                    "Failed to drop scratch database \"%s\": %s" % (name, describe_db_error(error)),
                    hint="Find the sessions still connected to it in pg_stat_activity, end them, and drop "
                         "the database as a superuser.")
            time.sleep(DROP_RETRY_SECONDS)


def create_scratch(conn, name, template):
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                     sql.Identifier(template)))
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                                   sql.Literal(SCRATCH_COMMENT)))


def user_tables(cur):
    """Return the ordinary tables whose rows pg_dump writes, as "schema.table", like the backup worker."""
    cur.execute("""
        SELECT n.nspname || '.' || c.relname
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%%'
          AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype = 'e')
        ORDER BY 1
    """)
    return [row[0] for row in cur.fetchall()]


def count_rows(cur, table):
    schema, name = table.split(".", 1)
    cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
    return cur.fetchone()[0]


# --------------------------------------------------------------------------
# The checks


def check_file_and_manifest(run, path):
    """Run the file, manifest, size and sha256 checks; return (manifest or None, whether the file exists)."""
    if not os.path.isfile(path):
        run.failed("file", "backup file \"%s\" not found" % path if not os.path.lexists(path)
                   else "\"%s\" is not a regular file" % path)
        return None, False
    size = os.path.getsize(path)
    run.ok("file", "%d bytes" % size)
    try:
        manifest = load_manifest(path)
    except ValueError as error:
        run.failed("manifest", str(error))
        manifest = None
    else:
        run.ok("manifest", "%s backup of database \"%s\" finished at %s" % (
            manifest.get("kind"), manifest.get("database"), manifest.get("finished_at")))
    if size == 0:
        run.failed("size", "the file is empty (0 bytes)%s" % (
            "; the manifest records %d bytes" % manifest["size_bytes"] if manifest else ""))
        run.skipped("sha256", "the file is empty")
        return manifest, True
    if manifest is None:
        run.skipped("size", "no valid manifest to compare with")
        run.skipped("sha256", "no valid manifest to compare with")
        return None, True
    if size != manifest["size_bytes"]:
        run.failed("size", "the file has %d bytes but its manifest records %d bytes (truncated or changed)"
                   % (size, manifest["size_bytes"]))
        run.skipped("sha256", "the size already differs")
        return manifest, True
    run.ok("size", "%d bytes as in the manifest" % size)
    digest = sha256_of(path)
    if digest != manifest["sha256"]:
        run.failed("sha256", "checksum mismatch: the file's sha256 is %s but its manifest records %s"
                   % (digest, manifest["sha256"]))
    else:
        run.ok("sha256", digest)
    return manifest, True


def check_format(run, path, decompress):
    """Run the format check; return the archive format or None."""
    try:
        head = read_head(path, decompress)
    except OSError as error:
        run.failed("format", "cannot read \"%s\": %s" % (path, error.strerror))
        return None
    found = archive_format(head)
    if found in ("custom", "tar"):
        run.ok("format", "pg_dump %s format%s" % (found, " (compressed: %s)" % os.path.basename(decompress[0])
                                                   if decompress else ""))
        return found
    if found == "plain":
        run.failed("format", "unsupported format: \"%s\" is a plain SQL dump; only pg_dump custom and tar "
                   "archives are verified" % os.path.basename(path))
    elif not head:
        run.failed("format", "unsupported format: the archive is empty after decompression")
    else:
        run.failed("format", "unsupported format: \"%s\" is not a pg_dump archive (no PGDMP or tar header)"
                   % os.path.basename(path))
    return None


def check_listing(run, options, path, decompress, manifest, env):
    """Run pg_restore --list; return (tables, tables with data, listing text) of the archive, or None."""
    argv = [os.path.join(options.pg_bin_dir, "pg_restore"), "--list"]
    try:
        listing = run_pipeline(decompress, argv, env, path, reads_all=False)
    except (StageError, OSError) as error:
        run.failed("archive_list", "pg_restore --list failed: %s" % error)
        return None
    tables, data, dbname = parse_listing(listing)
    expected = set((manifest or {}).get("tables") or {})
    missing = sorted(expected - data)
    entries = len([line for line in listing.splitlines() if line and not line.startswith(";")])
    if entries == 0:
        run.failed("archive_list", "the archive lists no entries")
        return None
    if missing:
        run.failed("archive_list", "the archive has no data for tables of its manifest: %s" % ", ".join(missing))
        return tables, data, listing
    run.ok("archive_list", "%d entries, %d tables, %d with data, dumped from database \"%s\""
           % (entries, len(tables), len(data), dbname))
    return tables, data, listing


def restore_list_without_foreign_keys(listing, directory):
    """Write the TOC listing without its FK CONSTRAINT entries; return (list file path, entries left out)."""
    kept, skipped = [], 0
    for line in listing.splitlines():
        if FK_ENTRY_RE.match(line):
            skipped += 1
            line = ";" + line
        kept.append(line)
    fd, list_path = tempfile.mkstemp(prefix="tradeops-verify-", suffix=".list", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(kept) + "\n")
    return list_path, skipped


def restore_archive(run, options, path, decompress, archive_fmt, scratch, env, listing, partial):
    """Restore the archive into the scratch database; return True when pg_restore succeeded."""
    argv = [os.path.join(options.pg_bin_dir, "pg_restore"), "--exit-on-error", "--no-owner", "--no-privileges",
            "--dbname=" + scratch]
    jobs = options.jobs if archive_fmt == "custom" else 1
    temp_path = None
    list_path = None
    note = ""
    started = time.monotonic()
    try:
        if partial:
            list_path, skipped = restore_list_without_foreign_keys(listing, options.work_dir or tempfile.gettempdir())
            argv.append("--use-list=" + list_path)
            note = "; %d foreign keys left out, because a partial backup lacks the tables they reference" % skipped
        source = path
        if decompress is not None and jobs > 1:
            # Parallel restore needs a seekable file, not a pipe.
            temp_path = decompress_to_file(decompress, options.work_dir or tempfile.gettempdir())
            source, decompress = temp_path, None
        if jobs > 1:
            argv.append("--jobs=%d" % jobs)
        run_pipeline(decompress, argv, env, source)
    except (StageError, OSError) as error:
        run.restore_seconds = round(time.monotonic() - started, 3)
        run.failed("restore", "restore into scratch database \"%s\" failed: %s" % (scratch, error))
        return False
    finally:
        for leftover in (temp_path, list_path):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
    run.restore_seconds = round(time.monotonic() - started, 3)
    run.ok("restore", "restored into \"%s\" in %.3f s%s%s" % (
        scratch, run.restore_seconds, " with %d jobs" % jobs if jobs > 1 else "", note))
    return True


def check_restored(run, options, scratch_conn, listed_tables, manifest):
    """Run the tables, required_tables and row_counts checks in the scratch database."""
    with scratch_conn.cursor() as cur:
        restored = set(user_tables(cur))
        if listed_tables is None:
            run.skipped("tables", "the archive listing failed")
        else:
            missing = sorted(listed_tables - restored)
            if missing:
                run.failed("tables", "tables of the archive missing after the restore: %s" % ", ".join(missing))
            else:
                run.ok("tables", "%d tables restored" % len(restored))
        check_required(run, options, restored, "restored database")

        expected = (manifest or {}).get("tables") or {}
        if not options.compare_row_counts:
            run.skipped("row_counts", "compare_row_counts is false")
            return
        if manifest is None:
            run.skipped("row_counts", "no valid manifest to compare with")
            return
        if not expected:
            run.skipped("row_counts", "the manifest records no table rows (schema-only backup)")
            return
        problems = []
        for table in sorted(expected):
            restored_count = count_rows(cur, table) if table in restored else None
            run.tables[table] = {"expected": expected[table], "restored": restored_count}
            if restored_count is None:
                problems.append("table \"%s\" is missing" % table)
            elif restored_count != expected[table]:
                problems.append("table \"%s\" has %d rows, the manifest records %d"
                                % (table, restored_count, expected[table]))
        if problems:
            run.failed("row_counts", "row count mismatch: " + "; ".join(problems))
        else:
            run.ok("row_counts", "%d tables, %d rows, as in the manifest"
                   % (len(expected), sum(expected.values())))


def check_required(run, options, available, where):
    if not options.required_tables:
        run.skipped("required_tables", "no required_tables given")
        return
    missing = [table for table in options.required_tables if table not in available]
    if missing:
        run.failed("required_tables", "required tables missing from the %s: %s" % (where, ", ".join(missing)))
    else:
        run.ok("required_tables", "all %d present in the %s" % (len(options.required_tables), where))


def check_amcheck(run, options, scratch_conn):
    """Run bt_index_check on every B-tree index of the restored tables."""
    if not options.amcheck:
        run.skipped("amcheck", "amcheck is false")
        return
    with scratch_conn.cursor() as cur:
        cur.execute("SELECT extnamespace::regnamespace::text FROM pg_catalog.pg_extension WHERE extname = 'amcheck'")
        row = cur.fetchone()
        if row is None:
            try:
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(AMCHECK_SCHEMA)))
                cur.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA {}").format(
                    sql.Identifier(AMCHECK_SCHEMA)))
            except psycopg2.Error as error:
                run.failed("amcheck", "cannot create extension \"amcheck\" in the scratch database: %s"
                           % describe_db_error(error))
                return
            schema = AMCHECK_SCHEMA
        else:
            schema = row[0]
        cur.execute("""
            SELECT i.indexrelid, n.nspname || '.' || c.relname
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_catalog.pg_am a ON a.oid = c.relam
            WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_toast%%'
            ORDER BY 2
        """)
        indexes = cur.fetchall()
        check = sql.SQL("SELECT {}.bt_index_check(%s::regclass, %s)").format(sql.Identifier(schema))
        bad = []
        for oid, name in indexes:
            try:
                cur.execute(check, (oid, options.amcheck_heapallindexed))
            except psycopg2.Error as error:
                if sqlstate_of(error) == "42501":
                    run.failed("amcheck", "permission denied for bt_index_check on index \"%s\": %s"
                               % (name, describe_db_error(error)))
                    return
                bad.append("index \"%s\": %s" % (name, describe_db_error(error)))
    if bad:
        run.failed("amcheck", "corrupt B-tree indexes: %s" % "; ".join(bad))
    else:
        run.ok("amcheck", "bt_index_check%s passed on %d B-tree indexes" % (
            " with heapallindexed" if options.amcheck_heapallindexed else "", len(indexes)))


def scratch_params(params, scratch):
    values = dict(params)
    values["login_db"] = scratch
    return values


def verify_backup(params, options, check_mode=False, log=None):
    """Verify one backup; return the result dict (status ok or failed).

    ``params`` are the connection options of tradeops_postgres. Raises
    ConfigError for invalid options and UnavailableError when PostgreSQL
    cannot be reached, before anything was created. Everything the run
    creates (scratch database, decompressed copy, password file) is removed
    before it returns or raises, unless keep_scratch_db is set.
    """
    log = log or (lambda message: None)
    path = options.path or newest_backup(options.backup_dir, options.kind)
    path = os.path.abspath(path)
    run = Verification(path)
    manifest, exists = check_file_and_manifest(run, path)
    login_db = params.get("login_db") or "postgres"

    scratch = options.scratch_db or new_scratch_name()
    conn = connect(params, "tradeops pg_backup_verify")
    created = False
    record_path = None
    try:
        scratch_exists = check_scratch_name(conn, options, scratch, manifest, login_db)
        if not exists:
            run.skip_rest("the backup file was not found")
            return run.result(None, None, manifest)
        decompress = decompressor_for(path)
        with ClientEnvironment(params) as env:
            archive_fmt = check_format(run, path, decompress)
            listed = None
            if archive_fmt is not None:
                listed = check_listing(run, options, path, decompress, manifest, env)
            else:
                run.skipped("archive_list", "the format is not supported")
            listed_tables = listed[0] if listed else None
            listing = listed[2] if listed else ""

            if check_mode:
                if listed_tables is not None:
                    check_required(run, options, listed_tables, "archive listing")
                run.skip_rest("check mode restores nothing")
                return run.result(None, None, manifest)
            integrity_failed = any(check["name"] in ("size", "sha256", "format")
                                   for check in run.failures())
            if integrity_failed:
                run.skip_rest("the file does not match its manifest or has an unsupported format, "
                              "so it is not restored")
            else:
                if scratch_exists:
                    log("dropping scratch database %s left by an earlier verification" % scratch)
                    drop_database(conn, scratch)
                log("creating scratch database %s from template %s" % (scratch, options.scratch_template))
                create_scratch(conn, scratch, options.scratch_template)
                created = True
                log("restoring %s into %s" % (path, scratch))
                partial = (manifest or {}).get("kind") in PARTIAL_KINDS
                if restore_archive(run, options, path, decompress, archive_fmt, scratch, env, listing, partial):
                    scratch_conn = connect(scratch_params(params, scratch), "tradeops pg_backup_verify")
                    try:
                        check_restored(run, options, scratch_conn, listed_tables, manifest)
                        check_amcheck(run, options, scratch_conn)
                    finally:
                        scratch_conn.close()
                else:
                    run.skip_rest("the restore failed")
        if options.write_record:
            try:
                record_path = write_record(path, {
                    "record_version": RECORD_VERSION,
                    "status": run.status,
                    "verified_at": utc_now_text(),
                    "file": os.path.basename(path),
                    "sha256": (manifest or {}).get("sha256"),
                    "kind": (manifest or {}).get("kind"),
                    "source_database": (manifest or {}).get("database"),
                    "checks": run.checks,
                    "tables": run.tables,
                    "restore_seconds": run.restore_seconds,
                    "total_seconds": round(time.monotonic() - run.started, 3),
                })
            except OSError as error:
                run.failed("record", "cannot write verification record \"%s%s\": %s"
                           % (path, RECORD_SUFFIX, error.strerror))
            else:
                run.ok("record", record_path)
        return run.result(scratch if created else None, record_path, manifest)
    except psycopg2.Error as error:
        raise TradeopsError("Verification of backup \"%s\" failed on scratch database \"%s\": %s"
                            % (path, scratch, describe_db_error(error)),
                            hint="Check that the verifying role has CREATEDB and can connect to the server.")
    finally:
        try:
            if created and not options.keep_scratch_db:
                log("dropping scratch database %s" % scratch)
                drop_database(conn, scratch)
        finally:
            conn.close()
