"""Shared fixtures: a throwaway PostgreSQL 15 cluster for the module tests.

The cluster runs from Debian's postgresql-15 binaries under a temporary
directory, on a free TCP port on 127.0.0.1 and a Unix socket in the same
directory. PostgreSQL refuses to run as root, so under root the server runs
as the ``postgres`` system user.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2
import pytest

PG_BIN = os.environ.get("TRADEOPS_PG_BIN", "/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(argv):
    """Prefix argv so that it runs as the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


class Cluster:
    """A running test cluster and the settings to reach it."""

    def __init__(self, datadir, sockdir, port):
        self.datadir = datadir
        self.sockdir = sockdir
        self.host = "127.0.0.1"
        self.port = port
        self.superuser = SUPERUSER
        self.bin = PG_BIN

    def dsn(self, dbname="postgres", user=SUPERUSER, password=None, host=None):
        """Return a libpq keyword DSN; without a password it uses the socket."""
        parts = {"dbname": dbname, "user": user, "port": str(self.port)}
        if password is None:
            parts["host"] = host or self.sockdir
        else:
            parts["host"] = host or self.host
            parts["password"] = password
        return " ".join("%s='%s'" % (k, v.replace("\\", "\\\\").replace("'", "\\'"))
                        for k, v in parts.items())

    def connect(self, dbname="postgres", **kwargs):
        conn = psycopg2.connect(self.dsn(dbname, **kwargs))
        conn.autocommit = True
        return conn

    def execute(self, sql, params=None, dbname="postgres"):
        """Run one statement as the superuser and return all rows, if any."""
        # No "with conn": psycopg2 would wrap the statement in a transaction
        # block, which CREATE DATABASE and VACUUM reject.
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def env(self):
        """Environment for client programs (pg_dump, psql) run as the superuser."""
        env = dict(os.environ)
        env.update(PGHOST=self.sockdir, PGPORT=str(self.port), PGUSER=SUPERUSER)
        return env


@pytest.fixture(scope="session")
def pg_cluster():
    """Start one PostgreSQL 15 cluster for the whole test session."""
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        pytest.fail("PostgreSQL 15 server binaries not found in %s; "
                    "install them with: apt-get install postgresql-15" % PG_BIN)
    topdir = tempfile.mkdtemp(prefix="tradeops-pgtest-")
    os.chmod(topdir, 0o755)
    datadir = os.path.join(topdir, "data")
    sockdir = os.path.join(topdir, "run")
    os.mkdir(sockdir)
    if os.geteuid() == 0:
        server_user = pwd.getpwnam("postgres")
        os.chown(topdir, server_user.pw_uid, server_user.pw_gid)
        os.chown(sockdir, server_user.pw_uid, server_user.pw_gid)
    port = _free_port()
    subprocess.run(_as_server_user([
        os.path.join(PG_BIN, "initdb"), "-D", datadir, "-U", SUPERUSER,
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
        "--locale=C.UTF-8",
    ]), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(_as_server_user([
        os.path.join(PG_BIN, "pg_ctl"), "-D", datadir, "-w", "-l",
        os.path.join(topdir, "server.log"), "-o",
        "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off" % (port, sockdir),
        "start",
    ]), check=True, stdout=subprocess.DEVNULL)
    cluster = Cluster(datadir, sockdir, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.execute("SELECT 1")
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield cluster
    subprocess.run(_as_server_user([
        os.path.join(PG_BIN, "pg_ctl"), "-D", datadir, "-m", "immediate", "stop",
    ]), check=False, stdout=subprocess.DEVNULL)
    shutil.rmtree(topdir, ignore_errors=True)
