"""Fixtures for the backup verification tests: a source database, real backups, a verifying role."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The logic files import each other as plain modules outside Ansible, as
# the job program does from /usr/local/lib/tradeops/python.
sys.path.insert(0, os.path.join(REPO, "module_utils"))

SOURCE_DB = "verify_source_db"
TEMPLATE_DB = "verify_test_template"
VERIFIER = "verify_test_verifier"
# Every character that .pgpass treats specially.
VERIFIER_PASSWORD = r"v:er\ify pass"

SCHEMA_SQL = """
CREATE TABLE instruments (id serial PRIMARY KEY, symbol text NOT NULL UNIQUE);
CREATE TABLE strategies (id serial PRIMARY KEY, name text NOT NULL UNIQUE, config jsonb NOT NULL DEFAULT '{}');
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    strategy_id integer NOT NULL REFERENCES strategies (id),
    instrument_id integer NOT NULL REFERENCES instruments (id),
    quantity numeric(18,8) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT TIMESTAMPTZ '2024-01-01'
);
CREATE INDEX idx_orders_strategy ON orders (strategy_id);
CREATE TABLE tick_data (
    instrument_id integer NOT NULL REFERENCES instruments (id),
    time timestamptz NOT NULL,
    price numeric(18,8) NOT NULL,
    volume numeric(18,8) NOT NULL
);
CREATE INDEX idx_tick_data_instrument_time ON tick_data (instrument_id, time);
INSERT INTO instruments (symbol) SELECT 'SYM' || i FROM generate_series(1, 20) i;
INSERT INTO strategies (name) SELECT 'strategy_' || i FROM generate_series(1, 5) i;
INSERT INTO orders (strategy_id, instrument_id, quantity)
    SELECT 1 + i % 5, 1 + i % 20, i FROM generate_series(1, 2000) i;
INSERT INTO tick_data (instrument_id, time, price, volume)
    SELECT 1 + i % 20, TIMESTAMPTZ '2024-01-01' + i * INTERVAL '1 second', 100 + (i % 997) / 7.0, i % 113
    FROM generate_series(1, 20000) i;
