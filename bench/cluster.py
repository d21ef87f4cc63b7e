"""A throwaway PostgreSQL 15 cluster for the benchmarks.

The cluster is set up the way tests/conftest.py sets up the test cluster
(initdb under a temporary directory, a free TCP port on 127.0.0.1, the Unix
socket in the same directory, the server run as the postgres user when the
program runs as root), except that fsync stays on, so that commit and
checkpoint costs are part of every number.
"""

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2

log = logging.getLogger("bench.cluster")

SUPERUSER = "postgres"


def find_free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_server_user(argv):
    """Prefix argv so that it runs as the postgres user when the program runs as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


class Cluster:
    """A running PostgreSQL cluster in a temporary directory, removed by stop()."""

    def __init__(self, pg_bin):
        self.pg_bin = pg_bin
        self.topdir = None
        self.datadir = None
        self.sockdir = None
        self.port = None
        self.running = False

    def bin(self, program):
        return os.path.join(self.pg_bin, program)

    def start(self):
        if not os.path.exists(self.bin("initdb")):
            raise RuntimeError("PostgreSQL server binaries not found in %s; install them with "
                               "apt-get install postgresql-15, or pass --pg-bin" % self.pg_bin)
        self.topdir = tempfile.mkdtemp(prefix="tradeops-bench-")
        os.chmod(self.topdir, 0o755)
        self.datadir = os.path.join(self.topdir, "data")
        self.sockdir = os.path.join(self.topdir, "run")
        os.mkdir(self.sockdir)
        if os.geteuid() == 0:
            server_user = pwd.getpwnam("postgres")
            os.chown(self.topdir, server_user.pw_uid, server_user.pw_gid)
            os.chown(self.sockdir, server_user.pw_uid, server_user.pw_gid)
        self.port = find_free_port()
        log.info("starting PostgreSQL in %s on port %d", self.topdir, self.port)
        subprocess.run(as_server_user([
            self.bin("initdb"), "-D", self.datadir, "-U", SUPERUSER, "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        ]), check=True, stdout=subprocess.DEVNULL)
        subprocess.run(as_server_user([
            self.bin("pg_ctl"), "-D", self.datadir, "-w", "-l", os.path.join(self.topdir, "server.log"),
            "-o", "-p %d -k %s -c listen_addresses=127.0.0.1" % (self.port, self.sockdir), "start",
        ]), check=True, stdout=subprocess.DEVNULL)
        self.running = True
        deadline = time.monotonic() + 30
        while True:
            try:
                self.execute("SELECT 1")
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self):
        """Stop the server and remove its directory, also after a failed start."""
        if self.running:
            log.info("stopping PostgreSQL on port %d", self.port)
            subprocess.run(as_server_user([self.bin("pg_ctl"), "-D", self.datadir, "-m", "fast", "-w", "stop"]),
                           check=False, stdout=subprocess.DEVNULL)
            self.running = False
        if self.topdir:
            shutil.rmtree(self.topdir, ignore_errors=True)
            self.topdir = None

    def work_dir(self, name):
        """Create a directory for backup files inside the cluster's temporary directory."""
        path = os.path.join(self.topdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def params(self, dbname="postgres"):
        """Return the tradeops_postgres connection options of the superuser over the socket."""
        return {"login_unix_socket": self.sockdir, "login_port": self.port, "login_user": SUPERUSER,
                "login_db": dbname, "connect_timeout": 10}

    def connect(self, dbname="postgres", user=SUPERUSER):
        conn = psycopg2.connect(host=self.sockdir, port=self.port, dbname=dbname, user=user)
        conn.autocommit = True
        return conn

    def execute(self, statement, params=None, dbname="postgres"):
        """Run one statement in autocommit mode and return all rows, if any."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def value(self, statement, params=None, dbname="postgres"):
        return self.execute(statement, params, dbname)[0][0]

    def env(self, user=SUPERUSER, dbname=None):
        """Return the environment for client programs (pg_dump, psql)."""
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        env.update(PGHOST=self.sockdir, PGPORT=str(self.port), PGUSER=user)
        if dbname:
            env["PGDATABASE"] = dbname
        else:
            env.pop("PGDATABASE", None)
        return env

    def create_database(self, name, template="template0", owner=None):
        self.drop_database(name)
        statement = "CREATE DATABASE %s TEMPLATE %s" % (name, template)
        if owner:
            statement += " OWNER %s" % owner
        if template != "template0":
            # FILE_COPY copies the files after a checkpoint. The default
            # WAL_LOG strategy would write the whole database into the WAL.
            statement += " STRATEGY FILE_COPY"
        self.execute(statement)

    def drop_database(self, name):
        self.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
