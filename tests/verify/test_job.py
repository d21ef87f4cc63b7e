"""The scheduled job tradeops-verify-backups and its Python program, run as cron runs them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TEMPLATE_DB, VERIFIER, VERIFIER_PASSWORD

ROLE = os.path.join(REPO, "roles", "pg_backup_verify")
JOB_SCRIPT = os.path.join(ROLE, "files", "usr", "local", "sbin", "tradeops-verify-backups")
PROGRAM = os.path.join(ROLE, "files", "usr", "local", "lib", "tradeops", "python", "tradeops_verify_backups.py")
JOBS_LIB = os.path.join(REPO, "roles", "base", "files", "jobs.sh")


def pgpass_line(host, port, database, user, password):
    fields = [host, str(port), database, user, password]
    return ":".join(field.replace("\\", "\\\\").replace(":", "\\:") if field != "*" else field
                    for field in fields) + "\n"


class Job:
    """Settings, password file, log and state folders of one job run."""

    def __init__(self, root, cluster, backup_dir):
        self.root = root
        self.log_dir = os.path.join(root, "log")
        self.state_dir = os.path.join(root, "state")
        for folder in (self.log_dir, self.state_dir):
            os.mkdir(folder)
        self.passfile = os.path.join(root, "verify.pgpass")
        with open(self.passfile, "w", encoding="utf-8") as handle:
            handle.write(pgpass_line(cluster.host, cluster.port, "*", VERIFIER, VERIFIER_PASSWORD))
        os.chmod(self.passfile, 0o600)
        self.alert_log = os.path.join(root, "alerts.log")
        alert = os.path.join(root, "alert")
        with open(alert, "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\n{ printf 'subject=%%s\\n' \"$1\"; cat; } >> %s\n" % self.alert_log)
        os.chmod(alert, 0o755)
        self.config = {
            "connection": {"login_host": cluster.host, "login_port": cluster.port, "login_user": VERIFIER,
                           "login_db": "postgres", "connect_timeout": 5, "passfile": self.passfile},
            "scratch_template": TEMPLATE_DB, "jobs": 2, "amcheck_heapallindexed": True,
            "pg_bin_dir": cluster.bin, "work_dir": "", "alert_command": alert,
            "kinds": ["full"], "backup_dirs": {"full": backup_dir},
            "required_tables": {"full": ["public.orders"]},
        }
        self.config_path = os.path.join(root, "verify-backups.json")
        self.save()

    def save(self):
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write("# written by the tests\n" + json.dumps(self.config))

    def run(self, *args, env=None):
        environment = dict(os.environ)
        environment.pop("PGPASSWORD", None)
        environment.update(
            TRADEOPS_JOBS_LIB=JOBS_LIB, TRADEOPS_LOG_DIR=self.log_dir, TRADEOPS_LOCK_DIR=self.root,
            TRADEOPS_STATE_DIR=self.state_dir, TRADEOPS_PYTHON=sys.executable, TRADEOPS_VERIFY_PROGRAM=PROGRAM,
            TRADEOPS_VERIFY_CONFIG=self.config_path,
            # The program imports tradeops_verify from module_utils, as the
            # role installs it into /usr/local/lib/tradeops/python.
            PYTHONPATH=os.path.join(REPO, "module_utils"))
        environment.update(env or {})
        return subprocess.run(["bash", JOB_SCRIPT] + list(args), env=environment, capture_output=True,
                              text=True, timeout=300, check=False)

    def log(self):
        with open(os.path.join(self.log_dir, "verify-backups.log"), encoding="utf-8") as handle:
            return handle.read()

    def status(self):
        with open(os.path.join(self.state_dir, "verify-backups.status"), encoding="utf-8") as handle:
            return handle.read()


@pytest.fixture
def job(tmp_path, backups, verify_cluster):
    root = tmp_path / "job"
    root.mkdir()
    return Job(str(root), verify_cluster, backups.dir)


def test_job_verifies_newest_backup(job, backups):
    backups.full("20250101T003000Z")
    newest = backups.full("20250102T003000Z")

    result = job.run()

    assert result.returncode == 0, job.log()
    with open(newest + ".verify.json", encoding="utf-8") as handle:
        assert json.load(handle)["status"] == "ok"
    assert "verify-backups completed" in job.log()
    assert "exit_code=0" in job.status()
    assert not os.path.exists(job.alert_log)


def test_job_alerts_on_failed_verification(job, backups):
    path = backups.full()
    with open(path, "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02")

    result = job.run()

    assert result.returncode == 1
    with open(job.alert_log, encoding="utf-8") as handle:
        alert = handle.read()
    assert "subject=tradeops backup verification failed on" in alert
    assert "sha256: checksum mismatch" in alert
    assert "sha256: checksum mismatch" in job.log()
    assert "exit_code=1" in job.status()


def test_job_dry_run_restores_nothing(job, backups):
    path = backups.full()

    result = job.run(env={"TRADEOPS_DRY_RUN": "1"})

    assert result.returncode == 0, job.log()
    assert not os.path.exists(path + ".verify.json")
    assert "restore skipped: check mode restores nothing" in job.log()


def test_job_unreachable_server_exits_69(job, backups):
    backups.full()
    job.config["connection"]["login_port"] = 1
    job.save()

    result = job.run()

    assert result.returncode == 69
    assert "Failed to connect to database" in job.log()


def test_job_invalid_config_exits_78(job):
    job.config["kinds"] = ["nightly"]
    job.save()

    result = job.run()

    assert result.returncode == 78
    assert "unknown backup kind \"nightly\"" in job.log()


def test_job_invalid_argument_exits_64(job):
    result = job.run("--everything")

    assert result.returncode == 64


def test_job_without_backup_fails(job):
    result = job.run()

    assert result.returncode == 1
    assert "No full backup with a manifest found" in job.log()
