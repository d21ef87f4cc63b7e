#!/usr/bin/python3
# Managed by Ansible (role pg_backup): local changes are overwritten.
"""Write the tradeops backups: database dumps and application state archives.

The job scripts tradeops-db-backup and tradeops-app-backup run this worker
with the settings file that the pg_backup role writes under /etc/tradeops.
Each backup kind is written under a hidden temporary name, checked stage by
stage, fsynced, and only then renamed into place. A manifest
``<backup file>.manifest.json`` follows the same way and marks the backup
as complete. Retention of a kind runs only after that kind's backup
succeeded.

Exit codes follow sysexits.h, as in the shared job library jobs.sh:
0 ok, 1 a backup failed, 64 usage, 69 PostgreSQL unreachable, 73 an output
file could not be written, 75 another run holds the lock, 78 bad
configuration. Messages go to stderr as plain lines; with --json, stdout
gets one JSON object per backup written.
"""

import argparse
import configparser
import datetime
import errno
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

DB_KINDS = ("full", "schema", "critical", "strategies")
TAR_KINDS = ("config", "logs")
ALL_KINDS = DB_KINDS + TAR_KINDS

# File name prefix of each kind: <prefix>_<YYYYmmddTHHMMSSZ>.<extension>
KIND_PREFIXES = {
    "full": "full_backup",
    "schema": "schema_backup",
    "critical": "critical_backup",
    "strategies": "strategies",
    "config": "config",
    "logs": "logs",
}
DUMP_EXTENSIONS = ("dump", "dump.zst", "dump.gz")
TAR_EXTENSIONS = ("tar", "tar.gz", "tar.zst")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
COMPRESSIONS = ("gzip", "zstd", "pigz", "none")
TABLE_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*")
COPY_CHUNK_BYTES = 1 << 20
MANIFEST_VERSION = 1
ALERT_TIMEOUT_SECONDS = 30

_stderr_lock = threading.Lock()


def backup_name_pattern(kind):
    """Return the strict regex of the backup file names that `kind` writes."""
    extensions = DUMP_EXTENSIONS if kind in DB_KINDS else TAR_EXTENSIONS
    alternatives = "|".join(re.escape(ext) for ext in extensions)
    return re.compile(r"%s_(?P<stamp>\d{8}T\d{6}Z)\.(?:%s)" % (KIND_PREFIXES[kind], alternatives))


def temp_name_pattern(kind):
    """Return the regex of the temporary names that a run of `kind` leaves when it dies."""
    final = backup_name_pattern(kind).pattern
    return re.compile(r"\.tmp-(?:%s)(?:\.manifest\.json)?\.\d+" % final)


