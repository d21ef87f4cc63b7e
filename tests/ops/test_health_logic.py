"""Pure logic of the health check: measurements, thresholds and the alert state."""

import json
import os

MEMINFO = """MemTotal:       1000000 kB
MemFree:         100000 kB
MemAvailable:    250000 kB
"""


def test_memory_used_percent(health):
    assert health.memory_used_percent(MEMINFO) == 75.0


def test_memory_without_available_fails(health):
    try:
        health.memory_used_percent("MemTotal: 100 kB\n")
    except ValueError:
        return
    raise AssertionError("expected ValueError")


def test_disk_used_percent_in_range(health, tmp_path):
    assert 0 <= health.disk_used_percent(str(tmp_path)) <= 100


def test_newest_backup_skips_size_mismatch(health, tmp_path):
    (tmp_path / "a.dump").write_bytes(b"12345")
    (tmp_path / "a.dump.manifest.json").write_text(json.dumps(
        {"file": "a.dump", "size_bytes": 5, "finished_at": "2024-01-01T00:00:00Z"}))
    (tmp_path / "b.dump").write_bytes(b"1")
    (tmp_path / "b.dump.manifest.json").write_text(json.dumps(
        {"file": "b.dump", "size_bytes": 99, "finished_at": "2024-02-01T00:00:00Z"}))
    when, path = health.newest_backup(str(tmp_path))
    assert path.endswith("a.dump")
    assert when == health.parse_time("2024-01-01T00:00:00Z")


def test_last_verification_reads_status_file(health, tmp_path):
    status = tmp_path / "verify-backups.status"
    status.write_text("job=verify-backups\nended_at=2024-03-01T01:00:00Z\nexit_code=0\n")
    (tmp_path / "x.verify.json").write_text(json.dumps({"status": "failed", "finished_at": "2024-03-02T00:00:00Z"}))
    when, source = health.last_verification(str(tmp_path), str(status))
    assert source == str(status)
    assert when == health.parse_time("2024-03-01T01:00:00Z")


def test_disk_threshold(health, tmp_path):
    settings = {"disk_paths": [str(tmp_path), str(tmp_path / "missing")], "disk_max_percent": 101}
    results = health.check_disks(settings)
    assert len(results) == 1
    assert results[0].healthy



def test_state_alerts_once_and_recovers_once(health, tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(health, "send_alert", lambda *args: sent.append(args))
    problem = health.Result("disk:/x", False, "full")
    fixed = health.Result("disk:/x", True, "fine")
    assert health.apply_state([problem], str(tmp_path), "h", 0, False) == 1
    assert health.apply_state([problem], str(tmp_path), "h", 0, False) == 1
    assert len(sent) == 1
    assert sent[0][0] == "warning"
    assert health.apply_state([fixed], str(tmp_path), "h", 0, False) == 0
    assert health.apply_state([fixed], str(tmp_path), "h", 0, False) == 0
    assert len(sent) == 2
    assert sent[1][0] == "info"
    assert "RECOVERED" in sent[1][2]
    assert os.listdir(tmp_path) == []


def test_state_dry_run_keeps_state(health, tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(health, "send_alert", lambda *args: sent.append(args))
    problem = health.Result("memory", False, "high")
    health.apply_state([problem], str(tmp_path), "h", 0, True)
    assert os.listdir(tmp_path) == []
