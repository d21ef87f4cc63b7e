# Managed by Ansible (role weekly_report): local changes are overwritten.
"""Weekly tradeops report: strategy performance and backup history.

Writes, for the 7 days that end at the report's end time (by default the
start of today, UTC):

- weekly-report-<end date>.html, a self-contained page whose charts are
  PNG images drawn by matplotlib and embedded as base64;
- weekly-report-<end date>.csv, one row per strategy;
- weekly-report-<end date>-backups.csv, one row per backup made in the week;

and sends a summary through tradeops-alert that names the page.

How each strategy figure is computed, for the window [start, end):

- trades: positions of the strategy closed in the window (closed_at), each
  a round trip from open to close;
- pnl: the sum of realized_pnl of those positions;
- win_rate: the share of those positions with realized_pnl > 0 (empty when
  there are none);
- max_drawdown: the largest fall of cumulative realized P&L from its
  running peak, in currency units, walking the positions in closed_at order
  from 0 at the window's start (0 when P&L never falls);
- filled_orders: orders of the strategy created in the window with status
  'filled';
- reported_pnl and reported_trades: the sums over the window's dates of
  strategy_performance, the application's own daily figures, shown next to
  the values computed from positions.

Exit status: 0 written, 1 a query or the output failed, 64 usage,
69 database unreachable, 73 output not writable, 78 invalid settings.
"""

import argparse
import base64
import configparser
import csv
import datetime
import glob
import html
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_CONFIG = 78

ALERT_COMMAND = "/usr/local/sbin/tradeops-alert"
WINDOW = datetime.timedelta(days=7)
BACKUP_JOBS = ("db-backup", "app-backup", "verify-backups")

STRATEGY_SQL = """
SELECT s.id, s.name,
       count(p.id) AS trades,
       coalesce(sum(p.realized_pnl), 0) AS pnl,
       count(p.id) FILTER (WHERE p.realized_pnl > 0) AS wins,
       (SELECT count(*) FROM orders o
         WHERE o.strategy_id = s.id AND o.status = 'filled'
           AND o.created_at >= %(start)s AND o.created_at < %(end)s) AS filled_orders,
       (SELECT coalesce(sum(sp.pnl), 0) FROM strategy_performance sp
         WHERE sp.strategy_id = s.id AND sp.date >= %(start)s::date AND sp.date < %(end)s::date) AS reported_pnl,
       (SELECT coalesce(sum(sp.trades), 0) FROM strategy_performance sp
         WHERE sp.strategy_id = s.id AND sp.date >= %(start)s::date AND sp.date < %(end)s::date) AS reported_trades
  FROM strategies s
  LEFT JOIN positions p
    ON p.strategy_id = s.id AND p.closed_at >= %(start)s AND p.closed_at < %(end)s
 GROUP BY s.id, s.name
 ORDER BY s.name
"""

CLOSED_SQL = """
SELECT strategy_id, closed_at, realized_pnl
  FROM positions
 WHERE closed_at >= %(start)s AND closed_at < %(end)s
 ORDER BY strategy_id, closed_at, id
"""

DAILY_SQL = """
SELECT s.name, sp.date, sp.pnl
  FROM strategy_performance sp JOIN strategies s ON s.id = sp.strategy_id
 WHERE sp.date >= %(start)s::date AND sp.date < %(end)s::date
 ORDER BY s.name, sp.date
"""


class ReportError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def log(level, text):
    print("%s: %s" % (level, text), file=sys.stderr, flush=True)


def max_drawdown(pnls):
    """Return the largest fall of the running sum of pnls below its running peak (the peak starts at 0)."""
    cumulative = peak = worst = 0.0
    for pnl in pnls:
        cumulative += pnl
        peak = max(peak, cumulative)
        worst = max(worst, peak - cumulative)
    return worst


# ---------------------------------------------------------------------------
# Data


