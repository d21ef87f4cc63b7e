"""Backup benchmark: pg_dump formats and compressions, and the restore time each allows.

Every case is a dump command and, unless it writes nothing, a restore
command into an empty scratch database. {pg} is the PostgreSQL bin
directory, {db} the source database, {out} the output path and {scratch}
the scratch database. pg_dump fsyncs a file that it opens itself (-f),
but not its standard output, so piped cases leave the fsync to the system.
Client programs reach the server through PGHOST,
PGPORT and PGUSER (the superuser over the Unix socket).
"""

import logging
import os
import shlex
import shutil

from measure import median_of, ratio, run_timed

log = logging.getLogger("bench.backup")

SCRATCH = "bench_restore"

CASES = [
    {"name": "naive", "label": "plain | gzip (naive)", "output": "naive.sql.gz",
     "dump": "{pg}/pg_dump {db} | gzip > {out}",
     "restore": "gzip -dc {out} | {pg}/psql -X -q -v ON_ERROR_STOP=1 -o /dev/null -d {scratch}"},
    {"name": "floor", "label": "custom none to /dev/null (floor)", "output": None,
     "dump": "{pg}/pg_dump -Fc -Z0 {db} > /dev/null",
     "restore": None},
    {"name": "custom_none", "label": "custom none", "output": "none.dump",
     "dump": "{pg}/pg_dump -Fc -Z0 -f {out} {db}",
     "restore": "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"},
    {"name": "custom_gzip1", "label": "custom gzip:1", "output": "gzip1.dump",
     "dump": "{pg}/pg_dump -Fc -Z1 -f {out} {db}",
     "restore": "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"},
    {"name": "custom_zstd1", "label": "custom | zstd -1", "output": "zstd1.dump.zst",
     "dump": "{pg}/pg_dump -Fc -Z0 {db} | zstd -q -1 > {out}",
     "restore": "zstd -q -d -c {out} | {pg}/pg_restore --exit-on-error -d {scratch}"},
    {"name": "custom_zstd3", "label": "custom | zstd -3", "output": "zstd3.dump.zst",
     "dump": "{pg}/pg_dump -Fc -Z0 {db} | zstd -q -3 > {out}",
     "restore": "zstd -q -d -c {out} | {pg}/pg_restore --exit-on-error -d {scratch}"},
    {"name": "custom_pigz6", "label": "custom | pigz -6", "output": "pigz6.dump.gz",
     "dump": "{pg}/pg_dump -Fc -Z0 {db} | pigz -6 > {out}",
     "restore": "pigz -d -c {out} | {pg}/pg_restore --exit-on-error -d {scratch}"},
    {"name": "directory_gzip6", "label": "directory -j 2 gzip:6", "output": "directory6",
     "dump": "{pg}/pg_dump -Fd -j 2 -Z6 -f {out} {db}",
     "restore": "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"},
    {"name": "directory_gzip1", "label": "directory -j 2 gzip:1", "output": "directory1",
     "dump": "{pg}/pg_dump -Fd -j 2 -Z1 -f {out} {db}",
     "restore": "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"},
]


# Dump and restore of the backup worker's custom-format archive, by the
# role's pg_backup_db_compression. Piped archives restore from stdin, which
# rules out pg_restore -j.
DEFAULT_COMMANDS = {
    "gzip": ("{pg}/pg_dump -Fc -Z{level} -f {out} {db}", ".dump",
             "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"),
    "none": ("{pg}/pg_dump -Fc -Z0 -f {out} {db}", ".dump",
             "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"),
    "zstd": ("{pg}/pg_dump -Fc -Z0 {db} | zstd -q -{level} > {out}", ".dump.zst",
             "zstd -q -d -c {out} | {pg}/pg_restore --exit-on-error -d {scratch}"),
    "pigz": ("{pg}/pg_dump -Fc -Z0 {db} | pigz -{level} > {out}", ".dump.gz",
             "pigz -d -c {out} | {pg}/pg_restore --exit-on-error -d {scratch}"),
}