class BackupError(Exception):
    """A failure that ends a backup, with the exit code for its class."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Log:
    """Plain stderr messages; the job library adds time stamps and the job name."""

    def __init__(self, dry_run):
        # jobs.sh already prefixes every line of a dry run, so the prefix is
        # added here only when the worker runs on its own.
        self.prefix = "[DRY-RUN] " if dry_run and os.environ.get("TRADEOPS_DRY_RUN") != "1" else ""

    def write(self, message):
        with _stderr_lock:
            sys.stderr.write(self.prefix + message + "\n")
            sys.stderr.flush()

    def info(self, message):
        self.write(message)

    def warning(self, message):
        self.write("warning: " + message)

    def error(self, message):
        self.write("error: " + message)


# --------------------------------------------------------------------------
# Settings


class Settings:
    """The worker's settings, read from the INI file that the role writes."""

    def __init__(self, path):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise BackupError(EX_CONFIG, "cannot read config file %s: %s" % (path, exc.strerror)) from exc
        except configparser.Error as exc:
            raise BackupError(EX_CONFIG, "invalid config file %s: %s" % (path, exc)) from exc
        self.path = path
        self.parser = parser
        try:
            self._load()
        except (configparser.Error, ValueError) as exc:
            raise BackupError(EX_CONFIG, "invalid config file %s: %s" % (path, exc)) from exc

    def _get(self, section, option, fallback=None):
        value = self.parser.get(section, option, fallback=fallback)
        if value is None:
            raise BackupError(EX_CONFIG, "config file %s: [%s] %s is missing" % (self.path, section, option))
        return value.strip()

    def _load(self):
        get = self._get
        self.kinds = get("backup", "kinds").split()
        for kind in self.kinds:
            if kind not in ALL_KINDS:
                raise BackupError(EX_CONFIG, "config file %s: unknown backup kind %r in [backup] kinds; "
                                  "allowed: %s" % (self.path, kind, ", ".join(ALL_KINDS)))
        self.lock_wait = self.parser.getint("backup", "lock_wait", fallback=0)
        self.file_mode = int(get("backup", "file_mode", "0640"), 8)
        self.file_owner = get("backup", "file_owner", "")
        self.file_group = get("backup", "file_group", "")

        self.db_host = get("database", "host", "127.0.0.1")
        self.db_port = self.parser.getint("database", "port", fallback=5432)
        self.db_name = get("database", "name", "trading_db")
        self.db_user = get("database", "user", "trading_backup")
        self.passfile = get("database", "passfile", "")
        self.connect_timeout = self.parser.getint("database", "connect_timeout", fallback=10)
        self.pg_dump = get("database", "pg_dump", "/usr/lib/postgresql/15/bin/pg_dump")

        self.retention_keep_min = self.parser.getint("retention", "keep_min", fallback=3)
        # Kinds whose retention floor counts only backups with an ok
        # verification record; other kinds count every intact backup.
        verified_kinds = self.parser.get("retention", "require_verified_kinds", fallback="")
        self.require_verified_kinds = {kind.strip() for kind in verified_kinds.split(",") if kind.strip()}
        unknown = self.require_verified_kinds - set(ALL_KINDS)
        if unknown:
            raise BackupError(EX_CONFIG, "config file %s: [retention] require_verified_kinds has unknown kind %s;"
                              " use any of %s" % (self.path, ", ".join(sorted(unknown)), ", ".join(ALL_KINDS)))
        if self.retention_keep_min < 1:
            raise BackupError(EX_CONFIG, "config file %s: [retention] keep_min must be at least 1" % self.path)

        self.alert_command = get("alert", "command", "")
        self.tools = {
            "zstd": get("tools", "zstd", "/usr/bin/zstd"),
            "pigz": get("tools", "pigz", "/usr/bin/pigz"),
            "gzip": get("tools", "gzip", "/bin/gzip"),
            "tar": get("tools", "tar", "/bin/tar"),
        }

        # Every [kind:NAME] section is loaded, so that --kind can pick a kind
        # that the daily run leaves out; each kind of the daily run needs one.
        self.kind_settings = {}
        for kind in ALL_KINDS:
            if kind in self.kinds or self.parser.has_section("kind:" + kind):
                self.kind_settings[kind] = self._load_kind(kind)

    def _load_kind(self, kind):
        section = "kind:" + kind
        if not self.parser.has_section(section):
            raise BackupError(EX_CONFIG, "config file %s: section [%s] is missing" % (self.path, section))
        get = self._get
        kind_settings = {
            "directory": get(section, "directory"),
            "retention_days": self.parser.getint(section, "retention_days"),
            "compression": get(section, "compression", "none"),
            "compression_level": self.parser.getint(section, "compression_level", fallback=0),
            "compression_threads": self.parser.getint(section, "compression_threads", fallback=1),
            "zstd_min_match": self.parser.getint(section, "zstd_min_match", fallback=0),
        }
        if kind_settings["compression"] not in COMPRESSIONS:
            raise BackupError(EX_CONFIG, "config file %s: [%s] compression %r is invalid; allowed: %s"
                              % (self.path, section, kind_settings["compression"], ", ".join(COMPRESSIONS)))
        if kind_settings["compression_threads"] < 1:
            raise BackupError(EX_CONFIG, "config file %s: [%s] compression_threads is %d; it must be at least 1"
                              % (self.path, section, kind_settings["compression_threads"]))
        if kind_settings["zstd_min_match"] != 0 and not 3 <= kind_settings["zstd_min_match"] <= 7:
            raise BackupError(EX_CONFIG, "config file %s: [%s] zstd_min_match is %d; set 3 to 7, or 0 for the "
                              "level's own" % (self.path, section, kind_settings["zstd_min_match"]))
        if kind_settings["retention_days"] < 1:
            raise BackupError(EX_CONFIG, "config file %s: [%s] retention_days must be at least 1"
                              % (self.path, section))
        if kind in ("critical", "strategies"):
            tables = get(section, "tables").split()
            for table in tables:
                if not TABLE_NAME_RE.fullmatch(table):
                    raise BackupError(EX_CONFIG, "config file %s: [%s] table %r is invalid; write schema.table "
                                      "in lower case" % (self.path, section, table))
            if not tables:
                raise BackupError(EX_CONFIG, "config file %s: [%s] tables is empty" % (self.path, section))
            kind_settings["tables"] = tables
        if kind in TAR_KINDS:
            kind_settings["paths"] = shlex.split(get(section, "paths"))
            for path in kind_settings["paths"]:
                if not os.path.isabs(path):
                    raise BackupError(EX_CONFIG, "config file %s: [%s] path %r is not absolute"
                                      % (self.path, section, path))
        return kind_settings

    def libpq_env(self):
        """Return the environment for pg_dump: connection settings, never a password."""
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        env.update({
            "PGHOST": self.db_host,
            "PGPORT": str(self.db_port),
            "PGDATABASE": self.db_name,
            "PGUSER": self.db_user,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": "tradeops-backup pg_dump",
        })
        if self.passfile:
            env["PGPASSFILE"] = self.passfile
        return env