def query_strategies(settings, start, end):
    """Return one dict per strategy with the figures described in the module docstring."""
    import psycopg2  # pylint: disable=import-outside-toplevel

    params = {"host": settings["host"], "port": settings["port"], "dbname": settings["name"],
              "user": settings["user"], "connect_timeout": settings["connect_timeout"],
              "application_name": "tradeops-weekly-report"}
    if settings["passfile"]:
        params["passfile"] = settings["passfile"]
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as exc:
        raise ReportError(EX_UNAVAILABLE, "cannot connect to %s:%s/%s as %s: %s" % (
            settings["host"], settings["port"], settings["name"], settings["user"], " ".join(str(exc).split())))
    window = {"start": start, "end": end}
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(STRATEGY_SQL, window)
            rows = cur.fetchall()
            cur.execute(CLOSED_SQL, window)
            closed = cur.fetchall()
            cur.execute(DAILY_SQL, window)
            daily = cur.fetchall()
    except psycopg2.Error as exc:
        raise ReportError(EX_FAILURE, "report query failed: %s" % " ".join(str(exc).split()))
    finally:
        conn.close()
    curves = {}
    for strategy_id, closed_at, pnl in closed:
        curves.setdefault(strategy_id, []).append((closed_at, float(pnl)))
    strategies = []
    for strategy_id, name, trades, pnl, wins, filled, reported_pnl, reported_trades in rows:
        curve = curves.get(strategy_id, [])
        strategies.append({
            "strategy": name,
            "trades": trades,
            "pnl": float(pnl),
            "win_rate": wins / trades if trades else None,
            "max_drawdown": max_drawdown(value for _when, value in curve),
            "filled_orders": filled,
            "reported_pnl": float(reported_pnl),
            "reported_trades": int(reported_trades),
            "curve": curve,
        })
    daily_pnl = {}
    for name, date, pnl in daily:
        daily_pnl.setdefault(name, []).append((date, float(pnl)))
    return strategies, daily_pnl


def parse_time(text):
    if not isinstance(text, str):
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def backup_history(backup_root, start, end):
    """Return the backups whose manifest says they finished in the window, oldest first.

    Each has kind, file, size_bytes, duration_seconds, finished_at and
    verify, the status of its <file>.verify.json ("not verified" without one).
    """
    backups = []
    for path in glob.glob(os.path.join(backup_root, "**", "*.manifest.json"), recursive=True):
        try:
            with open(path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, ValueError) as exc:
            log("WARN", "skipping unreadable manifest %s: %s" % (path, exc))
            continue
        finished = parse_time(manifest.get("finished_at")) if isinstance(manifest, dict) else None
        if finished is None or not start <= finished < end:
            continue
        verify = "not verified"
        verify_path = path[:-len(".manifest.json")] + ".verify.json"
        if os.path.exists(verify_path):
            try:
                with open(verify_path, encoding="utf-8") as handle:
                    verify = str(json.load(handle).get("status", "unknown"))
            except (OSError, ValueError, AttributeError):
                verify = "unreadable"
        backups.append({
            "kind": manifest.get("kind", "?"),
            "file": manifest.get("file", os.path.basename(path)),
            "size_bytes": int(manifest.get("size_bytes") or 0),
            "duration_seconds": float(manifest.get("duration_seconds") or 0),
            "finished_at": finished,
            "verify": verify,
        })
    backups.sort(key=lambda backup: backup["finished_at"])
    return backups


def job_failures(log_dir, start, end):
    """Count the "failed (code N)" lines of the backup jobs' logs in the window, per job."""
    failures = {}
    pattern = re.compile(r"^(\S+Z) \S+ ERROR: \S+ failed \(code (\d+)\)")
    for job in BACKUP_JOBS:
        count = 0
        for path in sorted(glob.glob(os.path.join(log_dir, job + ".log*"))):
            if path.endswith(".gz"):
                continue
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    for line in handle:
                        match = pattern.match(line)
                        when = parse_time(match.group(1)) if match else None
                        if when is not None and start <= when < end:
                            count += 1
            except OSError as exc:
                log("WARN", "cannot read %s: %s" % (path, exc))
        failures[job] = count
    return failures


# ---------------------------------------------------------------------------
# Output