def default_case(compression, level):
    """Build the case of tradeops' default from the pg_backup role defaults.

    The backup worker also counts the rows of every table and hashes the
    file, which this case leaves out.
    """
    dump, suffix, restore = DEFAULT_COMMANDS[compression]
    return {"name": "default", "label": "custom %s:%d (tradeops default)" % (compression, level),
            "output": "default" + suffix, "dump": dump.replace("{level}", str(level)), "restore": restore}


def render(template, cluster, database, out_path):
    return template.format(pg=shlex.quote(cluster.pg_bin), db=shlex.quote(database),
                           out=shlex.quote(out_path or "/dev/null"), scratch=SCRATCH)


def output_bytes(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))
    return os.path.getsize(path)


def remove_output(path):
    if path is None or not os.path.exists(path):
        return
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def measure_case(cluster, database, case, work_dir):
    """Dump once and restore that dump once; return one sample."""
    out_path = os.path.join(work_dir, case["output"]) if case["output"] else None
    remove_output(out_path)
    env = cluster.env()
    sample = {}
    dump = run_timed(render(case["dump"], cluster, database, out_path), env)
    sample["dump_wall_seconds"] = dump["wall_seconds"]
    sample["dump_cpu_seconds"] = dump["cpu_seconds"]
    sample["output_bytes"] = output_bytes(out_path) if out_path else None
    if case["restore"]:
        cluster.create_database(SCRATCH)
        try:
            restore = run_timed(render(case["restore"], cluster, database, out_path), env)
        finally:
            cluster.drop_database(SCRATCH)
        sample["restore_wall_seconds"] = restore["wall_seconds"]
        sample["restore_cpu_seconds"] = restore["cpu_seconds"]
    remove_output(out_path)
    return sample


def run(cluster, database, runs, defaults, log_sample):
    """Measure every case runs times, one round over all cases after the other."""
    cases = [CASES[0], default_case(defaults["compression"], defaults["level"])] + CASES[1:]
    work_dir = cluster.work_dir("backups")
    results = {case["name"]: {"label": case["label"], "samples": []} for case in cases}
    for round_number in range(runs):
        for case in cases:
            sample = measure_case(cluster, database, case, work_dir)
            results[case["name"]]["samples"].append(sample)
            log_sample("backup %s, run %d: %s" % (case["name"], round_number + 1, sample))
    for case in cases:
        entry = results[case["name"]]
        entry["dump_command"] = case["dump"].format(pg="$PG_BIN", db=database, out="$WORK/%s" % case["output"],
                                                    scratch=SCRATCH)
        entry["restore_command"] = (case["restore"].format(pg="$PG_BIN", db=database,
                                                           out="$WORK/%s" % case["output"], scratch=SCRATCH)
                                    if case["restore"] else None)
        entry["median"] = {key: median_of(entry["samples"], key) for key in (
            "dump_wall_seconds", "dump_cpu_seconds", "output_bytes", "restore_wall_seconds", "restore_cpu_seconds")}
    return {"cases": results, "summary": summarize(results)}


def summarize(results):
    """Return the ratios that the goals are stated in."""
    naive = results["naive"]["median"]
    default = results["default"]["median"]
    floor = results["floor"]["median"]
    fastest = min((name for name in results if name not in ("floor", "naive")),
                  key=lambda name: results[name]["median"]["dump_wall_seconds"])
    return {
        "naive_over_default_wall": ratio(naive["dump_wall_seconds"], default["dump_wall_seconds"]),
        "default_over_naive_bytes": ratio(default["output_bytes"], naive["output_bytes"]),
        "default_over_floor_wall": ratio(default["dump_wall_seconds"], floor["dump_wall_seconds"]),
        "fastest_case": fastest,
        "fastest_over_floor_wall": ratio(results[fastest]["median"]["dump_wall_seconds"],
                                         floor["dump_wall_seconds"]),
    }
