"""Run tradeops' real backup worker against the benchmark cluster.

The pg_backup role installs tradeops_backup.py and a settings file under
/etc/tradeops. Here the same worker runs from the repository. Its settings
file has the role's compression defaults, and the worker reaches the
cluster as the superuser over the Unix socket, with no password file.
"""

import configparser
import json
import os
import shutil
import sys

from measure import run_timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "roles", "pg_backup", "files", "usr", "local", "lib", "tradeops", "tradeops_backup.py")


def write_settings(cluster, database, directory, defaults):
    """Write a settings file for a full backup of database into directory; return its path."""
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict({
        "backup": {"kinds": "full", "lock_wait": "0", "file_mode": "0640"},
        "database": {"host": cluster.sockdir, "port": str(cluster.port), "name": database,
                     "user": "postgres", "passfile": "", "connect_timeout": "10",
                     "pg_dump": cluster.bin("pg_dump")},
        "retention": {"keep_min": "1000", "require_verified_kinds": ""},
        "alert": {"command": ""},
        "tools": {name: shutil.which(name) or "/usr/bin/" + name for name in ("zstd", "pigz", "gzip", "tar")},
        "kind:full": {"directory": directory, "retention_days": "3650",
                      "compression": defaults["compression"], "compression_level": str(defaults["level"]),
                      "compression_threads": str(defaults["threads"]),
                      "zstd_min_match": str(defaults.get("min_match", 0))},
    })
    path = os.path.join(directory, "backup.conf")
    with open(path, "w", encoding="utf-8") as handle:
        config.write(handle)
    return path


def command(settings_path):
    return "%s %s --config %s --kind full --json" % (sys.executable, WORKER, settings_path)


def run_backup(cluster, settings_path):
    """Run the worker once; return its wall and CPU seconds and the backup file's path.

    The CPU time covers the worker, pg_dump and the compressor. The
    worker also counts every table's rows in pg_dump's snapshot and hashes
    the file as it is written.
    """
    directory = os.path.dirname(settings_path)
    timing = run_timed(command(settings_path) + " > %s/written.json" % directory, cluster.env())
    with open(os.path.join(directory, "written.json"), encoding="utf-8") as handle:
        written = json.loads(handle.readline())
    return timing, written["file"]


def remove_backup(path):
    for name in (path, path + ".manifest.json", path + ".verify.json"):
        if os.path.exists(name):
            os.unlink(name)