def png_base64(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def draw_charts(strategies, daily_pnl, backups):
    """Return a list of (title, base64 PNG) charts."""
    # matplotlib keeps a font cache in MPLCONFIGDIR; a private temporary
    # folder keeps the job from needing a writable home.
    config_dir = tempfile.mkdtemp(prefix="tradeops-mpl-")
    os.environ["MPLCONFIGDIR"] = config_dir
    try:
        return _draw_charts(strategies, daily_pnl, backups)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def _draw_charts(strategies, daily_pnl, backups):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    charts = []
    figure, axes = plt.subplots(figsize=(8, 3.5))
    names = [row["strategy"] for row in strategies]
    axes.bar(names, [row["pnl"] for row in strategies],
             color=["tab:green" if row["pnl"] >= 0 else "tab:red" for row in strategies])
    axes.set_ylabel("realized P&L")
    axes.tick_params(axis="x", labelrotation=30)
    charts.append(("Realized P&L per strategy", png_base64(figure)))
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 3.5))
    for row in strategies:
        if row["curve"]:
            total = 0.0
            points = []
            for when, pnl in row["curve"]:
                total += pnl
                points.append((when, total))
            axes.plot([when for when, _ in points], [value for _, value in points], label=row["strategy"])
    for name, days in daily_pnl.items():
        if not any(row["curve"] for row in strategies if row["strategy"] == name):
            axes.plot([day for day, _ in days], [sum(p for _, p in days[:i + 1]) for i in range(len(days))],
                      linestyle="--", label=name + " (daily figures)")
    axes.set_ylabel("cumulative realized P&L")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.autofmt_xdate()
    charts.append(("Cumulative realized P&L", png_base64(figure)))
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 3.5))
    for kind in sorted({backup["kind"] for backup in backups}):
        points = [backup for backup in backups if backup["kind"] == kind]
        axes.plot([b["finished_at"] for b in points], [b["size_bytes"] / 1048576 for b in points], marker="o",
                  label=kind)
    axes.set_ylabel("backup size (MB)")
    if backups:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no backups in this week", ha="center", va="center", transform=axes.transAxes)
    figure.autofmt_xdate()
    charts.append(("Backup sizes", png_base64(figure)))
    plt.close(figure)
    return charts


def format_rate(value):
    return "" if value is None else "%.4f" % value


def write_csv(path, strategies, start, end):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["window_start", "window_end", "strategy", "trades", "pnl", "win_rate", "max_drawdown",
                         "filled_orders", "reported_pnl", "reported_trades"])
        for row in strategies:
            writer.writerow([start.isoformat(), end.isoformat(), row["strategy"], row["trades"],
                             "%.8f" % row["pnl"], format_rate(row["win_rate"]), "%.8f" % row["max_drawdown"],
                             row["filled_orders"], "%.8f" % row["reported_pnl"], row["reported_trades"]])


def write_backups_csv(path, backups):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["finished_at", "kind", "file", "size_bytes", "duration_seconds", "verify"])
        for backup in backups:
            writer.writerow([backup["finished_at"].isoformat(), backup["kind"], backup["file"],
                             backup["size_bytes"], backup["duration_seconds"], backup["verify"]])


def render_html(strategies, backups, failures, charts, start, end, host):
    esc = html.escape
    rows = "\n".join(
        "<tr><td>%s</td><td>%d</td><td>%.2f</td><td>%s</td><td>%.2f</td><td>%d</td><td>%.2f</td></tr>" % (
            esc(row["strategy"]), row["trades"], row["pnl"],
            "" if row["win_rate"] is None else "%.1f %%" % (row["win_rate"] * 100), row["max_drawdown"],
            row["filled_orders"], row["reported_pnl"])
        for row in strategies)
    backup_rows = "\n".join(
        "<tr><td>%s</td><td>%s</td><td>%s</td><td>%.1f</td><td>%.1f</td><td>%s</td></tr>" % (
            esc(b["finished_at"].strftime("%Y-%m-%d %H:%M")), esc(b["kind"]), esc(b["file"]),
            b["size_bytes"] / 1048576, b["duration_seconds"], esc(b["verify"]))
        for b in backups) or '<tr><td colspan="6">no backups finished in this week</td></tr>'
    failure_items = "\n".join("<li>%s: %d failed runs</li>" % (esc(job), count) for job, count in failures.items())
    images = "\n".join('<h3>%s</h3>\n<img alt="%s" src="data:image/png;base64,%s">' % (esc(title), esc(title), data)
                       for title, data in charts)
    return """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tradeops weekly report {end}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
</style>
</head>
<body>
<h1>tradeops weekly report</h1>
<p>Week {start} to {end} (UTC, end excluded), written on {host} at {now}.</p>
<h2>Strategies</h2>
<p>Trades are positions closed in the week; P&amp;L is their realized P&amp;L; the win rate is the share of them
with a positive P&amp;L; the maximum drawdown is the largest fall of cumulative realized P&amp;L from its peak.
Reported P&amp;L is the sum of the application's daily strategy_performance figures.</p>
<table>
<tr><th>strategy</th><th>trades</th><th>P&amp;L</th><th>win rate</th><th>max drawdown</th>
<th>filled orders</th><th>reported P&amp;L</th></tr>
{rows}
</table>
<h2>Backups</h2>
<table>
<tr><th>finished</th><th>kind</th><th>file</th><th>MB</th><th>seconds</th><th>verification</th></tr>
{backup_rows}
</table>
<h3>Failed job runs in the week</h3>
<ul>
{failure_items}
</ul>
<h2>Charts</h2>
{images}
</body>
</html>
""".format(start=esc(start.isoformat()), end=esc(end.isoformat()), host=esc(host),
           now=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), rows=rows,
           backup_rows=backup_rows, failure_items=failure_items, images=images)


