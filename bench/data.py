"""Load the trading schema and the lab's generated data into the benchmark cluster."""

import json
import logging
import os
import subprocess
import sys
import time

log = logging.getLogger("bench.data")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(REPO, "roles", "postgresql", "files", "trading_schema.sql")
GENERATOR = os.path.join(REPO, "lab", "generate_trading_data.py")

DATABASE = "trading_db"
OWNER = "trading_user"

# Tick counts of the two calibration loads that --size-gb fits a line to.
# The bytes per tick fall as the data grows (loads of 20,000 and 80,000
# ticks gave 358 bytes per tick, and 80,000 to 2,000,000 ticks about 300),
# so the points are as large as a quick calibration allows.
CALIBRATION_TICKS = (100000, 400000)


def create_trading_database(cluster, name):
    """Create an empty database owned by trading_user and load the application schema as that role."""
    if not cluster.value("SELECT count(*) FROM pg_roles WHERE rolname = %s", (OWNER,)):
        cluster.execute("CREATE ROLE %s LOGIN" % OWNER)
    cluster.create_database(name, owner=OWNER)
    with open(SCHEMA, encoding="utf-8") as handle:
        schema_sql = handle.read()
    conn = cluster.connect(name, user=OWNER)
    try:
        with conn.cursor() as cur:
            cur.execute(schema_sql)
    finally:
        conn.close()


def generator_argv(ticks):
    return [sys.executable, GENERATOR, "--ticks", str(ticks)]


def generate(cluster, name, ticks):
    """Run the lab generator into database name and return its JSON report and the seconds it took."""
    create_trading_database(cluster, name)
    started = time.perf_counter()
    process = subprocess.run(generator_argv(ticks), env=cluster.env(user=OWNER, dbname=name),
                             capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError("lab/generate_trading_data.py --ticks %d failed with exit code %d:\n%s"
                           % (ticks, process.returncode, process.stderr[-4000:]))
    report = json.loads(process.stdout.strip().splitlines()[-1])
    return report, seconds


def database_bytes(cluster, name):
    cluster.execute("CHECKPOINT")
    return cluster.value("SELECT pg_database_size(%s)", (name,))


def calibrate_ticks(cluster, size_bytes):
    """Estimate the tick count whose generated database is size_bytes large.

    Two small loads give the database size as a line a + b * ticks, because
    the generator scales orders, logs and snapshots with the tick count but
    also writes a fixed part (candles per day, backtests, performance rows).
    Returns the tick count and the calibration points.
    """
    points = []
    for ticks in CALIBRATION_TICKS:
        name = "bench_calibration"
        generate(cluster, name, ticks)
        size = database_bytes(cluster, name)
        cluster.drop_database(name)
        points.append({"ticks": ticks, "database_bytes": size})
        log.info("calibration: %d ticks give a %.1f MB database", ticks, size / 1e6)
    # NOTE: the line is fitted on small loads and extrapolated to the
    # target, so the loaded size can miss it. The page reports the real size.
    (t1, s1), (t2, s2) = [(p["ticks"], p["database_bytes"]) for p in points]
    bytes_per_tick = (s2 - s1) / (t2 - t1)
    fixed_bytes = s1 - bytes_per_tick * t1
    ticks = max(CALIBRATION_TICKS[0], int((size_bytes - fixed_bytes) / bytes_per_tick))
    calibration = {"points": points, "bytes_per_tick": round(bytes_per_tick, 1), "fixed_bytes": int(fixed_bytes),
                   "target_bytes": int(size_bytes), "ticks": ticks}
    log.info("calibration: %.0f bytes per tick, so %d ticks for %.2f GB", bytes_per_tick, ticks, size_bytes / 1e9)
    return calibration


def load(cluster, ticks):
    """Load the benchmark database and describe it."""
    log.info("loading %d ticks into %s", ticks, DATABASE)
    report, seconds = generate(cluster, DATABASE, ticks)
    size = database_bytes(cluster, DATABASE)
    tick_bytes = cluster.value("SELECT pg_total_relation_size('tick_data')", dbname=DATABASE)
    log.info("loaded %s: %.1f MB in %.0f s", DATABASE, size / 1e6, seconds)
    return {"database": DATABASE, "ticks": ticks, "rows": report["rows"], "database_bytes": size,
            "tick_data_bytes": tick_bytes, "load_seconds": round(seconds, 1),
            "generator_command": "python3 lab/generate_trading_data.py --ticks %d" % ticks}