"""
TABLES = ("public.instruments", "public.orders", "public.strategies", "public.tick_data")


def admin_execute(cluster, statement, params=None, dbname="postgres"):
    """Run statements as the superuser outside a transaction block."""
    conn = cluster.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def databases(cluster):
    return {row[0] for row in admin_execute(cluster, "SELECT datname FROM pg_database")}


def source_checksum(cluster):
    """Return a digest of every row of the source tables, to prove that nothing changed them."""
    digest = hashlib.sha256()
    for table in TABLES:
        rows = admin_execute(cluster, "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
                                      " FROM %s t" % table, dbname=SOURCE_DB)
        digest.update(("%s=%s;" % (table, rows[0][0])).encode())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def verify_cluster(pg_cluster):
    """Create the source database, a verifying role and an amcheck template, as the role would."""
    existing = databases(pg_cluster)
    for name in (SOURCE_DB, TEMPLATE_DB):
        if name in existing:
            admin_execute(pg_cluster, "ALTER DATABASE %s IS_TEMPLATE false" % name)
        admin_execute(pg_cluster, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    admin_execute(pg_cluster, "DROP ROLE IF EXISTS %s" % VERIFIER)
    admin_execute(pg_cluster, "CREATE DATABASE %s" % SOURCE_DB)
    admin_execute(pg_cluster, SCHEMA_SQL, dbname=SOURCE_DB)
    admin_execute(pg_cluster, "CREATE ROLE %s LOGIN CREATEDB NOSUPERUSER PASSWORD %%s" % VERIFIER,
                  (VERIFIER_PASSWORD,))
    admin_execute(pg_cluster, "CREATE DATABASE %s TEMPLATE template0" % TEMPLATE_DB)
    admin_execute(pg_cluster, "CREATE SCHEMA tradeops_verify; CREATE EXTENSION amcheck SCHEMA tradeops_verify;"
                              " GRANT USAGE ON SCHEMA tradeops_verify TO %s;"
                              " GRANT EXECUTE ON FUNCTION tradeops_verify.bt_index_check(regclass, boolean)"
                              " TO %s" % (VERIFIER, VERIFIER), dbname=TEMPLATE_DB)
    admin_execute(pg_cluster, "ALTER DATABASE %s IS_TEMPLATE true" % TEMPLATE_DB)
    return pg_cluster


@pytest.fixture(autouse=True)
def source_and_scratch_guard(request, verify_cluster):
    """After every test: the source rows are unchanged and no scratch database is left."""
    before = source_checksum(verify_cluster)
    existing = databases(verify_cluster)
    yield
    assert source_checksum(verify_cluster) == before
    left = {name for name in databases(verify_cluster) - existing if name.startswith("tradeops_verify_")}
    assert left == set()


def pg_dump(cluster, path, *extra, dbname=SOURCE_DB):
    subprocess.run([os.path.join(cluster.bin, "pg_dump"), "--dbname=" + dbname, "--file=" + path] + list(extra),
                   env=cluster.env(), check=True)


def table_counts(cluster, tables=TABLES):
    return {table: admin_execute(cluster, "SELECT count(*) FROM ONLY %s" % table, dbname=SOURCE_DB)[0][0]
            for table in tables}


def write_manifest(path, kind="full", tables=None, **overrides):
    """Write <path>.manifest.json as the backup worker does (the same fields)."""
    with open(path, "rb") as handle:
        data = handle.read()
    manifest = {
        "manifest_version": 1, "kind": kind, "database": SOURCE_DB, "host": "test", "db_host": "127.0.0.1",
        "server_version": "15", "server_version_num": 150000, "pg_dump_version": "15", "format": "custom",
        "compression": "gzip:6", "file": os.path.basename(path), "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "started_at": "2025-01-01T00:30:00Z",
        "finished_at": "2025-01-01T00:30:05Z", "duration_seconds": 5.0, "snapshot": "00000003-1",
        "tables": tables if tables is not None else {},
    }
    manifest.update(overrides)
    with open(path + ".manifest.json", "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest


class Backups:
    """Makes real backups of the source database in a temporary folder."""

    def __init__(self, cluster, directory):
        self.cluster = cluster
        self.dir = directory

    def full(self, stamp="20250101T003000Z", *extra):
        path = os.path.join(self.dir, "full_backup_%s.dump" % stamp)
        pg_dump(self.cluster, path, "--format=custom", "--compress=6", *extra)
        write_manifest(path, tables=table_counts(self.cluster))
        return path

    def read_manifest(self, path):
        with open(path + ".manifest.json", encoding="utf-8") as handle:
            return json.load(handle)

    def rewrite_manifest(self, path, **changes):
        manifest = self.read_manifest(path)
        manifest.update(changes)
        with open(path + ".manifest.json", "w", encoding="utf-8") as handle:
            json.dump(manifest, handle)


@pytest.fixture
def backups(tmp_path, verify_cluster):
    os.chmod(tmp_path, 0o755)
    return Backups(verify_cluster, str(tmp_path))


@pytest.fixture
def superuser_params(verify_cluster):
    """Connection options of the superuser over the Unix socket."""
    return {"login_unix_socket": verify_cluster.sockdir, "login_port": verify_cluster.port,
            "login_user": verify_cluster.superuser, "login_db": "postgres", "connect_timeout": 5}


@pytest.fixture
def verifier_params(verify_cluster):
    """Connection options of the least-privilege verifying role over TCP with its password."""
    return {"login_host": verify_cluster.host, "login_port": verify_cluster.port, "login_user": VERIFIER,
            "login_password": VERIFIER_PASSWORD, "login_db": "postgres", "connect_timeout": 5}


def run_module(args, check=False):
    """Run library/pg_backup_verify through the ansible command, as a play would; return the result."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LIBRARY=os.path.join(REPO, "library"),
        ANSIBLE_MODULE_UTILS=os.path.join(REPO, "module_utils"),
    )
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-i", "localhost,",
            "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
            "-M", "library", "-m", "pg_backup_verify", "-a", json.dumps(args)]
    if check:
        argv.append("--check")
    completed = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    try:
        output = json.loads(completed.stdout)
    except ValueError:
        raise AssertionError("ansible printed no JSON (exit %d):\n%s\n%s"
                             % (completed.returncode, completed.stdout, completed.stderr))
    return output["plays"][0]["tasks"][0]["hosts"]["localhost"]
