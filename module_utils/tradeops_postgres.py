# -*- coding: utf-8 -*-
"""PostgreSQL connection options, errors and the SQL runner for tradeops.

This file is shared by the tradeops modules (imported as
``ansible.module_utils.tradeops_postgres``) and by the job command line
programs on the database hosts (imported as ``tradeops_postgres`` from
/usr/local/lib/tradeops/python). It must not import Ansible.

The check-mode gate lives in ``SqlRunner``: in check mode ``change()`` records
the statement and runs nothing, and ``query()`` runs only statements that
start with SELECT or SHOW, inside a read-only session. Callers therefore do
not test for check mode before they write.
"""

from __future__ import absolute_import, division, print_function

import json
import re
import time

try:
    import psycopg2
    import psycopg2.errors
    from psycopg2 import sql
    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as import_error:  # pragma: no cover - depends on the host
    psycopg2 = None
    sql = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = import_error

# Driver errors, for callers that catch them without importing psycopg2.
DATABASE_ERRORS = (psycopg2.Error,) if HAS_PSYCOPG2 else ()

# Argument spec entries for the connection, in the AnsibleModule format. The
# module DOCUMENTATION repeats them, and a test compares the two.
CONNECTION_ARGUMENT_SPEC = {
    "login_host": {"type": "str", "default": ""},
    "login_port": {"type": "int", "default": 5432},
    "login_user": {"type": "str", "default": "postgres"},
    "login_password": {"type": "str", "default": "", "no_log": True},
    "login_db": {"type": "str", "default": "trading_db"},
    "login_unix_socket": {"type": "str", "default": ""},
    "connect_timeout": {"type": "int", "default": 10},
}

# Exit codes of the job programs, from sysexits.h like the shell jobs.
EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78

# Statements that query() runs: reads only. Anything else must go through
# change(), so an unrecognised statement is never run in check mode.
_READ_STATEMENT = re.compile(r"^\s*(SELECT|SHOW)\b", re.IGNORECASE)

# SQLSTATE classes that mean "try again later" for a short batch.
SQLSTATE_LOCK_NOT_AVAILABLE = "55P03"
SQLSTATE_QUERY_CANCELED = "57014"
SQLSTATE_DEADLOCK_DETECTED = "40P01"


class TradeopsError(Exception):
    """An error with a message for people and details as separate fields.

    The message names what failed and the object in double quotes, gives the
    cause and may end with "Hint: ...". It never contains a password or a
    bound parameter value. ``exit_code`` is the job program's exit code.
    """

    exit_code = EX_FAILURE

    def __init__(self, message, hint=None, **details):
        self.message = message
        self.hint = hint
        self.details = details
        text = message if hint is None else "%s Hint: %s" % (message, hint)
        super(TradeopsError, self).__init__(text)

    def as_dict(self):
        """Return the message and details for a module result or a log."""
        result = {"msg": str(self)}
        result.update(self.details)
        return result


class ConfigError(TradeopsError):
    """Invalid options or policies: nothing has been run."""

    exit_code = EX_CONFIG


class UnavailableError(TradeopsError):
    """PostgreSQL could not be reached, or the driver is missing."""

    exit_code = EX_UNAVAILABLE


class NotFoundError(TradeopsError):
    """A table, column or index named in the options does not exist."""

    exit_code = EX_FAILURE


class CheckModeViolation(TradeopsError):
    """A statement that may change data reached the read path."""

    exit_code = EX_FAILURE


def sqlstate_of(error):
    """Return the SQLSTATE of a psycopg2 error, or None."""
    return getattr(error, "pgcode", None)


def describe_db_error(error):
    """Return the first line of a server error message, without the query."""
    primary = None
    diag = getattr(error, "diag", None)
    if diag is not None:
        primary = diag.message_primary
    if not primary:
        primary = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return primary


def connection_kwargs(params, application_name="tradeops"):
    """Build psycopg2.connect() keyword arguments from the connection options.

    ``login_unix_socket`` wins over ``login_host``; an empty host means the
    default socket directory of libpq. An empty password is left out, so
    libpq falls back to the password file (PGPASSFILE or ~/.pgpass), or to
    ``passfile`` when the parameters name one.
    """
    kwargs = {
        "dbname": params.get("login_db") or "postgres",
        "user": params.get("login_user") or "postgres",
        "port": int(params.get("login_port") or 5432),
        "connect_timeout": int(params.get("connect_timeout") or 10),
        "application_name": application_name,
    }
    host = params.get("login_unix_socket") or params.get("login_host")
    if host:
        kwargs["host"] = host
    if params.get("login_password"):
        kwargs["password"] = params["login_password"]
    if params.get("passfile"):
        kwargs["passfile"] = params["passfile"]
    return kwargs


