"""site.yml on two throwaway podman hosts, under Mitogen and under stock ansible-core.

bench/run.py's converge part creates a db and an app host, runs site.yml
once on them with ansible.cfg's mitogen_linear strategy, then once more with
each strategy, and removes them. These tests check what the runs did, not
how long they took: the first run changes the new hosts, the second runs
change nothing and fail nothing, and both strategies run the same tasks.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "bench", "run.py")


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    """Run the converge part on two hosts once; return its entry for two hosts."""
    out = tmp_path_factory.mktemp("converge")
    process = subprocess.run([sys.executable, RUN, "--only", "converge", "--converge-hosts", "2", "--runs", "1",
                              "--no-page", "--results-dir", str(out)],
                             capture_output=True, text=True, check=False, timeout=1200)
    assert process.returncode == 0, process.stderr[-4000:]
    [results_file] = [name for name in os.listdir(out) if name.endswith(".json")]
    with open(out / results_file, encoding="utf-8") as handle:
        results = json.load(handle)
    [entry] = results["converge"]["by_hosts"]
    return entry


def test_first_run_provisions_both_hosts(two_hosts):
    hosts = two_hosts["first_run"]["hosts"]
    assert sorted(hosts) == ["tradeops-bench-app-1", "tradeops-bench-db-1"]
    for name, recap in hosts.items():
        assert recap["failed"] == 0, (name, recap)
        assert recap["unreachable"] == 0, (name, recap)
        assert recap["changed"] > 10, (name, recap)


@pytest.mark.parametrize("strategy", ["mitogen_linear", "linear"])
def test_second_run_changes_nothing(two_hosts, strategy):
    [sample] = two_hosts["by_strategy"][strategy]["samples"]
    for name, recap in sample["hosts"].items():
        assert recap == dict(recap, changed=0, failed=0, unreachable=0), (strategy, name, sample["changed_tasks"])


def test_strategies_run_the_same_tasks(two_hosts):
    """Mitogen and stock ansible-core report the same ok and skipped counts on every host."""
    [mitogen] = two_hosts["by_strategy"]["mitogen_linear"]["samples"]
    [linear] = two_hosts["by_strategy"]["linear"]["samples"]
    assert mitogen["hosts"] == linear["hosts"]
    assert mitogen["tasks"] > 100
