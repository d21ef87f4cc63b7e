"""The benchmark program, run end to end on a tiny database.

These tests check that bench/run.py still measures every case and renders
its page. They assert no timing, because the goals belong on the results
page and not in a test.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "bench", "run.py")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Run every PostgreSQL part once on 2,000 ticks; return the results document and the page."""
    out = tmp_path_factory.mktemp("bench")
    page = out / "benchmarks.md"
    process = subprocess.run([sys.executable, RUN, "--ticks", "2000", "--runs", "1", "--results-dir", str(out),
                              "--page", str(page)], capture_output=True, text=True, check=False, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    [results_file] = [name for name in os.listdir(out) if name.endswith(".json")]
    with open(out / results_file, encoding="utf-8") as handle:
        results = json.load(handle)
    return results, page.read_text(encoding="utf-8")


def test_backup_cases_all_measured(small_run):
    results, _ = small_run
    cases = results["backup"]["cases"]
    assert "naive" in cases
    assert "default" in cases
    assert "floor" in cases
    for name, entry in cases.items():
        [sample] = entry["samples"]
        assert sample["dump_wall_seconds"] > 0, name
        if name != "floor":
            assert sample["output_bytes"] > 0, name
            assert sample["restore_wall_seconds"] > 0, name


def test_default_case_runs_the_worker(small_run):
    results, _ = small_run
    default = results["backup"]["cases"]["default"]
    assert "tradeops_backup.py" in default["dump_command"]
    assert results["role_defaults"]["backup"]["compression"] in default["label"]


def test_verification_compared_with_bare_restore(small_run):
    results, _ = small_run
    verification = results["verification"]
    assert verification["tradeops"]["samples"][0]["checks"]["restore"] == "ok"
    assert verification["tradeops"]["samples"][0]["checks"]["row_counts"] == "ok"
    assert verification["bare"]["median_wall_seconds"] > 0
    assert verification["tradeops_over_bare"] > 0


def test_retention_methods_remove_same_rows(small_run):
    """Each method removes the same old ticks, give or take the few that age past the cut-off between runs."""
    results, _ = small_run
    methods = results["retention"]["methods"]
    removed = {name: entry["median"]["rows_removed"] for name, entry in methods.items()}
    assert min(removed.values()) > 0, removed
    assert max(removed.values()) - min(removed.values()) <= max(2, 0.01 * max(removed.values())), removed


def test_page_has_every_section(small_run):
    _, page = small_run
    for heading in ("## Backup", "## Verification", "## Retention cleanup", "## What these numbers support",
                    "## Commands"):
        assert heading in page
    assert "**Small-scale run.**" in page
