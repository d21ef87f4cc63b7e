"""Retention benchmark: one DELETE, tradeops' batched delete, and dropping day partitions.

Each method runs on a fresh copy of the benchmark database. Meanwhile a
thread inserts one tick at a time into tick_data and records how long each
insert took. The maximum of those latencies shows how long the
application's writes can wait behind the cleanup.
"""

import logging
import os
import sys
import threading
import time

import psycopg2

from measure import median_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "module_utils"))

import tradeops_retention  # noqa: E402
from tradeops_postgres import SqlRunner, connect  # noqa: E402

log = logging.getLogger("bench.retention")

COPY = "bench_retention"
SINGLE_DELETE = "DELETE FROM tick_data WHERE time < now() - interval '30 days'"
INSERT = ("INSERT INTO tick_data (instrument_id, time, price, volume, bid, ask)"
          " VALUES (1, now(), 100.5, 10, 100.25, 100.75)")
# Pause between two inserts of the inserter thread, in seconds.
INSERT_PAUSE = 0.01

# Builds a copy of tick_data that is range-partitioned by UTC day, with the
# same columns, checks and indexes, and partitions up to two days ahead so
# that the inserter's rows find a partition.
PARTITION_SQL = """
SET TimeZone = 'UTC';
ALTER TABLE tick_data RENAME TO tick_data_unpartitioned;
CREATE TABLE tick_data (LIKE tick_data_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (time);
DO $$
DECLARE
    day timestamptz;
BEGIN
    FOR day IN SELECT generate_series(date_trunc('day', min(time)), date_trunc('day', now()) + interval '2 days',
                                      interval '1 day')
               FROM tick_data_unpartitioned
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF tick_data FOR VALUES FROM (%L) TO (%L)',
                       'tick_data_' || to_char(day, 'YYYYMMDD'), day, day + interval '1 day');
    END LOOP;
END
$$;
INSERT INTO tick_data SELECT * FROM tick_data_unpartitioned;
DROP TABLE tick_data_unpartitioned;
CREATE INDEX idx_tick_data_instrument_time ON tick_data (instrument_id, time);
CREATE INDEX idx_tick_data_time ON tick_data (time);
ANALYZE tick_data;
"""


class Inserter(threading.Thread):
    """Insert ticks one per transaction until stopped; record each insert's latency."""

    def __init__(self, cluster, database):
        super().__init__(daemon=True)
        self.conn = cluster.connect(database)
        self.stop_event = threading.Event()
        self.latencies = []
        self.error = None

    def run(self):
        try:
            with self.conn.cursor() as cur:
                while not self.stop_event.is_set():
                    started = time.perf_counter()
                    cur.execute(INSERT)
                    self.latencies.append(time.perf_counter() - started)
                    time.sleep(INSERT_PAUSE)
        except psycopg2.Error as error:
            self.error = error
        finally:
            self.conn.close()

    def finish(self):
        self.stop_event.set()
        self.join()
        if self.error is not None:
            raise RuntimeError("the inserter thread failed: %s" % self.error)
        ordered = sorted(self.latencies)
        return {"inserts": len(ordered), "max_insert_seconds": round(ordered[-1], 4) if ordered else None,
                "p99_insert_seconds": round(ordered[int(len(ordered) * 0.99) - 1], 4) if ordered else None}


def run_single_delete(cluster):
    conn = cluster.connect(COPY)
    try:
        with conn.cursor() as cur:
            cur.execute(SINGLE_DELETE)
            return {"rows_removed": cur.rowcount}
    finally:
        conn.close()