def connect(params, application_name="tradeops"):
    """Open an autocommit connection, or raise UnavailableError.

    The error names database, user, host and port, never the password.
    """
    if not HAS_PSYCOPG2:
        raise UnavailableError(
            "Failed to import the PostgreSQL driver \"psycopg2\": %s." % PSYCOPG2_IMPORT_ERROR,
            hint="Install python3-psycopg2 on the host that runs this module.")
    kwargs = connection_kwargs(params, application_name)
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.OperationalError as error:
        raise UnavailableError(
            "Failed to connect to database \"%s\" as user \"%s\" on \"%s\" port %s: %s"
            % (kwargs["dbname"], kwargs["user"], kwargs.get("host", "local socket"),
               kwargs["port"], describe_db_error(error)),
            hint="Check that PostgreSQL runs, that pg_hba.conf admits this user and that the password is right.",
            database=kwargs["dbname"], user=kwargs["user"])
    conn.autocommit = True
    return conn


# Connection keys a job settings file may give; they match the modules'
# login options, plus the password file the job reads instead of a password.
SETTINGS_CONNECTION_KEYS = ("login_host", "login_port", "login_user", "login_db", "login_unix_socket",
                            "connect_timeout", "passfile")


def load_job_settings(path, role, sections):
    """Read a job's JSON settings file and check its top-level shape.

    The file is written by an Ansible template, so it may start with
    "#" comment lines (the managed-file banner), which are skipped.
    `sections` maps each required key to its type (dict or list). Raise
    ConfigError naming the file and the fix when anything is off.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise ConfigError("Failed to read the settings file \"%s\": %s." % (path, error.strerror),
                          hint="Run the %s role, or pass --config." % role)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    try:
        config = json.loads("\n".join(lines))
    except ValueError as error:
        raise ConfigError("Invalid JSON in the settings file \"%s\": %s." % (path, error))
    if not isinstance(config, dict):
        raise ConfigError("Invalid settings file \"%s\": expected a JSON object." % path)
    for key, kind in sections:
        if not isinstance(config.get(key), kind):
            raise ConfigError("Invalid settings file \"%s\": \"%s\" is missing or not a %s."
                              % (path, key, kind.__name__))
    unknown = sorted(set(config.get("connection", {})) - set(SETTINGS_CONNECTION_KEYS))
    if unknown:
        raise ConfigError("Invalid settings file \"%s\": unknown connection keys %s." % (path, ", ".join(unknown)))
    return config


def elapsed_ms(started):
    """Return whole milliseconds since ``started`` (a time.monotonic() value)."""
    return int(round((time.monotonic() - started) * 1000))


class SqlRunner(object):
    """Run SQL for the tradeops modules, with the check-mode gate in one place.

    ``query()`` runs reads. ``change()`` and ``change_in_transaction()`` run
    statements that change data or take strong locks. In check mode they
    append the statement to ``would_execute`` and return None, and the
    session is read-only, so even a mistaken write through ``query()``
    fails. ``executed_commands`` lists what ran, and a statement repeated
    back to back (one batch after another) is listed once.
    """

    def __init__(self, conn, check_mode=False):
        self.conn = conn
        self.check_mode = check_mode
        self.executed_commands = []
        self.would_execute = []
        conn.autocommit = True
        if check_mode:
            with conn.cursor() as cur:
                cur.execute("SET default_transaction_read_only = on")

    def render(self, statement, params=None):
        """Return the statement as the text the server receives."""
        if sql is not None and isinstance(statement, sql.Composable):
            statement = statement.as_string(self.conn)
        if params is None:
            return statement
        with self.conn.cursor() as cur:
            text = cur.mogrify(statement, params)
        return text.decode("utf-8") if isinstance(text, bytes) else text

    @staticmethod
    def _remember(log, text):
        if not log or log[-1] != text:
            log.append(text)

    def query(self, statement, params=None):
        """Run a SELECT or SHOW and return its rows as a list of dicts."""
        text = self.render(statement, params)
        if not _READ_STATEMENT.match(text):
            raise CheckModeViolation(
                "Refused to run a statement that is not SELECT or SHOW through the read path.",
                hint="Run statements that change data through SqlRunner.change().")
        with self.conn.cursor() as cur:
            cur.execute(text)
            names = [column.name for column in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def query_value(self, statement, params=None):
        """Run a read and return the first column of its first row, or None."""
        rows = self.query(statement, params)
        if not rows:
            return None
        return next(iter(rows[0].values()))

    def change(self, statement, params=None, lock_timeout_ms=None, statement_timeout_ms=None):
        """Run a statement outside a transaction block; return its row count.

        In check mode nothing runs and the return value is None. Statements
        such as VACUUM, REINDEX CONCURRENTLY and DETACH PARTITION
        CONCURRENTLY need this path, because they cannot run inside BEGIN.
        The timeouts, when given, hold for this statement only.
        """
        text = self.render(statement, params)
        if self.check_mode:
            self._remember(self.would_execute, text)
            return None
        timeouts = [("lock_timeout", lock_timeout_ms), ("statement_timeout", statement_timeout_ms)]
        timeouts = [(name, value) for name, value in timeouts if value is not None]
        with self.conn.cursor() as cur:
            for name, value in timeouts:
                cur.execute("SELECT set_config(%s, %s, false)", (name, "%dms" % value))
            try:
                cur.execute(text)
                count = cur.rowcount
            finally:
                for name, _value in timeouts:
                    cur.execute("RESET " + name)
        self._remember(self.executed_commands, text)
        return count

    def change_in_transaction(self, statement, params=None, lock_timeout_ms=None, statement_timeout_ms=None):
        """Run one statement in its own short transaction; return its row count.

        The transaction sets lock_timeout and statement_timeout with SET
        LOCAL, so they end with it. On any error it rolls back and
        re-raises. In check mode nothing runs and the return value is None.
        """
        text = self.render(statement, params)
        if self.check_mode:
            self._remember(self.would_execute, text)
            return None
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                if lock_timeout_ms is not None:
                    cur.execute("SET LOCAL lock_timeout = %s", ("%dms" % lock_timeout_ms,))
                if statement_timeout_ms is not None:
                    cur.execute("SET LOCAL statement_timeout = %s", ("%dms" % statement_timeout_ms,))
                cur.execute(text)
                count = cur.rowcount
                cur.execute("COMMIT")
            except Exception:
                if not self.conn.closed:
                    self.conn.rollback()
                    # With autocommit on, rollback() sends nothing; make sure
                    # the explicit transaction ends too.
                    try:
                        cur.execute("ROLLBACK")
                    except psycopg2.Error:
                        pass
                raise
        self._remember(self.executed_commands, text)
        return count

    def close(self):
        if not self.conn.closed:
            self.conn.close()


def check_identifier(kind, name):
    """Raise ConfigError for a name that cannot be passed on safely.

    Quotes, spaces, semicolons and mixed case are fine, because every name
    is quoted with psycopg2.sql.Identifier. A percent sign is rejected,
    because psycopg2 would read it as a parameter placeholder once the
    quoted name is in a statement that also binds values.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("Invalid %s name %r: it must be a non-empty string." % (kind, name))
    if "%" in name or "\x00" in name:
        raise ConfigError(
            "Invalid %s name \"%s\": percent signs and NUL characters are not supported." % (kind, name),
            hint="Rename the object, or leave it out of the options.")
    if len(name.encode("utf-8")) > 63:
        raise ConfigError(
            "Invalid %s name \"%s\": PostgreSQL names are at most 63 bytes long." % (kind, name))
    return name


