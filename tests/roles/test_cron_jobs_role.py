"""The cron_jobs role run for real on this machine, writing into a temporary directory."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PLAYBOOK = """
- hosts: all
  gather_facts: false
  roles:
    - role: cron_jobs
"""


def run_role(tmp_path, groups, extra_vars):
    """Apply the role to localhost as a member of `groups`; return (rc, output, cron file text)."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {
        group: {"hosts": {"localhost": {"ansible_connection": "local",
                                        "ansible_python_interpreter": sys.executable}}}
        for group in groups}}}))
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    variables = {"cron_jobs_dir": str(tmp_path),
                 "cron_jobs_output_log": str(tmp_path / "cron.log"),
                 "cron_jobs_output_log_owner": str(os.getuid()),
                 "cron_jobs_output_log_group": str(os.getgid())}
    variables.update(extra_vars)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               ANSIBLE_ROLES_PATH=os.path.join(REPO, "roles"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
         str(playbook), "-e", json.dumps(variables)],
        cwd=REPO, env=env, capture_output=True, text=True, check=False)
    cron_file = tmp_path / variables.get("cron_jobs_file", "trading_app_tasks")
    text = cron_file.read_text() if cron_file.exists() else None
    return result.returncode, result.stdout + result.stderr, text


def entries(text):
    return [line for line in text.splitlines()
            if line and not line.startswith("#") and "=" not in line.split()[0]]


@pytest.fixture
def output_suffix(tmp_path):
    return " >>%s 2>&1" % (tmp_path / "cron.log")


def test_db_host_gets_db_jobs_only(tmp_path, output_suffix):
    rc, output, text = run_role(tmp_path, ["db"], {})
    assert rc == 0, output
    commands = [line.split()[6] for line in entries(text)]
    assert "/usr/local/sbin/tradeops-db-backup" in commands
    assert "/usr/local/sbin/tradeops-broker-data" not in commands


def test_override_retimes_job(tmp_path, output_suffix):
    rc, output, text = run_role(tmp_path, ["db"], {
        "cron_jobs_overrides": {"db_backup": {"schedule": "15 23 * * *"}}})
    assert rc == 0, output
    assert "15 23 * * * tradeops /usr/local/sbin/tradeops-db-backup" + output_suffix in entries(text)


def test_override_disables_job(tmp_path):
    rc, output, text = run_role(tmp_path, ["db"], {
        "cron_jobs_overrides": {"weekly_report": {"enabled": False}}})
    assert rc == 0, output
    assert not any("tradeops-weekly-report" in line for line in entries(text))
    assert "weekly_report" not in text


def test_percent_in_command_is_escaped(tmp_path, output_suffix):
    rc, output, text = run_role(tmp_path, ["app"], {"cron_jobs_overrides": {"stamp": {
        "schedule": "*/5 * * * *", "user": "root", "groups": ["app"],
        "command": "date +%Y-%m-%d"}}})
    assert rc == 0, output
    assert "*/5 * * * * root date +\\%Y-\\%m-\\%d" + output_suffix in entries(text)


def test_second_run_changes_nothing(tmp_path):
    rc, output, _ = run_role(tmp_path, ["db"], {})
    assert rc == 0, output
    rc, output, _ = run_role(tmp_path, ["db"], {})
    assert rc == 0, output
    assert "changed=0" in output


def test_invalid_schedule_rejected(tmp_path):
    rc, output, text = run_role(tmp_path, ["db"], {
        "cron_jobs_overrides": {"db_backup": {"schedule": "30 0 * *"}}})
    assert rc != 0
    assert "Cron job 'db_backup' is invalid" in output
    assert "'30 0 * *'" in output
    assert text is None


def test_file_name_with_dot_rejected(tmp_path):
    rc, output, _ = run_role(tmp_path, ["db"], {"cron_jobs_file": "trading.tasks"})
    assert rc != 0
    assert "cron_jobs_file 'trading.tasks' is invalid" in output
    assert not (tmp_path / "trading.tasks").exists()


def test_cron_file_mode(tmp_path):
    rc, output, _ = run_role(tmp_path, ["db"], {})
    assert rc == 0, output
    assert oct((tmp_path / "trading_app_tasks").stat().st_mode & 0o777) == "0o644"
