#!/usr/bin/python3
"""Verify the newest tradeops backup of each configured kind: restore it into a scratch database and check it.

Usage: tradeops_verify_backups.py [--config PATH] [--kind KIND]... [--check]

The scheduled job tradeops-verify-backups runs this program. It calls the
same verify_backup() as the pg_backup_verify module, writes
<file>.verify.json beside each backup verified, and runs the alert hook
with one message when a verification fails. Settings come from the JSON
file that the pg_backup_verify role renders (leading "#" lines are
skipped); the password comes from the password file named there.

Messages go to stderr, one line each, for the job log. Exit codes follow
sysexits.h like the shell jobs: 0 every backup verified, 1 a verification
failed, 64 usage, 69 PostgreSQL unreachable, 78 bad configuration.
"""

import argparse
import os
import shlex
import socket
import subprocess
import sys

try:
    from ansible.module_utils.tradeops_postgres import (
        EX_FAILURE, EX_OK, EX_USAGE, ConfigError, DATABASE_ERRORS, TradeopsError, UnavailableError,
        describe_db_error, load_job_settings)
    from ansible.module_utils.tradeops_verify import KIND_PREFIXES, VerifyOptions, verify_backup
except ImportError:
    sys.path.insert(0, "/usr/local/lib/tradeops/python")
    from tradeops_postgres import (
        EX_FAILURE, EX_OK, EX_USAGE, ConfigError, DATABASE_ERRORS, TradeopsError, UnavailableError,
        describe_db_error, load_job_settings)
    from tradeops_verify import KIND_PREFIXES, VerifyOptions, verify_backup

DEFAULT_CONFIG = "/etc/tradeops/verify-backups.json"
ALERT_TIMEOUT_SECONDS = 30


def say(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def load_config(path):
    """Read the JSON settings; raise ConfigError when they are missing or invalid."""
    config = load_job_settings(path, "pg_backup_verify",
                               (("connection", dict), ("kinds", list), ("backup_dirs", dict)))
    for kind in config["kinds"]:
        if kind not in KIND_PREFIXES:
            raise ConfigError("Invalid settings file \"%s\": unknown backup kind \"%s\"; allowed are %s."
                              % (path, kind, ", ".join(KIND_PREFIXES)))
        if kind not in config["backup_dirs"]:
            raise ConfigError("Invalid settings file \"%s\": backup_dirs has no folder for kind \"%s\"."
                              % (path, kind))
    return config


def options_for(config, kind, check_mode):
    return VerifyOptions(
        backup_dir=config["backup_dirs"][kind], kind=kind,
        scratch_template=config.get("scratch_template") or "template0",
        required_tables=(config.get("required_tables") or {}).get(kind, []),
        jobs=int(config.get("jobs", 1)),
        amcheck_heapallindexed=bool(config.get("amcheck_heapallindexed", True)),
        pg_bin_dir=config.get("pg_bin_dir") or "/usr/lib/postgresql/15/bin",
        work_dir=config.get("work_dir") or None,
        write_record=not check_mode)


def report(result):
    for check in result["checks"]:
        say("%s: %s %s: %s" % (os.path.basename(result["backup"]), check["name"], check["status"],
                               check["detail"]))
    say("%s: %s in %.1f s (restore %s s)" % (result["backup"], result["status"], result["total_seconds"],
                                              result["restore_seconds"]))


def send_alert(command_line, subject, message):
    """Run the alert hook with the subject as argument and the message on stdin; log when it is missing."""
    command = shlex.split(command_line) if command_line else []
    if not command or not os.access(command[0], os.X_OK):
        say("warning: no alert hook installed%s; alert: %s" % (" at " + command[0] if command else "", subject))
        return
    try:
        completed = subprocess.run(command + [subject], input=message, text=True, capture_output=True,
                                   timeout=ALERT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        say("warning: alert hook %s failed: %s; alert: %s" % (command[0], error, subject))
        return
    if completed.returncode != 0:
        say("warning: alert hook %s exited with code %d; alert: %s" % (command[0], completed.returncode, subject))


def run(args):
    """Verify every requested kind; return the exit code."""
    config = load_config(args.config)
    kinds = args.kind or config["kinds"]
    for kind in kinds:
        if kind not in config["backup_dirs"]:
            raise ConfigError("Kind \"%s\" has no backup folder in \"%s\"." % (kind, args.config))
    params = dict(config["connection"])
    if params.get("passfile"):
        # pg_restore reads the password file through libpq's environment.
        os.environ["PGPASSFILE"] = params["passfile"]
    failures = []
    for kind in kinds:
        try:
            result = verify_backup(params, options_for(config, kind, args.check), check_mode=args.check,
                                   log=say)
        except (UnavailableError, ConfigError):
            raise
        except TradeopsError as error:
            say("error: %s backup: %s" % (kind, error))
            failures.append("%s backup: %s" % (kind, error))
            continue
        except DATABASE_ERRORS as error:
            failures.append("%s backup: verification failed: %s" % (kind, describe_db_error(error)))
            say("error: " + failures[-1])
            continue
        report(result)
        if result["status"] != "ok":
            say("error: " + result["msg"])
            failures.append(result["msg"])
    if not failures:
        return EX_OK
    host = socket.gethostname()
    send_alert(config.get("alert_command") or "", "tradeops backup verification failed on %s" % host,
               "\n".join(failures) + "\n")
    return EX_FAILURE


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="JSON settings (default: %(default)s)")
    parser.add_argument("--kind", action="append", choices=sorted(KIND_PREFIXES),
                        help="verify only this kind (repeatable); default: the kinds of the settings")
    parser.add_argument("--check", action="store_true",
                        help="check files, manifests and archive listings only: no restore, no record")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return EX_USAGE if exit_request.code else EX_OK
    try:
        return run(args)
    except TradeopsError as error:
        say("error: %s" % error)
        if error.exit_code != EX_USAGE:
            try:
                alert_command = load_config(args.config).get("alert_command") or ""
            except ConfigError:
                alert_command = ""
            send_alert(alert_command, "tradeops backup verification failed on %s" % socket.gethostname(),
                       str(error) + "\n")
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
