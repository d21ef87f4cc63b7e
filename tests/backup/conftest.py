"""Fixtures for the backup worker tests: a small trading database and a job setup per test."""

import configparser
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLE = os.path.join(REPO, "roles", "pg_backup")
WORKER = os.path.join(ROLE, "files", "usr", "local", "lib", "tradeops", "tradeops_backup.py")
JOB_SCRIPT = os.path.join(ROLE, "files", "usr", "local", "sbin", "tradeops-backup-job")
JOBS_LIB = os.path.join(REPO, "roles", "base", "files", "jobs.sh")

DB_NAME = "backup_test_db"
BACKUP_USER = "backup_test_reader"
# Every character that .pgpass or a shell treats specially.
BACKUP_PASSWORD = r"p:a\ss@w$rd with spaces"

SCHEMA_SQL = """
CREATE TABLE instruments (id serial PRIMARY KEY, symbol text NOT NULL UNIQUE);
CREATE TABLE strategies (id serial PRIMARY KEY, name text NOT NULL UNIQUE, config jsonb NOT NULL DEFAULT '{}');
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    strategy_id integer NOT NULL REFERENCES strategies (id),
    instrument_id integer NOT NULL REFERENCES instruments (id),
    quantity numeric(18,8) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE positions (
    id bigserial PRIMARY KEY,
    strategy_id integer NOT NULL REFERENCES strategies (id),
    instrument_id integer NOT NULL REFERENCES instruments (id),
    quantity numeric(18,8) NOT NULL
);
CREATE TABLE order_history (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id),
    status text NOT NULL
);
CREATE TABLE strategy_performance (
    strategy_id integer NOT NULL REFERENCES strategies (id),
    date date NOT NULL,
    pnl numeric(18,8) NOT NULL DEFAULT 0,
    PRIMARY KEY (strategy_id, date)
);
CREATE TABLE tick_data (
    instrument_id integer NOT NULL REFERENCES instruments (id),
    time timestamptz NOT NULL,
    price numeric(18,8) NOT NULL,
    volume numeric(18,8) NOT NULL
);
INSERT INTO instruments (symbol) SELECT 'SYM' || i FROM generate_series(1, 20) i;
INSERT INTO strategies (name) SELECT 'strategy_' || i FROM generate_series(1, 5) i;
INSERT INTO orders (strategy_id, instrument_id, quantity)
    SELECT 1 + i % 5, 1 + i % 20, i FROM generate_series(1, 3000) i;
INSERT INTO positions (strategy_id, instrument_id, quantity)
    SELECT 1 + i % 5, 1 + i % 20, i FROM generate_series(1, 500) i;
INSERT INTO order_history (order_id, status)
    SELECT 1 + i % 3000, 'filled' FROM generate_series(1, 4000) i;
INSERT INTO strategy_performance (strategy_id, date)
    SELECT s, DATE '2024-01-01' + d FROM generate_series(1, 5) s, generate_series(0, 99) d;
-- Large enough (several MB as text) that pg_dump blocks on a slow pipe
-- while it copies this table, and that it does not fit a 2 MB tmpfs.
INSERT INTO tick_data (instrument_id, time, price, volume)
    SELECT 1 + i % 20, TIMESTAMPTZ '2024-01-01' + i * INTERVAL '1 second', 100 + (i % 997) / 7.0, i % 113
    FROM generate_series(1, 100000) i;
"""


def admin_execute(cluster, sql, params=None, dbname="postgres"):
    """Run statements as the superuser outside a transaction block (CREATE DATABASE needs that)."""
    conn = cluster.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


@pytest.fixture(scope="session")
def backup_db(pg_cluster):
    """Create the test database and a least-privilege backup role like trading_backup."""
    admin_execute(pg_cluster, "DROP DATABASE IF EXISTS %s" % DB_NAME)
    admin_execute(pg_cluster, "DROP ROLE IF EXISTS %s" % BACKUP_USER)
    admin_execute(pg_cluster, "CREATE DATABASE %s" % DB_NAME)
    admin_execute(pg_cluster, SCHEMA_SQL, dbname=DB_NAME)
    admin_execute(pg_cluster, "CREATE ROLE %s LOGIN PASSWORD %%s" % BACKUP_USER, (BACKUP_PASSWORD,))
    admin_execute(pg_cluster, "GRANT pg_read_all_data TO %s" % BACKUP_USER)
    admin_execute(pg_cluster, "GRANT CONNECT ON DATABASE %s TO %s" % (DB_NAME, BACKUP_USER))
    admin_execute(pg_cluster, "ALTER ROLE %s SET default_transaction_read_only = on" % BACKUP_USER)
    return pg_cluster


def pgpass_line(host, port, database, user, password):
    """Return a .pgpass line with ':' and '\\' escaped as libpq expects."""
    fields = [host, str(port), database, user, password]
    return ":".join(field.replace("\\", "\\\\").replace(":", "\\:") for field in fields) + "\n"


