"""Retention of the backup worker on fabricated old backups."""

import datetime
import hashlib
import json
import os

import pytest

from conftest import load_worker

worker = load_worker()
NOW = datetime.datetime(2025, 6, 30, 0, 30, tzinfo=datetime.timezone.utc)


def fabricate(directory, prefix, days_old, extension="dump", good=True, verified=None):
    """Write a backup `days_old` days before NOW, with a matching manifest when good."""
    stamp = (NOW - datetime.timedelta(days=days_old)).strftime("%Y%m%dT%H%M%SZ")
    name = "%s_%s.%s" % (prefix, stamp, extension)
    data = ("backup %s\n" % name).encode()
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    if good:
        manifest = {"manifest_version": 1, "file": name, "size_bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest()}
        with open(path + ".manifest.json", "w", encoding="utf-8") as handle:
            json.dump(manifest, handle)
    if verified is not None:
        with open(path + ".verify.json", "w", encoding="utf-8") as handle:
            json.dump({"status": verified}, handle)
    moment = (NOW - datetime.timedelta(days=days_old)).timestamp()
    os.utime(path, (moment, moment))
    return name


def prune(setup, kind):
    settings = worker.Settings(setup.config_path)
    log = worker.Log(False)
    worker.apply_retention(settings, kind, NOW, log, dry_run=False)


def test_prunes_only_its_own_kind(setup):
    directory = setup.dirs["postgres"]
    full = [fabricate(directory, "full_backup", days) for days in (1, 2, 3, 8, 15, 20)]
    schema = [fabricate(directory, "schema_backup", days) for days in (8, 20, 40)]
    critical = fabricate(directory, "critical_backup", 20)
    unrelated = ["notes.txt", "full_backup_latest.dump", "full_backup_20200101T000000Z.dump.bak",
                 "xfull_backup_20200101T000000Z.dump", "full_backup_20200101T000000Z.sql",
                 "full_backup_20200101T000000Z.dump.verify.json"]
    for name in unrelated:
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write("not a backup\n")
    fabricate(directory, "full_backup", 9, verified="ok")

    prune(setup, "full")
    names = set(setup.listing())
    for name in full[:3]:
        assert name in names
        assert name + ".manifest.json" in names
    for name in full[3:]:
        assert name not in names
        assert name + ".manifest.json" not in names
    assert not any(n.startswith("full_backup_20250621") for n in names)  # the 9-day one and its verify record
    for name in schema + [critical]:
        assert name in names
    for name in unrelated:
        assert name in names

    prune(setup, "schema")
    names = set(setup.listing())
    assert schema[0] in names
    assert schema[1] in names
    assert schema[2] in names  # three good schema backups are the keep_min


def test_keeps_newest_good_when_all_old(setup):
    directory = setup.dirs["postgres"]
    good = [fabricate(directory, "full_backup", days) for days in (10, 11, 12, 13, 14)]
    bad_newest = fabricate(directory, "full_backup", 9, good=False)
    prune(setup, "full")
    names = set(setup.listing())
    assert bad_newest not in names
    for name in good[:3]:
        assert name in names
    for name in good[3:]:
        assert name not in names


def test_damaged_backup_is_not_good(setup):
    directory = setup.dirs["postgres"]
    names = [fabricate(directory, "critical_backup", days) for days in (20, 21, 22, 23)]
    with open(os.path.join(directory, names[0]), "ab") as handle:
        handle.write(b"damage")
    prune(setup, "critical")
    left = set(setup.listing())
    assert names[0] not in left
    for name in names[1:]:
        assert name in left


@pytest.fixture
def hashed(monkeypatch):
    """Return the list of backup names that the worker's sha256_of reads, in order."""
    names = []
    real_sha256_of = worker.sha256_of

    def recording_sha256_of(path):
        names.append(os.path.basename(path))
        return real_sha256_of(path)

    monkeypatch.setattr(worker, "sha256_of", recording_sha256_of)
    return names


def test_written_backup_not_read_again(setup, hashed):
    """The backup this run wrote counts as good from the hash taken while writing it; older ones are read."""
    directory = setup.dirs["postgres"]
    newest, *older = [fabricate(directory, "critical_backup", days) for days in (20, 21, 22, 23)]
    with open(os.path.join(directory, newest + ".manifest.json"), encoding="utf-8") as handle:
        newest_sha256 = json.load(handle)["sha256"]
    settings = worker.Settings(setup.config_path)
    worker.apply_retention(settings, "critical", NOW, worker.Log(False), False, written={newest: newest_sha256})
    assert hashed == older[:2]
    left = set(setup.listing())
    assert newest in left
    assert older[0] in left
    assert older[1] in left
    assert older[2] not in left


def test_unverified_backup_not_hashed(setup, hashed):
    setup.set("retention", "require_verified_kinds", "full")
    directory = setup.dirs["postgres"]
    unverified = fabricate(directory, "full_backup", 10)
    verified = [fabricate(directory, "full_backup", days, verified="ok") for days in (11, 12, 13)]
    prune(setup, "full")
    assert hashed == verified
    assert unverified not in set(setup.listing())


def test_require_verified_counts_only_verified(setup):
    setup.set("retention", "require_verified_kinds", "full,schema")
    directory = setup.dirs["postgres"]
    unverified = fabricate(directory, "full_backup", 10)
    failed = fabricate(directory, "full_backup", 11, verified="failed")
    verified = [fabricate(directory, "full_backup", days, verified="ok") for days in (12, 13, 14, 15)]
    prune(setup, "full")
    left = set(setup.listing())
    assert unverified not in left
    assert failed not in left
    assert failed + ".verify.json" not in left
    for name in verified[:3]:
        assert name in left
        assert name + ".verify.json" in left
    assert verified[3] not in left


def test_require_verified_leaves_other_kinds(setup):
    setup.set("retention", "require_verified_kinds", "full")
    directory = setup.dirs["postgres"]
    unverified = [fabricate(directory, "critical_backup", days) for days in (30, 31, 32, 33)]
    prune(setup, "critical")
    left = set(setup.listing())
    for name in unverified[:3]:
        assert name in left
    assert unverified[3] not in left


def test_require_verified_unknown_kind_rejected(setup):
    setup.set("retention", "require_verified_kinds", "full,nightly")
    result = setup.run("--kind", "full")
    assert result.returncode == 78
    assert "require_verified_kinds has unknown kind nightly" in result.stderr


def test_stale_temporary_file_removed(setup):
    directory = setup.dirs["postgres"]
    stale = ".tmp-full_backup_20250101T003000Z.dump.12345"
    other = ".tmp-notes"
    for name in (stale, other):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write("partial")
    result = setup.run("--kind", "full")
    assert result.returncode == 0, result.stderr
    left = setup.listing()
    assert stale not in left
    assert other in left


def test_failed_run_prunes_nothing(setup):
    directory = setup.dirs["postgres"]
    old = [fabricate(directory, "full_backup", days) for days in (30, 31, 32, 33, 34)]
    setup.set("database", "port", "1")
    result = setup.run("--kind", "full")
    assert result.returncode == 69
    assert all(name in setup.listing() for name in old)


def test_backup_run_prunes_after_success(setup):
    directory = setup.dirs["postgres"]
    old = [fabricate(directory, "full_backup", days) for days in (30, 31, 32, 33)]
    result = setup.run("--kind", "full")
    assert result.returncode == 0, result.stderr
    left = setup.listing()
    assert old[0] in left
    assert old[1] in left
    assert old[2] not in left
    assert old[3] not in left
    assert "1 deleted" not in result.stderr
    assert "2 deleted" in result.stderr


@pytest.mark.parametrize("kind, name, matches", [
    ("full", "full_backup_20250101T003000Z.dump", True),
    ("full", "full_backup_20250101T003000Z.dump.zst", True),
    ("full", "full_backup_20250101T003000Z.dump.gz", True),
    ("full", "full_backup_20250101T003000Z.dump.manifest.json", False),
    ("full", "full_backup_2025-01-01.dump", False),
    ("full", "schema_backup_20250101T003000Z.dump", False),
    ("config", "config_20250101T004500Z.tar.zst", True),
    ("config", "config_20250101T004500Z.tar.gz", True),
    ("config", "config_backup_20250101T004500Z.tar.gz", False),
    ("logs", "logs_20250101T004500Z.tar.zst", True),
    ("logs", "logs_20250101T004500Z.dump", False),
    ("strategies", "strategies_20250101T004500Z.dump.zst", True),
    ("strategies", "strategies_20250101T004500Z.tar.zst", False),
])
def test_name_patterns_are_strict(kind, name, matches):
    assert bool(worker.backup_name_pattern(kind).fullmatch(name)) is matches
