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

import worker
from measure import median_of, ratio, run_timed

log = logging.getLogger("bench.backup")

SCRATCH = "bench_restore"

CUSTOM_RESTORE = "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"
# Commands that write a piped archive's decompressed form to stdout.
DECOMPRESSORS = {"zstd": "zstd -q -d -c", "pigz": "pigz -d -c"}


def decompress_first(compression, restore, path="{out}"):
    """Return restore run on a decompressed copy, path.restore, written first.

    pg_restore -j needs a seekable file, as docs/restore.md explains. The
    caller removes the copy.
    """
    return "%s %s > %s.restore && %s" % (DECOMPRESSORS[compression], path, path,
                                         restore.replace(path, path + ".restore"))


ZSTD_RESTORE = decompress_first("zstd", CUSTOM_RESTORE)


def zstd_case(level, min_match=0):
    """Return the case of pg_dump piped into zstd at level, with zstd's minMatch set when min_match is not 0."""
    name, label, tuning = "custom_zstd%d" % level, "custom | zstd -T2 -%d" % level, ""
    if min_match:
        name += "_mm%d" % min_match
        tuning = " --zstd=minMatch=%d" % min_match
        label += tuning
    return {"name": name, "label": label, "output": name + ".dump.zst",
            "dump": "{pg}/pg_dump -Fc -Z0 {db} | zstd -q -T2 -%d%s > {out}" % (level, tuning),
            "restore": ZSTD_RESTORE}


CASES = [
    {"name": "naive", "label": "plain | gzip (naive)", "output": "naive.sql.gz",
     "dump": "{pg}/pg_dump {db} | gzip > {out}",
     "restore": "gzip -dc {out} | {pg}/psql -X -q -v ON_ERROR_STOP=1 -o /dev/null -d {scratch}"},
    {"name": "floor", "label": "custom none to /dev/null (floor)", "output": None,
     "dump": "{pg}/pg_dump -Fc -Z0 {db} > /dev/null",
     "restore": None},
    {"name": "custom_none", "label": "custom none", "output": "none.dump",
     "dump": "{pg}/pg_dump -Fc -Z0 -f {out} {db}", "restore": CUSTOM_RESTORE},
    {"name": "custom_gzip1", "label": "custom gzip:1", "output": "gzip1.dump",
     "dump": "{pg}/pg_dump -Fc -Z1 -f {out} {db}", "restore": CUSTOM_RESTORE},
    {"name": "custom_gzip6", "label": "custom gzip:6", "output": "gzip6.dump",
     "dump": "{pg}/pg_dump -Fc -Z6 -f {out} {db}", "restore": CUSTOM_RESTORE},
    zstd_case(1),
    zstd_case(3),
    zstd_case(7),
    zstd_case(7, min_match=6),
    zstd_case(8),
    {"name": "directory_gzip6", "label": "directory -j 2 gzip:6", "output": "directory6",
     "dump": "{pg}/pg_dump -Fd -j 2 -Z6 -f {out} {db}",
     "restore": "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"},
    {"name": "directory_gzip1", "label": "directory -j 2 gzip:1", "output": "directory1",
     "dump": "{pg}/pg_dump -Fd -j 2 -Z1 -f {out} {db}",
     "restore": "{pg}/pg_restore -j 2 --exit-on-error -d {scratch} {out}"},
]

# Parallel restore command of each pg_backup_db_compression.
DEFAULT_RESTORES = {"gzip": CUSTOM_RESTORE, "none": CUSTOM_RESTORE, "zstd": ZSTD_RESTORE,
                    "pigz": decompress_first("pigz", CUSTOM_RESTORE)}
# A piped archive can also stream into one pg_restore, with no file and
# so with no parallel jobs.
STREAMED_RESTORES = {compression: "%s {out} | {pg}/pg_restore --exit-on-error -d {scratch}" % command
                     for compression, command in DECOMPRESSORS.items()}


