"""Fixtures for the module tests: a database per test file, module runs."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The logic files import each other as plain modules outside Ansible, as
# the job programs do from /usr/local/lib/tradeops/python.
sys.path.insert(0, os.path.join(REPO, "module_utils"))


@pytest.fixture(scope="module")
def database(pg_cluster, request):
    """Create an empty database named after the test file; drop it afterwards."""
    name = "tradeops_" + request.module.__name__.rsplit(".", 1)[-1]
    run_outside_transaction(pg_cluster, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    run_outside_transaction(pg_cluster, 'CREATE DATABASE "%s"' % name)
    yield name
    run_outside_transaction(pg_cluster, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def run_outside_transaction(pg_cluster, statement, dbname="postgres"):
    """Run a statement that cannot run in a transaction block (CREATE DATABASE, VACUUM)."""
    conn = pg_cluster.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def connection_params(pg_cluster, database):
    """Connection options as the modules take them, over the Unix socket."""
    return {
        "login_unix_socket": pg_cluster.sockdir,
        "login_port": pg_cluster.port,
        "login_user": pg_cluster.superuser,
        "login_db": database,
        "connect_timeout": 5,
    }


def run_module(module_name, args, check=False):
    """Run a module from library/ through the ansible command, as a play would.

    Returns the module result as a dict.
    """
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LIBRARY=os.path.join(REPO, "library"),
        ANSIBLE_MODULE_UTILS=os.path.join(REPO, "module_utils"),
    )
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost",
            "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % sys.executable,
            "-m", module_name, "-a", json.dumps(args)]
    if check:
        argv.append("--check")
    completed = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    try:
        output = json.loads(completed.stdout)
    except ValueError:
        raise AssertionError("ansible printed no JSON (exit %d):\n%s\n%s"
                             % (completed.returncode, completed.stdout, completed.stderr))
    return output["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.fixture
def module_runner():
    return run_module