def run_tradeops(cluster, settings):
    runner = SqlRunner(connect(cluster.params(COPY), "tradeops bench"))
    try:
        result = tradeops_retention.run_retention(
            runner, tradeops_retention.normalize_policies([settings["policy"]]),
            tradeops_retention.RetentionOptions(**settings["options"]))
    finally:
        runner.close()
    entry = result["policies"][0]
    if entry["status"] != "ok":
        raise RuntimeError("tradeops retention failed on %s: %s" % (COPY, entry.get("error")))
    dropped_rows = sum(partition["rows"] for partition in entry["partitions_dropped"])
    return {"rows_removed": entry["rows_deleted"] + dropped_rows, "rows_deleted": entry["rows_deleted"],
            "batches": entry["batches"], "retries": entry["retries"],
            "partitions_dropped": len(entry["partitions_dropped"]), "rows_in_dropped_partitions": dropped_rows}


def prepare_copy(cluster, database, partitioned):
    cluster.create_database(COPY, template=database)
    if partitioned:
        cluster.execute(PARTITION_SQL, dbname=COPY)
    cluster.execute("CHECKPOINT")


def measure(cluster, database, method, settings):
    """Run one method on a fresh copy with the inserter running; return one sample."""
    if method in OTHER_BATCH_SIZES:
        options = dict(settings["options"], batch_size=OTHER_BATCH_SIZES[method])
        settings = dict(settings, options=options)
    prepare_copy(cluster, database, partitioned=(method == "partitions"))
    try:
        inserter = Inserter(cluster, COPY)
        inserter.start()
        time.sleep(0.5)
        started = time.perf_counter()
        try:
            if method == "single_delete":
                outcome = run_single_delete(cluster)
            else:
                outcome = run_tradeops(cluster, settings)
        finally:
            wall = time.perf_counter() - started
            latencies = inserter.finish()
        outcome.update(latencies)
        outcome["wall_seconds"] = round(wall, 3)
        return outcome
    finally:
        cluster.drop_database(COPY)


# Batch sizes tried beside the pg_maintenance role's default, to show what
# a batch size changes: the wall time and the inserts' waits.
OTHER_BATCH_SIZES = {"batched_small": 1000, "batched_large": 50000}


def method_labels(settings):
    return {
        "single_delete": "one DELETE",
        "batched": "tradeops batched delete, %d rows a batch (default)" % settings["options"]["batch_size"],
        "batched_small": "tradeops batched delete, %d rows a batch" % OTHER_BATCH_SIZES["batched_small"],
        "batched_large": "tradeops batched delete, %d rows a batch" % OTHER_BATCH_SIZES["batched_large"],
        "partitions": "tradeops on a day-partitioned copy",
    }


def run(cluster, database, runs, settings, log_sample):
    labels = method_labels(settings)
    results = {name: {"label": label, "samples": []} for name, label in labels.items()}
    for round_number in range(runs):
        for method in labels:
            sample = measure(cluster, database, method, settings)
            results[method]["samples"].append(sample)
            log_sample("retention %s, run %d: %s" % (method, round_number + 1, sample))
    for entry in results.values():
        entry["median"] = {key: median_of(entry["samples"], key)
                           for key in ("wall_seconds", "max_insert_seconds", "p99_insert_seconds", "rows_removed")}
        entry["max_insert_seconds_all_runs"] = max(s["max_insert_seconds"] for s in entry["samples"])
    results["single_delete"]["command"] = SINGLE_DELETE
    options_text = ", ".join("%s=%s" % item for item in sorted(settings["options"].items()))
    results["batched"]["command"] = ("tradeops_retention.run_retention(policy %s, %s)"
                                     % (settings["policy"], options_text))
    for method, batch_size in OTHER_BATCH_SIZES.items():
        results[method]["command"] = "the same run_retention call with batch_size=%d" % batch_size
    results["partitions"]["command"] = ("the same run_retention call on tick_data range-partitioned by UTC day"
                                        " (DETACH PARTITION CONCURRENTLY and DROP TABLE for expired days, batched"
                                        " DELETE in the partition that contains the cut-off)")
    return {"methods": results, "inserter": INSERT, "insert_pause_seconds": INSERT_PAUSE,
            "partition_sql": PARTITION_SQL.strip()}