# --------------------------------------------------------------------------
# Files


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso_utc(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def output_error(path, exc):
    """Convert an OSError on an output file into a BackupError with exit code 73."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the file system of %s is full)" % os.path.dirname(path)
    return BackupError(EX_CANTCREAT, "cannot write %s: %s" % (path, reason))


def resolve_owner(settings):
    """Return (uid, gid) to give backup files, or -1 for each that stays as created."""
    uid = gid = -1
    if os.geteuid() != 0:
        return uid, gid
    try:
        if settings.file_owner:
            uid = pwd.getpwnam(settings.file_owner).pw_uid
        if settings.file_group:
            gid = grp.getgrnam(settings.file_group).gr_gid
    except KeyError as exc:
        raise BackupError(EX_CONFIG, "config file %s: file owner or group not found: %s"
                          % (settings.path, exc.args[0])) from exc
    return uid, gid


def publish(temp_path, final_path):
    """Rename temp_path to final_path without replacing an existing file, then fsync the directory."""
    try:
        os.link(temp_path, final_path)
    except FileExistsError as exc:
        raise BackupError(EX_CANTCREAT, "%s already exists; not replacing it" % final_path) from exc
    except OSError as exc:
        raise output_error(final_path, exc) from exc
    os.unlink(temp_path)
    fsync_directory(os.path.dirname(final_path))


def write_manifest(final_path, manifest, settings):
    """Write <final_path>.manifest.json through a temporary file; remove the backup if that fails."""
    manifest_path = final_path + ".manifest.json"
    directory, name = os.path.split(manifest_path)
    temp_path = os.path.join(directory, ".tmp-%s.%d" % (name, os.getpid()))
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
    uid, gid = resolve_owner(settings)
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
            os.fchmod(fd, settings.file_mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        publish(temp_path, manifest_path)
    except (OSError, BackupError) as exc:
        remove_quietly(temp_path)
        # A backup without its manifest does not count as good: take it away.
        remove_quietly(final_path)
        if isinstance(exc, BackupError):
            raise
        raise output_error(manifest_path, exc) from exc
    return manifest_path


def remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(COPY_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DirectoryLock:
    """An flock on <directory>/.tradeops-backup.lock, so that two runs never write one folder."""

    def __init__(self, directory, wait_seconds, log, dry_run):
        self.path = os.path.join(directory, ".tradeops-backup.lock")
        self.wait_seconds = wait_seconds
        self.log = log
        self.dry_run = dry_run
        self.fd = None

    def acquire(self):
        flags = os.O_RDWR if self.dry_run else os.O_RDWR | os.O_CREAT
        try:
            self.fd = os.open(self.path, flags, 0o640)
        except FileNotFoundError:
            if self.dry_run:
                return
            raise
        except OSError as exc:
            raise output_error(self.path, exc) from exc
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise BackupError(EX_TEMPFAIL, "another backup run holds %s; not starting" % self.path) \
                        from None
                time.sleep(0.5)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def remove_stale_temporaries(directory, kind, log, dry_run):
    """Remove the temporary files that a killed run of `kind` left; the caller holds the folder lock."""
    pattern = temp_name_pattern(kind)
    for name in sorted(os.listdir(directory)):
        if not pattern.fullmatch(name):
            continue
        path = os.path.join(directory, name)
        if dry_run:
            log.info("would remove stale temporary file %s" % path)
            continue
        log.warning("removing stale temporary file %s from an earlier run that did not finish" % path)
        remove_quietly(path)


# --------------------------------------------------------------------------
# Pipelines


class Stage:
    """One process of a pipeline, with its stderr forwarded to the log and kept."""

    def __init__(self, name, argv, ok_codes=(0,)):
        self.name = name
        self.argv = argv
        self.ok_codes = ok_codes
        self.process = None
        self.stderr_lines = []
        self.reader = None

    def forward_stderr(self, log):
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line:
                continue
            self.stderr_lines.append(line)
            log.write(line if line.startswith(self.name + ":") else "%s: %s" % (self.name, line))

    def first_error_line(self):
        """Return the stage's first line that reports an error, else its last line."""
        for line in self.stderr_lines:
            if re.search(r"\b(error|fatal|FATAL|ERROR)\b", line):
                return line
        if self.stderr_lines:
            return self.stderr_lines[-1]
        return None

    def failure(self):
        """Return a message when the stage's exit status is not one of its ok_codes, else None."""
        code = self.process.returncode
        if code in self.ok_codes:
            return None
        if code < 0:
            status = "was killed by signal %s" % signal.Signals(-code).name
        else:
            status = "exited with code %d" % code
        detail = self.first_error_line()
        return "%s %s%s" % (self.name, status, ": " + detail if detail else "")


class Pipeline:
    """Run stages with each one's stdout piped into the next, and copy the last stdout into a file.

    The copy computes the size and sha256 of what it writes. Every stage's
    exit status is checked, so a compressor that succeeds cannot hide a
    pg_dump that failed.
    """

    def __init__(self, stages, env, log):
        self.stages = stages
        self.env = env
        self.log = log
        self.size = 0
        self.sha256 = None
        self.write_error = None
        self.copier = None

    def start(self, out_fd, out_path):
        previous = subprocess.DEVNULL
        for stage in self.stages:
            try:
                stage.process = subprocess.Popen(stage.argv, stdin=previous, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, env=self.env, close_fds=True)
            except OSError as exc:
                self.kill()
                raise BackupError(EX_CONFIG, "cannot run %s: %s" % (stage.argv[0], exc.strerror)) from exc
            if previous is not subprocess.DEVNULL:
                # Only the next stage may hold the read end, so an early
                # exit of that stage reaches the writer as SIGPIPE.
                previous.close()
            previous = stage.process.stdout
            stage.reader = threading.Thread(target=stage.forward_stderr, args=(self.log,), daemon=True)
            stage.reader.start()
        self.copier = threading.Thread(target=self._copy, args=(out_fd, out_path), daemon=True)
        self.copier.start()

    def _copy(self, out_fd, out_path):
        digest = hashlib.sha256()
        source = self.stages[-1].process.stdout
        try:
            while True:
                chunk = source.read1(COPY_CHUNK_BYTES)
                if not chunk:
                    break
                write_all(out_fd, chunk)
                digest.update(chunk)
                self.size += len(chunk)
        except OSError as exc:
            self.write_error = output_error(out_path, exc)
            self.kill()
        finally:
            source.close()
        self.sha256 = digest.hexdigest()

    def kill(self):
        for stage in self.stages:
            if stage.process is not None and stage.process.poll() is None:
                stage.process.kill()

    def abort(self):
        """Kill every stage and wait for them, after a failure outside the pipeline."""
        self.kill()
        self.copier.join()
        for stage in self.stages:
            stage.process.wait()
            stage.reader.join()
            stage.process.stderr.close()

    def wait(self):
        """Wait for every stage and raise the first real failure."""
        self.copier.join()
        for stage in self.stages:
            stage.process.wait()
            stage.reader.join()
            stage.process.stderr.close()
        if self.write_error is not None:
            raise self.write_error
        failures = [stage.failure() for stage in self.stages]
        # A stage killed by SIGPIPE only reports that a later stage failed.
        real = [message for stage, message in zip(self.stages, failures)
                if message and stage.process.returncode != -signal.SIGPIPE]
        if real or any(failures):
            raise BackupError(EX_FAILURE, (real or [m for m in failures if m])[0])
        for stage in self.stages:
            if stage.process.returncode != 0:
                self.log.warning("%s exited with code %d, which is accepted for it"
                                 % (stage.name, stage.process.returncode))


def compressor_stage(settings, kind_settings):
    """Return the Stage that compresses a kind's stream, or None for no outer compressor.

    zstd and pigz compress with compression_threads threads; gzip has one. A
    zstd_min_match other than 0 replaces the shortest match that the zstd
    level looks for.
    """
    compression = kind_settings["compression"]
    level = kind_settings["compression_level"]
    threads = kind_settings["compression_threads"]
    if compression == "zstd":
        min_match = kind_settings["zstd_min_match"]
        tuning = ["--zstd=minMatch=%d" % min_match] if min_match else []
        return Stage("zstd", [settings.tools["zstd"], "-q", "-%d" % level, "-T%d" % threads] + tuning + ["-c"])
    if compression == "pigz":
        return Stage("pigz", [settings.tools["pigz"], "-%d" % level, "-p", str(threads), "-c"])
    if compression == "gzip":
        return Stage("gzip", [settings.tools["gzip"], "-%d" % level, "-c"])
    return None


def write_backup(directory, name, stages, env, settings, log, during=None):
    """Run a pipeline into a temporary file, then publish it as directory/name.

    `during` runs in this thread while the pipeline writes (the snapshot's
    row counts). Returns (final path, size, sha256).
    """
    final_path = os.path.join(directory, name)
    temp_path = os.path.join(directory, ".tmp-%s.%d" % (name, os.getpid()))
    if os.path.lexists(final_path):
        raise BackupError(EX_CANTCREAT, "%s already exists; not replacing it" % final_path)
    uid, gid = resolve_owner(settings)
    try:
        out_fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise output_error(temp_path, exc) from exc
    try:
        pipeline = Pipeline(stages, env, log)
        pipeline.start(out_fd, temp_path)
        try:
            if during is not None:
                during()
        except BaseException:
            pipeline.abort()
            raise
        pipeline.wait()
        try:
            os.fchmod(out_fd, settings.file_mode)
            if uid != -1 or gid != -1:
                os.fchown(out_fd, uid, gid)
            os.fsync(out_fd)
        except OSError as exc:
            raise output_error(temp_path, exc) from exc
        os.close(out_fd)
        out_fd = None
        publish(temp_path, final_path)
    except BaseException:
        if out_fd is not None:
            os.close(out_fd)
        remove_quietly(temp_path)
        raise
    return final_path, pipeline.size, pipeline.sha256


# --------------------------------------------------------------------------
# Database backups


def pg_dump_version(settings):
    """Return pg_dump's version as (major, "15.x")."""
    try:
        result = subprocess.run([settings.pg_dump, "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackupError(EX_CONFIG, "cannot run pg_dump %s: %s; set [database] pg_dump in %s"
                          % (settings.pg_dump, exc.strerror, settings.path)) from exc
    match = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", result.stdout)
    if result.returncode != 0 or not match:
        raise BackupError(EX_CONFIG, "cannot read the version of %s: %s"
                          % (settings.pg_dump, (result.stderr or result.stdout).strip()))
    major = int(match.group(1))
    return major, match.group(0).split(") ")[1]


def check_passfile(settings):
    if not settings.passfile:
        return
    try:
        info = os.stat(settings.passfile)
    except OSError as exc:
        raise BackupError(EX_CONFIG, "password file %s: %s" % (settings.passfile, exc.strerror)) from exc
    # libpq ignores a password file that its group or others can read.
    if info.st_mode & 0o077:
        raise BackupError(EX_CONFIG, "password file %s has mode %04o; libpq ignores it unless the mode is 0600"
                          % (settings.passfile, info.st_mode & 0o7777))
    if not os.access(settings.passfile, os.R_OK):
        raise BackupError(EX_CONFIG, "password file %s is not readable by user %s"
                          % (settings.passfile, pwd.getpwuid(os.geteuid()).pw_name))


def connect(settings):
    """Open the worker's own connection, which exports the snapshot and counts rows."""
    import psycopg2  # pylint: disable=import-outside-toplevel

    check_passfile(settings)
    params = {
        "host": settings.db_host,
        "port": settings.db_port,
        "dbname": settings.db_name,
        "user": settings.db_user,
        "connect_timeout": settings.connect_timeout,
        "application_name": "tradeops-backup",
    }
    if settings.passfile:
        params["passfile"] = settings.passfile
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.OperationalError as exc:
        detail = " ".join(str(exc).split())
        where = "%s@%s:%d/%s" % (settings.db_user, settings.db_host, settings.db_port, settings.db_name)
        if re.search(r"password authentication failed|no password supplied|authentication failed", detail):
            raise BackupError(EX_CONFIG, "cannot log in to PostgreSQL as %s: %s; check the password in %s"
                              % (where, detail, settings.passfile or "the password file")) from exc
        raise BackupError(EX_UNAVAILABLE, "PostgreSQL is unreachable at %s: %s" % (where, detail)) from exc
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def server_version(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int, current_setting('server_version')")
        number, text = cur.fetchone()
    conn.rollback()
    return number, text.split()[0]


def tables_in_snapshot(cur, kind_settings):
    """Return the tables whose rows the dump contains, as "schema.table" names."""
    if "tables" in kind_settings:
        missing = []
        for table in kind_settings["tables"]:
            cur.execute("SELECT to_regclass(%s)", (table,))
            if cur.fetchone()[0] is None:
                missing.append(table)
        if missing:
            raise BackupError(EX_FAILURE, "table(s) not found in the database: %s" % ", ".join(missing))
        return list(kind_settings["tables"])
    # The ordinary tables that pg_dump writes data for: no catalogs, no
    # tables of extensions, no partitioned parents (their rows are in the
    # partitions, which are listed).
    cur.execute("""
        SELECT n.nspname || '.' || c.relname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%%'
          AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1
    """)
    return [row[0] for row in cur.fetchall()]


def count_rows(cur, tables):
    from psycopg2 import sql  # pylint: disable=import-outside-toplevel

    counts = {}
    for table in tables:
        schema, name = table.split(".", 1)
        cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
        counts[table] = cur.fetchone()[0]
    return counts


def pg_dump_argv(settings, kind, kind_settings, snapshot):
    argv = [settings.pg_dump, "--format=custom", "--no-password", "--snapshot=" + snapshot]
    if kind_settings["compression"] == "gzip":
        argv.append("--compress=%d" % kind_settings["compression_level"])
    else:
        # The outer compressor (or none) does the work; compressing twice
        # would only cost CPU.
        argv.append("--compress=0")
    if kind == "schema":
        argv.append("--schema-only")
    if "tables" in kind_settings:
        argv.append("--strict-names")
        argv.extend("--table=" + table for table in kind_settings["tables"])
    return argv


def dump_extension(compression):
    return {"zstd": "dump.zst", "pigz": "dump.gz"}.get(compression, "dump")


def compression_label(compression, level):
    return "none" if compression == "none" else "%s:%d" % (compression, level)


def backup_database(settings, kind, versions, log, dry_run):
    """Dump `kind` of the database in one exported snapshot; return the manifest path and the sha256.

    A dry run writes nothing and returns None.
    """
    import psycopg2  # pylint: disable=import-outside-toplevel

    kind_settings = settings.kind_settings[kind]
    compression = kind_settings["compression"]
    level = kind_settings["compression_level"]
    started = utc_now()
    name = "%s_%s.%s" % (KIND_PREFIXES[kind], started.strftime(STAMP_FORMAT), dump_extension(compression))
    directory = kind_settings["directory"]
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            # The first statement opens the REPEATABLE READ transaction; its
            # snapshot is the one pg_dump imports and the counts read.
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            tables = [] if kind == "schema" else tables_in_snapshot(cur, kind_settings)
            stages = [Stage("pg_dump", pg_dump_argv(settings, kind, kind_settings, snapshot))]
            outer = None if compression == "gzip" else compressor_stage(settings, kind_settings)
            if outer is not None:
                stages.append(outer)
            if dry_run:
                log.info("would write %s/%s with: %s" % (directory, name, " | ".join(
                    " ".join(shlex.quote(arg) for arg in stage.argv) for stage in stages)))
                return None
            log.info("writing %s backup %s/%s (snapshot %s, %d tables)" % (kind, directory, name, snapshot,
                                                                            len(tables)))
            counts = {}

            def count_in_snapshot():
                counts.update(count_rows(cur, tables))

            final_path, size, sha256 = write_backup(directory, name, stages, settings.libpq_env(), settings,
                                                    log, during=count_in_snapshot)
        finished = utc_now()
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "kind": kind,
            "database": settings.db_name,
            "host": socket.gethostname(),
            "db_host": settings.db_host,
            "server_version": versions["server_version"],
            "server_version_num": versions["server_version_num"],
            "pg_dump_version": versions["pg_dump_version"],
            "format": "custom",
            "compression": compression_label(compression, level),
            "file": name,
            "size_bytes": size,
            "sha256": sha256,
            "started_at": iso_utc(started),
            "finished_at": iso_utc(finished),
            "duration_seconds": round((finished - started).total_seconds(), 3),
            "snapshot": snapshot,
            "tables": counts,
        }
        manifest_path = write_manifest(final_path, manifest, settings)
    except psycopg2.Error as exc:
        raise BackupError(EX_FAILURE, "query in the backup's snapshot failed: %s"
                          % " ".join(str(exc).split())) from exc
    finally:
        conn.close()
    log.info("wrote %s (%d bytes, sha256 %s)" % (final_path, size, sha256))
    return manifest_path, sha256


def check_versions(settings, log):
    """Compare pg_dump's major version with the server's before anything is written."""
    dump_major, dump_version = pg_dump_version(settings)
    conn = connect(settings)
    try:
        number, text = server_version(conn)
    finally:
        conn.close()
    server_major = number // 10000
    if dump_major != server_major:
        raise BackupError(EX_CONFIG, "pg_dump %s (%s) does not match the server's major version %d (server %s); "
                          "set [database] pg_dump in %s to the PostgreSQL %d client, e.g. "
                          "/usr/lib/postgresql/%d/bin/pg_dump"
                          % (dump_version, settings.pg_dump, server_major, text, settings.path, server_major,
                             server_major))
    log.info("server %s at %s:%d, pg_dump %s" % (text, settings.db_host, settings.db_port, dump_version))
    return {"server_version": text, "server_version_num": number, "pg_dump_version": dump_version}


# --------------------------------------------------------------------------
# Application state archives


def tar_extension(compression):
    return {"zstd": "tar.zst", "pigz": "tar.gz", "gzip": "tar.gz"}.get(compression, "tar")


def backup_files(settings, kind, log, dry_run):
    """Archive the kind's paths with tar; return the manifest path and the sha256, or None in a dry run."""
    kind_settings = settings.kind_settings[kind]
    compression = kind_settings["compression"]
    level = kind_settings["compression_level"]
    directory = kind_settings["directory"]
    present = []
    for path in kind_settings["paths"]:
        if os.path.lexists(path):
            present.append(path)
        else:
            log.info("%s backup: %s does not exist; skipping it" % (kind, path))
    if not present:
        raise BackupError(EX_FAILURE, "%s backup: none of the paths exist: %s"
                          % (kind, " ".join(kind_settings["paths"])))
    started = utc_now()
    name = "%s_%s.%s" % (KIND_PREFIXES[kind], started.strftime(STAMP_FORMAT), tar_extension(compression))
    # Members are stored relative to / so that "tar -x -C /" restores them in place.
    tar = Stage("tar", [settings.tools["tar"], "--create", "--file=-", "--directory=/", "--sparse",
                        "--warning=no-file-changed", "--"] + [path.lstrip("/") for path in present],
                # GNU tar exits 1 when a file changed while it was read,
                # which is expected of logs that are being written.
                ok_codes=(0, 1))
    stages = [tar]
    outer = compressor_stage(settings, kind_settings)
    if outer is not None:
        stages.append(outer)
    if dry_run:
        log.info("would write %s/%s with: %s" % (directory, name, " | ".join(
            " ".join(shlex.quote(arg) for arg in stage.argv) for stage in stages)))
        return None
    log.info("writing %s backup %s/%s of %s" % (kind, directory, name, " ".join(present)))
    final_path, size, sha256 = write_backup(directory, name, stages, dict(os.environ), settings, log)
    finished = utc_now()
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "database": None,
        "host": socket.gethostname(),
        "format": "tar",
        "compression": compression_label(compression, level),
        "file": name,
        "size_bytes": size,
        "sha256": sha256,
        "started_at": iso_utc(started),
        "finished_at": iso_utc(finished),
        "duration_seconds": round((finished - started).total_seconds(), 3),
        "paths": present,
        "tables": {},
    }
    manifest_path = write_manifest(final_path, manifest, settings)
    log.info("wrote %s (%d bytes, sha256 %s)" % (final_path, size, sha256))
    return manifest_path, sha256


# --------------------------------------------------------------------------
# Retention


def is_good_backup(directory, name, require_verified, written=None):
    """Return whether name has a manifest whose size and sha256 match it (and, if required, an ok verify record).

    `written` maps the names that this run wrote to the sha256 computed as
    it wrote them; those files are not read again. The checks that read
    no backup come first, so a backup that fails one is never hashed.
    """
    path = os.path.join(directory, name)
    try:
        with open(path + ".manifest.json", encoding="utf-8") as handle:
            manifest = json.load(handle)
        if not isinstance(manifest, dict) or manifest.get("file") != name:
            return False
        if manifest.get("size_bytes") != os.stat(path).st_size:
            return False
        if require_verified:
            with open(path + ".verify.json", encoding="utf-8") as handle:
                record = json.load(handle)
            if not isinstance(record, dict) or record.get("status") != "ok":
                return False
        actual = (written or {}).get(name) or sha256_of(path)
        if manifest.get("sha256") != actual:
            return False
    except (OSError, ValueError):
        return False
    return True


def apply_retention(settings, kind, now, log, dry_run, written=None):
    """Delete the kind's backups older than its window, except the newest keep_min good ones.

    The age of a backup is the UTC time stamp in its name. A backup is
    deleted with its manifest and verify record. Files whose names the
    kind's strict pattern does not match are never touched. `written` is
    as for is_good_backup.
    """
    kind_settings = settings.kind_settings[kind]
    directory = kind_settings["directory"]
    pattern = backup_name_pattern(kind)
    backups = []
    for name in os.listdir(directory):
        match = pattern.fullmatch(name)
        path = os.path.join(directory, name)
        if not match or os.path.islink(path) or not os.path.isfile(path):
            continue
        stamp = datetime.datetime.strptime(match.group("stamp"), STAMP_FORMAT).replace(
            tzinfo=datetime.timezone.utc)
        backups.append((stamp, name))
    backups.sort(reverse=True)

    protected = set()
    for _, name in backups:
        if len(protected) >= settings.retention_keep_min:
            break
        if is_good_backup(directory, name, kind in settings.require_verified_kinds, written):
            protected.add(name)

    cutoff = now - datetime.timedelta(days=kind_settings["retention_days"])
    deleted = 0
    for stamp, name in backups:
        if name in protected or stamp >= cutoff:
            continue
        for path in (name, name + ".manifest.json", name + ".verify.json"):
            full = os.path.join(directory, path)
            if not os.path.lexists(full):
                continue
            if dry_run:
                log.info("would delete %s (older than %d days)" % (full, kind_settings["retention_days"]))
                continue
            os.unlink(full)
            log.info("deleted %s (older than %d days)" % (full, kind_settings["retention_days"]))
        deleted += 1
    if not dry_run and deleted:
        fsync_directory(directory)
    log.info("%s retention: %d backups found, %d kept as newest good, %d deleted"
             % (kind, len(backups), len(protected), deleted))


# --------------------------------------------------------------------------
# Alerts


def send_alert(settings, subject, message, log):
    """Run the alert hook with the subject as argument and the message on stdin.

    A missing or failing hook is logged and never changes the exit code.
    """
    command = shlex.split(settings.alert_command) if settings.alert_command else []
    if not command or not os.access(command[0], os.X_OK):
        log.warning("no alert hook installed%s; alert: %s"
                    % (" at " + command[0] if command else "", subject))
        return
    try:
        result = subprocess.run(command + [subject], input=message, text=True, capture_output=True,
                                timeout=ALERT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("alert hook %s failed: %s; alert: %s" % (command[0], exc, subject))
        return
    if result.returncode != 0:
        log.warning("alert hook %s exited with code %d: %s; alert: %s"
                    % (command[0], result.returncode, result.stderr.strip()[:200], subject))


# --------------------------------------------------------------------------
# Main


class UsageParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        sys.exit(EX_USAGE)


def parse_args(argv):
    parser = UsageParser(
        prog="tradeops_backup.py",
        description="Write tradeops backups (database dumps and application archives) with a manifest each, "
                    "then apply the retention of each kind written.")
    parser.add_argument("--config", required=True, metavar="PATH",
                        help="settings file written by the pg_backup role, e.g. /etc/tradeops/db-backup.conf")
    parser.add_argument("--kind", action="append", choices=ALL_KINDS, metavar="KIND",
                        help="backup kind to write (repeatable): %s; default: [backup] kinds of the config"
                             % ", ".join(ALL_KINDS))
    parser.add_argument("--dry-run", action="store_true",
                        help="check the settings and the database, log what would be written and deleted, "
                             "and change nothing")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per backup written on stdout (kind, file, manifest)")
    return parser.parse_args(argv)


def run(args, log):
    """Write every requested kind; return the exit code of the first failure, or 0."""
    settings = Settings(args.config)
    kinds = args.kind or settings.kinds
    for kind in kinds:
        if kind not in settings.kind_settings:
            raise BackupError(EX_USAGE, "kind %r has no [kind:%s] section in %s" % (kind, kind, args.config))
    dry_run = args.dry_run

    directories = sorted({settings.kind_settings[kind]["directory"] for kind in kinds})
    for directory in directories:
        if not os.path.isdir(directory):
            raise BackupError(EX_CANTCREAT, "backup folder %s does not exist" % directory)
        if not dry_run and not os.access(directory, os.W_OK | os.X_OK):
            raise BackupError(EX_CANTCREAT, "backup folder %s is not writable by user %s"
                              % (directory, pwd.getpwuid(os.geteuid()).pw_name))
    locks = [DirectoryLock(directory, settings.lock_wait, log, dry_run) for directory in directories]
    for lock in locks:
        lock.acquire()

    failures = []
    try:
        versions = None
        if any(kind in DB_KINDS for kind in kinds):
            versions = check_versions(settings, log)
        for kind in kinds:
            remove_stale_temporaries(settings.kind_settings[kind]["directory"], kind, log, dry_run)
            try:
                if kind in DB_KINDS:
                    result = backup_database(settings, kind, versions, log, dry_run)
                else:
                    result = backup_files(settings, kind, log, dry_run)
            except BackupError as exc:
                log.error("%s backup failed: %s" % (kind, exc.message))
                failures.append((kind, exc))
                if exc.code in (EX_UNAVAILABLE, EX_CONFIG):
                    break
                continue
            written = {}
            if result is not None:
                manifest_path, sha256 = result
                backup_path = manifest_path[:-len(".manifest.json")]
                written[os.path.basename(backup_path)] = sha256
                if args.json:
                    print(json.dumps({"kind": kind, "file": backup_path, "manifest": manifest_path}), flush=True)
            apply_retention(settings, kind, utc_now(), log, dry_run, written)
    finally:
        for lock in locks:
            lock.release()

    if not failures:
        return EX_OK
    kind, first = failures[0]
    host = socket.gethostname()
    subject = "tradeops backup failed on %s: %s" % (host, ", ".join(k for k, _ in failures))
    message = "".join("%s backup on %s failed (exit code %d): %s\n" % (k, host, exc.code, exc.message)
                      for k, exc in failures)
    send_alert(settings, subject, message, log)
    return first.code


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log = Log(args.dry_run)
    try:
        return run(args, log)
    except BackupError as exc:
        failure = exc
    except Exception as exc:  # pylint: disable=broad-except
        # An unforeseen failure still ends with a logged error line, an
        # alert and exit code 1, not only with a traceback.
        failure = BackupError(EX_FAILURE, "unexpected %s: %s" % (type(exc).__name__, exc))
    log.error(failure.message)
    if failure.code not in (EX_TEMPFAIL, EX_USAGE):
        try:
            settings = Settings(args.config)
        except BackupError:
            settings = None
        if settings is not None:
            send_alert(settings, "tradeops backup failed on %s" % socket.gethostname(), failure.message + "\n", log)
    return failure.code


if __name__ == "__main__":
    sys.exit(main())
