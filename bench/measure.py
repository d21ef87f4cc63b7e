"""Timing of shell commands and summaries of repeated runs."""

import resource
import statistics
import subprocess
import time


class CommandFailed(RuntimeError):
    pass


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(command, env):
    """Run a bash command line with pipefail; return wall and CPU seconds.

    CPU seconds are the user and system time of the waited-for child
    processes (bash, pg_dump, gzip, ...), from RUSAGE_CHILDREN deltas. The
    time that the PostgreSQL server process spends for the client is not in
    them.
    """
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True,
                             check=False)
    wall = time.perf_counter() - started
    cpu = children_cpu_seconds() - cpu_before
    if process.returncode != 0:
        raise CommandFailed("command failed with exit code %d: %s\n%s"
                            % (process.returncode, command, process.stderr[-4000:]))
    return {"wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}


def median_of(samples, key):
    values = [sample[key] for sample in samples if sample.get(key) is not None]
    if not values:
        return None
    return statistics.median(values)


def ratio(numerator, denominator, digits=2):
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)
