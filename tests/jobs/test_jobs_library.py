"""The shared job library jobs.sh, sourced by small job scripts run with bash."""

import os
import subprocess
import time

import pytest

LIBRARY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..",
                                       "roles", "base", "files", "jobs.sh"))


@pytest.fixture
def job_env(tmp_path):
    """Environment that points the library's log, lock and state dirs at tmp_path."""
    for name in ("log", "lock", "state"):
        (tmp_path / name).mkdir()
    env = dict(os.environ)
    env.update(TRADEOPS_LOG_DIR=str(tmp_path / "log"), TRADEOPS_LOCK_DIR=str(tmp_path / "lock"),
               TRADEOPS_STATE_DIR=str(tmp_path / "state"), TRADEOPS_LOCK_WAIT="0",
               TRADEOPS_DRY_RUN="0")
    return env


def run_job(tmp_path, env, body, name="sample", background=False):
    # A new script file per run: bash reads a script while it runs, so a
    # rewrite would corrupt a run still in progress.
    script = tmp_path / ("%s-%d.sh" % (name, len(list(tmp_path.glob("*.sh")))))
    script.write_text("#!/bin/bash\n. %s\njob_init %s \"$@\"\n%s\n" % (LIBRARY, name, body))
    script.chmod(0o755)
    if background:
        return subprocess.Popen([str(script)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False)


def read_log(tmp_path, name="sample"):
    return (tmp_path / "log" / ("%s.log" % name)).read_text()


def read_status(tmp_path, name="sample"):
    text = (tmp_path / "state" / ("%s.status" % name)).read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_success_logs_start_and_completion(tmp_path, job_env):
    result = run_job(tmp_path, job_env, 'log_info "working"')
    assert result.returncode == 0
    lines = read_log(tmp_path).splitlines()
    assert lines[0].endswith("INFO: sample started")
    assert lines[1].endswith("INFO: working")
    assert lines[2].endswith("INFO: sample completed")


def test_log_line_format(tmp_path, job_env):
    run_job(tmp_path, job_env, 'log_warn "disk at 91%"')
    line = read_log(tmp_path).splitlines()[1]
    stamp, rest = line.split(" ", 1)
    assert len(stamp) == len("2026-01-01T00:00:00Z")
    assert stamp.endswith("Z")
    assert rest.startswith("sample[")
    assert rest.endswith("WARN: disk at 91%")


def test_job_fail_exits_with_code(tmp_path, job_env):
    result = run_job(tmp_path, job_env, 'job_fail "$EX_UNAVAILABLE" "database unreachable"')
    assert result.returncode == 69
    log = read_log(tmp_path)
    assert "ERROR: database unreachable" in log
    assert "ERROR: sample failed (code 69)" in log


def test_failing_command_stops_job(tmp_path, job_env):
    result = run_job(tmp_path, job_env, 'false\nlog_info "not reached"')
    assert result.returncode == 1
    assert "not reached" not in read_log(tmp_path)


def test_failing_pipeline_stage_stops_job(tmp_path, job_env):
    # pipefail: the failure of the first stage is not hidden by the last.
    result = run_job(tmp_path, job_env, 'false | cat\nlog_info "not reached"')
    assert result.returncode == 1
    assert "not reached" not in read_log(tmp_path)


def test_unset_variable_stops_job(tmp_path, job_env):
    result = run_job(tmp_path, job_env, 'echo "$undefined_variable"\nlog_info "not reached"')
    assert result.returncode != 0
    assert "not reached" not in read_log(tmp_path)


def test_status_file_records_last_run(tmp_path, job_env):
    run_job(tmp_path, job_env, "exit 73")
    status = read_status(tmp_path)
    assert status["job"] == "sample"
    assert status["exit_code"] == "73"
    assert int(status["duration_seconds"]) >= 0
    assert status["started_at"].endswith("Z")


def test_second_run_exits_75_while_first_holds_lock(tmp_path, job_env):
    first = run_job(tmp_path, job_env, "sleep 3", background=True)
    try:
        deadline = time.monotonic() + 10
        while "started" not in (read_log(tmp_path) if (tmp_path / "log" / "sample.log").exists() else ""):
            assert time.monotonic() < deadline, "first run did not start"
            time.sleep(0.05)
        second = run_job(tmp_path, job_env, 'log_info "second ran"')
        assert second.returncode == 75
        assert "second ran" not in read_log(tmp_path)
        assert "another sample run holds" in read_log(tmp_path)
    finally:
        assert first.wait(timeout=15) == 0
    # The refused run does not overwrite the status of the run that held the lock.
    assert read_status(tmp_path)["exit_code"] == "0"


def test_lock_wait_lets_second_run_finish(tmp_path, job_env):
    job_env["TRADEOPS_LOCK_WAIT"] = "10"
    first = run_job(tmp_path, job_env, "sleep 1", background=True)
    time.sleep(0.3)
    second = run_job(tmp_path, job_env, 'log_info "second ran"')
    assert first.wait(timeout=15) == 0
    assert second.returncode == 0
    assert "second ran" in read_log(tmp_path)


def test_run_logged_returns_command_status(tmp_path, job_env):
    body = ('status=0\nrun_logged bash -c "echo oops >&2; exit 3" || status=$?\n'
            'log_info "status=$status"')
    result = run_job(tmp_path, job_env, body)
    assert result.returncode == 0
    log = read_log(tmp_path)
    assert "INFO: bash: oops" in log
    assert "INFO: status=3" in log


def test_run_logged_passes_stdout(tmp_path, job_env):
    result = run_job(tmp_path, job_env, 'run_logged echo "payload"')
    assert result.stdout == "payload\n"


def test_dry_run_prefixes_log_lines(tmp_path, job_env):
    job_env["TRADEOPS_DRY_RUN"] = "1"
    run_job(tmp_path, job_env, 'job_dry_run && log_info "would delete 3 files"')
    assert "INFO: [DRY-RUN] would delete 3 files" in read_log(tmp_path)


def test_invalid_job_name_is_usage_error(tmp_path, job_env):
    result = run_job(tmp_path, job_env, "", name="Bad.Name")
    assert result.returncode == 64
    assert "invalid job name" in result.stderr


def test_unwritable_log_dir_falls_back_to_stderr(tmp_path, job_env):
    job_env["TRADEOPS_LOG_DIR"] = str(tmp_path / "missing")
    result = run_job(tmp_path, job_env, 'log_info "still logged"')
    assert result.returncode == 0
    assert "is not writable; logging to stderr only" in result.stderr
    assert "INFO: still logged" in result.stderr


def test_files_created_with_umask_027(tmp_path, job_env):
    run_job(tmp_path, job_env, 'touch "%s"' % (tmp_path / "made-by-job"))
    assert oct((tmp_path / "made-by-job").stat().st_mode & 0o777) == "0o640"