def table_identifier(schema, table):
    """Return a quoted schema-qualified table name."""
    return sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(table)])


def display_name(schema, table):
    """Return schema.table for messages, as written in the options."""
    return "%s.%s" % (schema, table)


def find_relation(runner, schema, name, kinds):
    """Return the pg_class row of a relation, or None when it does not exist.

    ``kinds`` is a string of pg_class.relkind letters to accept. The name is
    matched exactly, case and all, as a quoted identifier would be.
    """
    rows = runner.query(
        "SELECT c.oid, c.relname, c.relkind, n.nspname"
        " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name))
    if not rows or rows[0]["relkind"] not in kinds:
        return None
    return rows[0]


def similar_names(runner, schema, name, kinds):
    """Return up to three names in the schema that differ from name only in case."""
    rows = runner.query(
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND lower(c.relname) = lower(%s) AND c.relkind = ANY(%s)"
        " ORDER BY c.relname LIMIT 3",
        (schema, name, list(kinds)))
    return [row["relname"] for row in rows]


def require_table(runner, schema, table, database):
    """Return the pg_class row of a table, or raise NotFoundError."""
    row = find_relation(runner, schema, table, "rp")
    if row is not None:
        return row
    near = similar_names(runner, schema, table, "rp")
    if near:
        hint = "Names match exactly, case included; did you mean %s?" % ", ".join('"%s"' % n for n in near)
    else:
        hint = "Check the table name and schema, or mark the policy optional: true if the table may be absent."
    raise NotFoundError(
        "Table \"%s\" not found in schema \"%s\" of database \"%s\"." % (table, schema, database),
        hint=hint, table=table, schema=schema)


def require_index(runner, schema, index, database):
    """Return the pg_class row of an index, or raise NotFoundError."""
    row = find_relation(runner, schema, index, "iI")
    if row is not None:
        return row
    near = similar_names(runner, schema, index, "iI")
    if near:
        hint = "Names match exactly, case included; did you mean %s?" % ", ".join('"%s"' % n for n in near)
    else:
        hint = "List the indexes with \\di %s.* in psql, or remove the name from the options." % schema
    raise NotFoundError(
        "Index \"%s\" not found in schema \"%s\" of database \"%s\"." % (index, schema, database),
        hint=hint, index=index, schema=schema)


def current_database(runner):
    return runner.query_value("SELECT current_database()")