def default_case(defaults):
    """Build the case of tradeops' default: the real backup worker with the pg_backup role's defaults."""
    label = "tradeops worker, %s:%d" % (defaults["compression"], defaults["level"])
    if defaults["compression"] == "zstd" and defaults["min_match"]:
        label += ", minMatch %d" % defaults["min_match"]
    if defaults["compression"] in ("zstd", "pigz"):
        label += ", %d threads" % defaults["threads"]
    extension = {"zstd": ".dump.zst", "pigz": ".dump.gz"}.get(defaults["compression"], ".dump")
    return {"name": "default", "label": label + " (tradeops default)", "worker": defaults,
            "output": "full_backup_<stamp>" + extension,
            "dump": "python3 tradeops_backup.py --config $WORK/backup.conf --kind full --json",
            "restore": DEFAULT_RESTORES[defaults["compression"]],
            "restore_streamed": STREAMED_RESTORES.get(defaults["compression"])}


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


def timed_restore(cluster, database, template, out_path):
    """Restore out_path into a new scratch database with the command template; return its timing."""
    cluster.create_database(SCRATCH)
    try:
        return run_timed(render(template, cluster, database, out_path), cluster.env())
    finally:
        cluster.drop_database(SCRATCH)
        remove_output(out_path + ".restore")


def measure_case(cluster, database, case, work_dir, restore=True):
    """Dump once and, when restore is true, restore that dump once; return one sample."""
    env = cluster.env()
    sample = {}
    if "worker" in case:
        settings_path = worker.write_settings(cluster, database, work_dir, case["worker"])
        dump, out_path = worker.run_backup(cluster, settings_path)
    else:
        out_path = os.path.join(work_dir, case["output"]) if case["output"] else None
        remove_output(out_path)
        dump = run_timed(render(case["dump"], cluster, database, out_path), env)
    sample["dump_wall_seconds"] = dump["wall_seconds"]
    sample["dump_cpu_seconds"] = dump["cpu_seconds"]
    sample["output_bytes"] = output_bytes(out_path) if out_path else None
    if case["restore"] and restore:
        timing = timed_restore(cluster, database, case["restore"], out_path)
        sample["restore_wall_seconds"] = timing["wall_seconds"]
        sample["restore_cpu_seconds"] = timing["cpu_seconds"]
        if case.get("restore_streamed"):
            timing = timed_restore(cluster, database, case["restore_streamed"], out_path)
            sample["restore_streamed_wall_seconds"] = timing["wall_seconds"]
    if "worker" in case:
        worker.remove_backup(out_path)
    else:
        remove_output(out_path)
    return sample


def run(cluster, database, runs, defaults, log_sample, restore_runs=1):
    """Measure every case runs times, one round over all cases after the other.

    The first restore_runs rounds also restore each dump. A restore's time
    depends on the format and the data more than on the run, and restores
    take most of the benchmark's time.
    """
    cases = [CASES[0], default_case(defaults)] + CASES[1:]
    work_dir = cluster.work_dir("backups")
    results = {case["name"]: {"label": case["label"], "samples": []} for case in cases}
    for round_number in range(runs):
        for case in cases:
            sample = measure_case(cluster, database, case, work_dir, restore=round_number < restore_runs)
            results[case["name"]]["samples"].append(sample)
            log_sample("backup %s, run %d: %s" % (case["name"], round_number + 1, sample))
    for case in cases:
        entry = results[case["name"]]
        entry["dump_command"] = case["dump"].format(pg="$PG_BIN", db=database, out="$WORK/%s" % case["output"],
                                                    scratch=SCRATCH)
        entry["restore_command"] = (case["restore"].format(pg="$PG_BIN", db=database,
                                                           out="$WORK/%s" % case["output"], scratch=SCRATCH)
                                    if case["restore"] else None)
        if case.get("restore_streamed"):
            entry["restore_streamed_command"] = case["restore_streamed"].format(
                pg="$PG_BIN", db=database, out="$WORK/%s" % case["output"], scratch=SCRATCH)
        entry["median"] = {key: median_of(entry["samples"], key) for key in (
            "dump_wall_seconds", "dump_cpu_seconds", "output_bytes", "restore_wall_seconds", "restore_cpu_seconds",
            "restore_streamed_wall_seconds")}
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
        # Four digits, because the size goal compares this ratio with 1.
        # The page computes its ratio from the sizes themselves.
        "default_over_naive_bytes": ratio(default["output_bytes"], naive["output_bytes"], digits=4),
        "default_over_floor_wall": ratio(default["dump_wall_seconds"], floor["dump_wall_seconds"]),
        "fastest_case": fastest,
        "fastest_over_floor_wall": ratio(results[fastest]["median"]["dump_wall_seconds"],
                                         floor["dump_wall_seconds"]),
    }