def load_worker():
    """Import the worker as a module, for tests of its functions."""
    spec = importlib.util.spec_from_file_location("tradeops_backup", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BackupSetup:
    """A backup folder, password file and settings file for one test."""

    def __init__(self, root, cluster):
        self.root = root
        self.cluster = cluster
        self.dirs = {}
        for name in ("postgres", "config", "logs", "strategies"):
            self.dirs[name] = os.path.join(root, "backups", name)
            os.makedirs(self.dirs[name])
        self.passfile = os.path.join(root, "pgpass")
        self.write_pgpass(BACKUP_PASSWORD)
        self.config_path = os.path.join(root, "backup.conf")
        self.app_root = os.path.join(root, "trading-app")
        self.alert_log = os.path.join(root, "alerts.log")
        self.config = self.default_config()
        self.save()

    def write_pgpass(self, password, port=None):
        with open(self.passfile, "w", encoding="utf-8") as handle:
            handle.write("# written by the backup tests\n")
            handle.write(pgpass_line(self.cluster.host, port or self.cluster.port, DB_NAME, BACKUP_USER,
                                     password))
        os.chmod(self.passfile, 0o600)

    def default_config(self):
        config = configparser.ConfigParser(interpolation=None)
        config.read_dict({
            "backup": {"kinds": "full schema critical", "lock_wait": "0", "file_mode": "0640"},
            "database": {
                "host": self.cluster.host, "port": str(self.cluster.port), "name": DB_NAME,
                "user": BACKUP_USER, "passfile": self.passfile, "connect_timeout": "5",
                "pg_dump": os.path.join(self.cluster.bin, "pg_dump"),
            },
            "retention": {"keep_min": "3", "require_verified_kinds": ""},
            "alert": {"command": ""},
            "tools": {"zstd": shutil.which("zstd") or "/usr/bin/zstd", "gzip": shutil.which("gzip"),
                      "pigz": "/usr/bin/pigz", "tar": shutil.which("tar")},
            "kind:full": {"directory": self.dirs["postgres"], "retention_days": "7",
                          "compression": "gzip", "compression_level": "6"},
            "kind:schema": {"directory": self.dirs["postgres"], "retention_days": "30",
                            "compression": "gzip", "compression_level": "6"},
            "kind:critical": {"directory": self.dirs["postgres"], "retention_days": "14",
                              "compression": "gzip", "compression_level": "6",
                              "tables": "public.positions public.orders public.strategies public.order_history"},
            "kind:strategies": {"directory": self.dirs["strategies"], "retention_days": "30",
                                "compression": "zstd", "compression_level": "3",
                                "tables": "public.strategies public.strategy_performance"},
            "kind:config": {"directory": self.dirs["config"], "retention_days": "14",
                            "compression": "zstd", "compression_level": "3",
                            "paths": " ".join(os.path.join(self.app_root, p) for p in
                                              (".env", "config", "docker-compose.yml", "scripts"))},
            "kind:logs": {"directory": self.dirs["logs"], "retention_days": "7",
                          "compression": "zstd", "compression_level": "3",
                          "paths": os.path.join(self.app_root, "logs")},
        })
        return config

    def save(self):
        with open(self.config_path, "w", encoding="utf-8") as handle:
            self.config.write(handle)

    def set(self, section, option, value):
        self.config.set(section, option, value)
        self.save()

    def use_alert_hook(self, exit_code=0):
        """Install an alert hook that appends its subject and message to alert_log."""
        hook = os.path.join(self.root, "alert-hook")
        with open(hook, "w", encoding="utf-8") as handle:
            handle.write(textwrap.dedent("""\
                #!/bin/sh
                {{ printf 'subject=%s\\n' "$1"; cat; }} >> {log}
                exit {code}
                """).format(log=self.alert_log, code=exit_code))
        os.chmod(hook, 0o755)
        self.set("alert", "command", hook)

    def slow_compressor(self, delay_seconds):
        """Make zstd start reading only after a delay, so that pg_dump blocks on the pipe."""
        wrapper = os.path.join(self.root, "slow-zstd")
        with open(wrapper, "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\nsleep %s\nexec %s \"$@\"\n" % (delay_seconds, shutil.which("zstd")))
        os.chmod(wrapper, 0o755)
        self.set("tools", "zstd", wrapper)

    def held_compressor(self):
        """Make zstd start reading only once the returned flag file exists.

        Until then pg_dump blocks on the full pipe and the server blocks
        inside the COPY that feeds it, for as long as the test needs.
        """
        flag = os.path.join(self.root, "release-compressor")
        wrapper = os.path.join(self.root, "held-zstd")
        with open(wrapper, "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\nwhile [ ! -e %s ]; do sleep 0.1; done\nexec %s \"$@\"\n"
                         % (flag, shutil.which("zstd")))
        os.chmod(wrapper, 0o755)
        self.set("tools", "zstd", wrapper)
        return flag

    def worker_argv(self, *args):
        return [sys.executable, WORKER, "--config", self.config_path] + list(args)

    def run(self, *args, timeout=120):
        """Run the worker to the end and return the CompletedProcess."""
        return subprocess.run(self.worker_argv(*args), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def start(self, *args):
        return subprocess.Popen(self.worker_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def listing(self, kind_dir="postgres"):
        return sorted(os.listdir(self.dirs[kind_dir]))

    def backups(self, prefix, kind_dir="postgres"):
        """Return the backup files (not manifests) whose name starts with prefix."""
        return [name for name in self.listing(kind_dir)
                if name.startswith(prefix) and not name.endswith(".json")]

    def manifest(self, name, kind_dir="postgres"):
        with open(os.path.join(self.dirs[kind_dir], name + ".manifest.json"), encoding="utf-8") as handle:
            return json.load(handle)


@pytest.fixture
def setup(tmp_path, backup_db):
    os.chmod(tmp_path, 0o755)
    return BackupSetup(str(tmp_path), backup_db)


def wait_for(predicate, timeout=30, interval=0.05):
    """Poll predicate until it returns a true value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail("condition not met within %s seconds" % timeout)


def looks_like_backup(name):
    """True for any file a reader could take for a backup or its manifest."""
    return not name.startswith(".") and (".dump" in name or ".tar" in name or name.endswith(".json"))


def file_mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)
