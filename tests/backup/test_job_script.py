"""The bash job script around the worker: names, options, job log, lock and status file."""

import os
import shutil
import subprocess
import sys
import time

from conftest import BACKUP_PASSWORD, JOB_SCRIPT, JOBS_LIB, WORKER, wait_for


def install_job(setup, name="tradeops-db-backup"):
    """Copy the job script under its installed name and return (path, environment)."""
    bindir = os.path.join(setup.root, "sbin")
    os.makedirs(bindir, exist_ok=True)
    path = os.path.join(bindir, name)
    shutil.copy(JOB_SCRIPT, path)
    os.chmod(path, 0o755)
    for sub in ("log", "lock", "status"):
        os.makedirs(os.path.join(setup.root, sub), exist_ok=True)
    env = dict(os.environ)
    env.update({
        "TRADEOPS_JOBS_LIB": JOBS_LIB,
        "TRADEOPS_BACKUP_WORKER": WORKER,
        "TRADEOPS_PYTHON": sys.executable,
        "TRADEOPS_BACKUP_CONFIG": setup.config_path,
        "TRADEOPS_LOG_DIR": os.path.join(setup.root, "log"),
        "TRADEOPS_LOCK_DIR": os.path.join(setup.root, "lock"),
        "TRADEOPS_STATE_DIR": os.path.join(setup.root, "status"),
    })
    return path, env


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_job_help_and_usage(setup):
    path, env = install_job(setup)
    result = subprocess.run([path, "--help"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "Usage: tradeops-db-backup" in result.stdout
    result = subprocess.run([path, "--frobnicate"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 64
    wrong_name, env = install_job(setup, "backup-job")
    result = subprocess.run([wrong_name], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 64


def test_job_writes_log_and_status(setup):
    path, env = install_job(setup)
    result = subprocess.run([path, "--kind", "critical", "--json"], env=env, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"kind": "critical"' in result.stdout
    log = read(os.path.join(setup.root, "log", "db-backup.log"))
    assert "db-backup started with --kind critical --json" in log
    assert "wrote " in log
    assert "db-backup completed" in log
    assert BACKUP_PASSWORD not in log
    status = read(os.path.join(setup.root, "status", "db-backup.status"))
    assert "exit_code=0" in status


def test_job_dry_run_logs_prefix(setup):
    path, env = install_job(setup)
    result = subprocess.run([path, "--dry-run"], env=env, capture_output=True, text=True, check=False,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    log = read(os.path.join(setup.root, "log", "db-backup.log"))
    assert "[DRY-RUN] " in log
    assert "would write" in log
    assert setup.listing() == []


def test_job_failure_is_logged(setup):
    path, env = install_job(setup)
    setup.write_pgpass("wrong password")
    result = subprocess.run([path, "--kind", "full"], env=env, capture_output=True, text=True, check=False,
                            timeout=120)
    assert result.returncode == 78
    log = read(os.path.join(setup.root, "log", "db-backup.log"))
    assert "password authentication failed" in log
    assert "db-backup failed (code 78)" in log
    assert "wrong password" not in log


def test_job_second_run_exits_75(setup):
    path, env = install_job(setup)
    setup.set("kind:full", "compression", "zstd")
    setup.slow_compressor(3)
    first = subprocess.Popen([path, "--kind", "full"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: any(n.startswith(".tmp-") for n in setup.listing()))
    started = time.monotonic()
    second = subprocess.run([path, "--kind", "full"], env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 75
    assert time.monotonic() - started < 3
    first.communicate(timeout=120)
    assert first.returncode == 0
    status = read(os.path.join(setup.root, "status", "db-backup.status"))
    assert "exit_code=0" in status
    assert [n for n in setup.listing() if n.startswith(".tmp-")] == []
