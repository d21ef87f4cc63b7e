"""Tests of the job program that the cron jobs run, as a member of the owner role."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

CLI = os.path.join(REPO, "roles", "pg_maintenance", "files", "usr", "local", "lib", "tradeops", "python",
                   "tradeops_pg_jobs.py")
OWNER = "cli_owner"
MAINT = "cli_maint"
# A colon, a backslash and a space, as the role escapes them in .pgpass.
PASSWORD = "m:a\\int pw"

SCHEMA = """
DROP TABLE IF EXISTS tick_data, orders CASCADE;
CREATE TABLE tick_data (instrument_id int, time timestamptz NOT NULL);
CREATE INDEX idx_tick_data_instrument_time ON tick_data (instrument_id, time);
INSERT INTO tick_data SELECT i % 5, now() - make_interval(hours => i) FROM generate_series(1, 2000) i;
CREATE TABLE orders (id serial PRIMARY KEY, strategy_id int);
CREATE INDEX idx_orders_strategy ON orders (strategy_id);
ALTER TABLE tick_data OWNER TO {owner};
ALTER TABLE orders OWNER TO {owner};
""".format(owner=OWNER)


@pytest.fixture(scope="module")
def job_env(pg_cluster, database, tmp_path_factory):
    """Create the owner and maintenance roles, the tables, a .pgpass and the settings file."""
    for role in (MAINT, OWNER):
        if pg_cluster.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
            pg_cluster.execute("DROP OWNED BY %s CASCADE" % role, dbname=database)
            pg_cluster.execute("DROP ROLE %s" % role)
    pg_cluster.execute("CREATE ROLE %s NOLOGIN" % OWNER)
    pg_cluster.execute("CREATE ROLE %s LOGIN PASSWORD %%s IN ROLE %s" % (MAINT, OWNER), (PASSWORD,))
    pg_cluster.execute(SCHEMA, dbname=database)

    directory = tmp_path_factory.mktemp("jobs")
    passfile = directory / "pgpass"
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    passfile.write_text("%s:%d:%s:%s:%s\n" % (pg_cluster.host, pg_cluster.port, database, MAINT, escaped))
    passfile.chmod(0o600)
    config = {
        "connection": {"login_host": pg_cluster.host, "login_port": pg_cluster.port, "login_user": MAINT,
                       "login_db": database, "connect_timeout": 5, "passfile": str(passfile)},
        "maintenance": {"schema": "public", "vacuum_tables": ["tick_data", "orders"],
                        "reindex_indexes": ["idx_tick_data_instrument_time", "idx_orders_strategy"],
                        "concurrently": True, "analyze_database": True, "invalid_indexes": "rebuild",
                        "reports": ["unused_indexes", "sizes", "table_stats"], "lock_timeout_ms": 5000},
        "cleanup": {"schema": "public", "batch_size": 300, "lock_timeout_ms": 2000, "statement_timeout_ms": 60000,
                    "lock_retries": 3, "retry_delay_ms": 500, "analyze_tables": ["tick_data", "orders"],
                    "policies": [{"table": "tick_data", "time_column": "time", "max_age": "30 days"},
                                 {"table": "system_logs", "time_column": "created_at", "max_age": "90 days",
                                  "optional": True}]},
    }
    path = directory / "pg_maintenance.json"
    path.write_text("# Managed by Ansible\n" + json.dumps(config, indent=2))
    yield {"config": str(path), "settings": config, "directory": directory}
    pg_cluster.execute("DROP OWNED BY %s CASCADE" % OWNER, dbname=database)
    pg_cluster.execute("DROP OWNED BY %s CASCADE" % MAINT, dbname=database)
    pg_cluster.execute("DROP ROLE IF EXISTS %s" % MAINT)
    pg_cluster.execute("DROP ROLE IF EXISTS %s" % OWNER)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "module_utils"))
    env.pop("PGPASSWORD", None)
    return subprocess.run([sys.executable, CLI] + list(args), env=env, capture_output=True, text=True, timeout=120)


def write_config(job_env, name, change):
    settings = json.loads(json.dumps(job_env["settings"]))
    change(settings)
    path = job_env["directory"] / name
    path.write_text(json.dumps(settings))
    return str(path)


def test_cleanup_check_then_real(pg_cluster, database, job_env):
    preview = run_cli("cleanup", "--config", job_env["config"], "--check")
    assert preview.returncode == 0, preview.stderr
    assert "retention tick_data: would delete 1281 rows and drop 0 partitions" in preview.stderr
    assert "retention system_logs: skipped, the table does not exist" in preview.stderr
    assert pg_cluster.execute("SELECT count(*) FROM tick_data", dbname=database)[0][0] == 2000

    result = run_cli("cleanup", "--config", job_env["config"])
    assert result.returncode == 0, result.stderr
    assert "retention tick_data: deleted 1281 rows in 5 batches" in result.stderr
    assert "ANALYZE tick_data: ok in" in result.stderr
    assert pg_cluster.execute("SELECT count(*) FROM tick_data", dbname=database)[0][0] == 719
    assert PASSWORD not in result.stderr


def test_maintenance_as_member_of_owner(job_env):
    result = run_cli("maintenance", "--config", job_env["config"])
    assert result.returncode == 0, result.stderr
    for line in ("VACUUM tick_data: ok in", "REINDEX idx_orders_strategy: ok in", "ANALYZE tradeops_test_jobs_cli",
                 "unused indexes: ", "table size tick_data: total", "table stats orders: "):
        assert line in result.stderr


def test_usage_error_exits_64():
    assert run_cli("vacuum").returncode == 64


def test_missing_config_exits_78(job_env):
    result = run_cli("maintenance", "--config", str(job_env["directory"] / "absent.json"))
    assert result.returncode == 78
    assert result.stderr.startswith('Failed to read the settings file "')


def test_invalid_policy_exits_78(job_env):
    path = write_config(job_env, "bad_policy.json",
                        lambda s: s["cleanup"]["policies"].append({"table": "x", "max_age": "soon"}))
    result = run_cli("cleanup", "--config", path)
    assert result.returncode == 78
    assert result.stderr.strip() == 'Invalid retention policy #2 (table "x"): missing "time_column".'


def test_unreachable_database_exits_69(job_env):
    path = write_config(job_env, "wrong_port.json", lambda s: s["connection"].update(login_port=1))
    result = run_cli("maintenance", "--config", path)
    assert result.returncode == 69
    assert result.stderr.startswith('Failed to connect to database "')
    assert PASSWORD not in result.stderr


def test_missing_index_exits_1(job_env):
    path = write_config(job_env, "missing_index.json",
                        lambda s: s["maintenance"]["reindex_indexes"].append("idx_gone"))
    result = run_cli("maintenance", "--config", path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith('Index "idx_gone" not found in schema "public"')
