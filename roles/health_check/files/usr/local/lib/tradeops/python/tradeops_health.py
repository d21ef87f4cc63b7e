# Managed by Ansible (role health_check): local changes are overwritten.
"""Checks of the tradeops health-check job and their alert state.

Each check returns Result objects: a key (one per problem, such as
"disk:/opt/backups"), whether it is healthy, and a one-line detail. For each
key, a problem is alerted when it first appears and its recovery when it
goes away; the open problems are kept as files in the state folder, so an
hourly run does not repeat an alert while the problem lasts.

Run by /usr/local/sbin/tradeops-health-check, which gives it the job log:
each line on stderr goes to /var/log/tradeops/health-check.log.
Exit status: 0 healthy, 1 a problem found, 64 usage, 78 invalid settings.
"""

import argparse
import datetime
import glob
import json
import math
import os
import re
import socket
import subprocess
import sys

EX_OK = 0
EX_PROBLEM = 1
EX_USAGE = 64
EX_CONFIG = 78

ALERT_COMMAND = "/usr/local/sbin/tradeops-alert"


class Result:
    """Outcome of one check for one key."""

    def __init__(self, key, healthy, detail, severity="warning"):
        self.key = key
        self.healthy = healthy
        self.detail = detail
        self.severity = severity


def log(level, text):
    print("%s: %s" % (level, text), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Measurements


def disk_used_percent(path):
    """Return the use of path's file system in percent, rounded up like df's Use% column.

    df computes used / (used + available to unprivileged users), so blocks
    reserved for root count as neither.
    """
    stats = os.statvfs(path)
    used = stats.f_blocks - stats.f_bfree
    total = used + stats.f_bavail
    if total <= 0:
        return 0
    return math.ceil(used * 100 / total)


def memory_used_percent(meminfo_text):
    """Return 100 - MemAvailable / MemTotal in percent from the text of /proc/meminfo."""
    values = {}
    for line in meminfo_text.splitlines():
        match = re.match(r"^(\w+):\s+(\d+)", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    total = values.get("MemTotal")
    available = values.get("MemAvailable")
    if not total or available is None:
        raise ValueError("MemTotal or MemAvailable is missing from /proc/meminfo")
    return round(100 - available * 100 / total, 1)


def folder_size_bytes(path):
    """Return the disk space in use by the files under path (st_blocks, like du)."""
    total = 0
    for root, _dirs, files in os.walk(path, onerror=lambda exc: log("WARN", "cannot read %s: %s" % (
            exc.filename, exc.strerror))):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def parse_time(text):
    """Parse an ISO 8601 UTC time such as 2024-05-01T00:30:00Z; return None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def newest_backup(backup_root):
    """Return (finished epoch, file) of the newest good backup under backup_root, or None.

    A backup counts as good when its manifest parses and the file it names
    exists with the size the manifest records. The sha256 is not read again
    here because that would read every backup each hour.
    """
    newest = None
    for manifest_path in glob.glob(os.path.join(backup_root, "**", "*.manifest.json"), recursive=True):
        try:
            with open(manifest_path, encoding="utf-8") as handle:
                manifest = json.load(handle)
            backup_path = os.path.join(os.path.dirname(manifest_path), manifest["file"])
            if os.stat(backup_path).st_size != manifest.get("size_bytes"):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        finished = parse_time(manifest.get("finished_at")) or os.stat(manifest_path).st_mtime
        if newest is None or finished > newest[0]:
            newest = (finished, backup_path)
    return newest


def last_verification(backup_root, status_file):
    """Return (epoch, source) of the newest successful verification, or None.

    Sources: *.verify.json records with "status": "ok" under backup_root
    (their finished_at or verified_at time, else the file's mtime), and the
    verification job's status file when its exit_code is 0 (its ended_at).
    """
    newest = None
    for record_path in glob.glob(os.path.join(backup_root, "**", "*.verify.json"), recursive=True):
        try:
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            if not isinstance(record, dict) or record.get("status") != "ok":
                continue
            when = (parse_time(record.get("finished_at")) or parse_time(record.get("verified_at"))
                    or os.stat(record_path).st_mtime)
        except (OSError, ValueError):
            continue
        if newest is None or when > newest[0]:
            newest = (when, record_path)
    status = read_status_file(status_file)
    if status.get("exit_code") == "0":
        when = parse_time(status.get("ended_at"))
        if when is not None and (newest is None or when > newest[0]):
            newest = (when, status_file)
    return newest


def read_status_file(path):
    values = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    values[key] = value
    except OSError:
        pass
    return values


def format_age(seconds):
    return "%.1f h" % (seconds / 3600)


# ---------------------------------------------------------------------------
# Checks


def check_process(settings):
    name = settings["app_process"]
    # -x matches the whole process name, so neither this checker nor a
    # shell whose command line mentions the name can match.
    result = subprocess.run(["pgrep", "-x", name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            check=False, text=True)
    pids = result.stdout.split()
    if pids:
        return Result("app-process", True, "process %s is running (pid %s)" % (name, " ".join(pids)))
    return Result("app-process", False, "process %s is not running" % name, "critical")


def check_database(settings):
    host, port = settings["db_host"], str(settings["db_port"])
    command = ["pg_isready", "-q", "-h", host, "-p", port, "-t", str(settings["db_timeout_seconds"])]
    try:
        code = subprocess.run(command, check=False, timeout=settings["db_timeout_seconds"] + 5).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Result("database", False, "pg_isready for %s:%s failed: %s" % (host, port, exc), "critical")
    meanings = {0: "accepts connections", 1: "rejects connections (starting up?)", 2: "does not answer",
                3: "was not attempted (invalid parameters)"}
    detail = "PostgreSQL at %s:%s %s" % (host, port, meanings.get(code, "returned code %d" % code))
    return Result("database", code == 0, detail, "critical")


def check_disks(settings):
    results = []
    limit = settings["disk_max_percent"]
    for path in settings["disk_paths"]:
        if not os.path.isdir(path):
            continue
        used = disk_used_percent(path)
        results.append(Result("disk:" + path, used < limit,
                              "file system of %s is %d%% used (limit %d%%)" % (path, used, limit)))
    return results


def check_memory(settings):
    with open("/proc/meminfo", encoding="ascii") as handle:
        used = memory_used_percent(handle.read())
    limit = settings["memory_max_percent"]
    return Result("memory", used < limit, "memory is %.1f%% used (limit %d%%)" % (used, limit))


def check_log_folder(settings):
    path = settings["app_log_dir"]
    limit_mb = settings["log_dir_max_mb"]
    size_mb = folder_size_bytes(path) / 1048576
    return Result("app-logs", size_mb <= limit_mb,
                  "log folder %s uses %.1f MB (limit %d MB)" % (path, size_mb, limit_mb))


def check_backup_age(settings, now):
    limit = settings["backup_max_age_hours"] * 3600
    newest = newest_backup(settings["backup_root"])
    if newest is None:
        return Result("backup-age", False, "no good backup found under %s" % settings["backup_root"])
    age = now - newest[0]
    return Result("backup-age", age <= limit, "newest good backup %s is %s old (limit %d h)" % (
        newest[1], format_age(age), settings["backup_max_age_hours"]))


def check_verify_age(settings, now):
    newest = last_verification(settings["backup_root"], settings["verify_status_file"])
    if newest is None:
        return Result("verify-age", False, "no successful backup verification found (%s, *.verify.json under %s)"
                      % (settings["verify_status_file"], settings["backup_root"]))
    age = now - newest[0]
    limit = settings["verify_max_age_hours"] * 3600
    return Result("verify-age", age <= limit, "last successful verification (%s) is %s old (limit %d h)" % (
        newest[1], format_age(age), settings["verify_max_age_hours"]))


def run_checks(settings, now):
    """Run every enabled check and return its results; a check that crashes is a problem of its own."""
    checks = []
    if settings["app_host"]:
        checks.append(check_process)
        if os.path.isdir(settings["app_log_dir"]):
            checks.append(check_log_folder)
    checks += [check_database, check_disks, check_memory]
    if settings["backup_check"]:
        checks.append(lambda s: check_backup_age(s, now))
    if settings["verify_check"]:
        checks.append(lambda s: check_verify_age(s, now))
    results = []
    for check in checks:
        try:
            outcome = check(settings)
        except (OSError, ValueError) as exc:
            name = getattr(check, "__name__", "check")
            outcome = Result("check-error:" + name, False, "%s could not run: %s" % (name, exc))
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


# ---------------------------------------------------------------------------
# Alert state


def state_path(state_dir, key):
    return os.path.join(state_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".problem")


def send_alert(severity, key, subject, message, dry_run):
    if dry_run:
        log("INFO", "would alert (%s, %s): %s" % (severity, key, subject))
        return
    try:
        code = subprocess.run([ALERT_COMMAND, "--severity", severity, "--key", key, subject],
                              input=message, text=True, check=False, timeout=120).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        log("WARN", "alert command %s failed: %s; alert: %s" % (ALERT_COMMAND, exc, subject))
        return
    if code != 0:
        log("WARN", "alert command %s exited with code %d; alert: %s" % (ALERT_COMMAND, code, subject))


def apply_state(results, state_dir, host, now, dry_run):
    """Alert new problems and recoveries, and update the state files; return the number of problems."""
    problems = 0
    seen = set()
    for result in results:
        path = state_path(state_dir, result.key)
        seen.add(path)
        alert_key = "health:%s" % result.key
        if result.healthy:
            log("INFO", "ok %s: %s" % (result.key, result.detail))
            if os.path.exists(path):
                send_alert("info", alert_key, "RECOVERED on %s: %s" % (host, result.detail),
                           "The problem '%s' on %s is over: %s\n" % (result.key, host, result.detail), dry_run)
                if not dry_run:
                    os.unlink(path)
            continue
        problems += 1
        if os.path.exists(path):
            log("WARN", "problem %s continues (alerted before): %s" % (result.key, result.detail))
            continue
        log("ERROR", "problem %s: %s" % (result.key, result.detail))
        send_alert(result.severity, alert_key, "PROBLEM on %s: %s" % (host, result.detail),
                   "The health check on %s found a problem (%s): %s\nIt is alerted once; its recovery is "
                   "announced when a later run finds it fixed.\n" % (host, result.key, result.detail), dry_run)
        if not dry_run:
            write_state(path, result, now)
    # A problem whose check no longer runs (a folder removed from the
    # settings, a check turned off) is dropped without a recovery message.
    for path in glob.glob(os.path.join(state_dir, "*.problem")):
        if path not in seen and not dry_run:
            log("INFO", "dropping the state of a check that no longer runs: %s" % path)
            os.unlink(path)
    return problems


def write_state(path, result, now):
    temp_path = path + ".tmp"
    with open(temp_path, "w", encoding="utf-8") as handle:
        json.dump({"key": result.key, "since": int(now), "detail": result.detail}, handle)
        handle.write("\n")
    os.replace(temp_path, path)


# ---------------------------------------------------------------------------


REQUIRED = ("app_host", "app_process", "app_log_dir", "db_host", "db_port", "db_timeout_seconds", "disk_paths",
            "disk_max_percent", "memory_max_percent", "log_dir_max_mb", "backup_root", "backup_check",
            "backup_max_age_hours", "verify_check", "verify_max_age_hours", "verify_status_file", "state_dir")


def load_settings(path):
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    # The file starts with "#" comment lines (the managed-file banner).
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    settings = json.loads("\n".join(lines))
    if not isinstance(settings, dict):
        raise ValueError("the settings are not a JSON object")
    missing = [key for key in REQUIRED if key not in settings]
    if missing:
        raise ValueError("missing settings: %s" % ", ".join(missing))
    return settings


def main(argv):
    parser = argparse.ArgumentParser(prog="tradeops_health.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON settings file")
    parser.add_argument("--dry-run", action="store_true", help="check and log, but send no alert and keep the state")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    try:
        settings = load_settings(args.config)
    except (OSError, ValueError) as exc:
        log("ERROR", "invalid settings file %s: %s" % (args.config, exc))
        return EX_CONFIG
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    host = socket.gethostname()
    results = run_checks(settings, now)
    os.makedirs(settings["state_dir"], mode=0o750, exist_ok=True)
    problems = apply_state(results, settings["state_dir"], host, now, args.dry_run)
    log("INFO", "%d checks, %d problems" % (len(results), problems))
    return EX_PROBLEM if problems else EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