def write_atomic(path, write):
    """Write a file through a temporary file in its folder, then rename it into place."""
    directory = os.path.dirname(path)
    handle, temp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(handle)
    try:
        write(temp_path)
        os.chmod(temp_path, 0o640)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def summary_text(strategies, backups, failures, html_path, start, end, host):
    lines = ["tradeops weekly report for %s to %s (UTC) from %s." % (start.date(), end.date(), host), "",
             "Strategy                 trades          P&L  win rate  max drawdown"]
    for row in strategies:
        lines.append("%-24s %6d %12.2f  %8s  %12.2f" % (
            row["strategy"][:24], row["trades"], row["pnl"],
            "-" if row["win_rate"] is None else "%.1f %%" % (row["win_rate"] * 100), row["max_drawdown"]))
    total = sum(row["pnl"] for row in strategies)
    lines += ["", "Total realized P&L: %.2f" % total,
              "Backups in the week: %d, %.1f MB; not verified: %d" % (
                  len(backups), sum(b["size_bytes"] for b in backups) / 1048576,
                  sum(1 for b in backups if b["verify"] != "ok")),
              "Failed backup job runs: %s" % ", ".join("%s %d" % item for item in failures.items()),
              "", "Full report with charts: %s" % html_path]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def load_settings(path):
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    return {
        "host": parser.get("database", "host"),
        "port": parser.getint("database", "port"),
        "name": parser.get("database", "name"),
        "user": parser.get("database", "user"),
        "passfile": parser.get("database", "passfile", fallback=""),
        "connect_timeout": parser.getint("database", "connect_timeout", fallback=10),
        "output_dir": parser.get("report", "output_dir"),
        "backup_root": parser.get("report", "backup_root"),
        "job_log_dir": parser.get("report", "job_log_dir"),
        "send_summary": parser.getboolean("report", "send_summary", fallback=True),
    }


def parse_end(text):
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("invalid date %r, expected YYYY-MM-DD" % text) from exc
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)


def main(argv):
    parser = argparse.ArgumentParser(prog="tradeops_weekly_report.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="settings file")
    parser.add_argument("--end", type=parse_end,
                        help="end of the week, a UTC date (YYYY-MM-DD, excluded; default: today)")
    parser.add_argument("--dry-run", action="store_true", help="query and log the summary, write and send nothing")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    try:
        settings = load_settings(args.config)
    except (OSError, ValueError, configparser.Error) as exc:
        log("ERROR", "invalid settings file %s: %s" % (args.config, exc))
        return EX_CONFIG
    end = args.end or parse_end(datetime.datetime.now(datetime.timezone.utc).date().isoformat())
    start = end - WINDOW
    host = socket.gethostname()
    try:
        strategies, daily_pnl = query_strategies(settings, start, end)
        backups = backup_history(settings["backup_root"], start, end)
        failures = job_failures(settings["job_log_dir"], start, end)
        base = os.path.join(settings["output_dir"], "weekly-report-%s" % end.date().isoformat())
        summary = summary_text(strategies, backups, failures, base + ".html", start, end, host)
        log("INFO", "week %s to %s: %d strategies, %d backups" % (start.date(), end.date(), len(strategies),
                                                                   len(backups)))
        if args.dry_run:
            for line in summary.splitlines():
                log("INFO", line)
            return EX_OK
        charts = draw_charts(strategies, daily_pnl, backups)
        page = render_html(strategies, backups, failures, charts, start, end, host)
        try:
            write_atomic(base + ".csv", lambda path: write_csv(path, strategies, start, end))
            write_atomic(base + "-backups.csv", lambda path: write_backups_csv(path, backups))
            write_atomic(base + ".html", lambda path: write_text(path, page))
        except OSError as exc:
            raise ReportError(EX_CANTCREAT, "cannot write the report under %s: %s" % (settings["output_dir"], exc))
        log("INFO", "wrote %s.html, %s.csv and %s-backups.csv" % (base, base, base))
    except ReportError as exc:
        log("ERROR", exc.message)
        return exc.code
    if settings["send_summary"]:
        total = sum(row["pnl"] for row in strategies)
        subject = "weekly report %s: %d strategies, realized P&L %.2f" % (end.date(), len(strategies), total)
        try:
            subprocess.run([ALERT_COMMAND, "--severity", "info", "--key", "weekly_report", subject],
                           input=summary, text=True, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log("WARN", "alert command %s failed: %s; the report is written" % (ALERT_COMMAND, exc))
    return EX_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
