"""The weekly report: written from real data, its numbers match direct SQL, and its summary is sent."""

import csv
import datetime
import io

import pytest
from conftest import psql_db, wait_for_mails
from lab_hosts import hosts_in_group

testinfra_hosts = hosts_in_group("db")

# The week ends tomorrow (UTC), so it covers the 7 days up to now, where
# the lab data has positions.
END = (datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=1)).isoformat()
BASE = "/var/lib/tradeops/reports/weekly-report-" + END

# Trades, P&L and wins straight from the positions closed in the week.
EXPECTED_SQL = """
WITH closed AS (
    SELECT strategy_id, realized_pnl
      FROM positions
     WHERE closed_at >= '{end}'::timestamptz - interval '7 days' AND closed_at < '{end}'::timestamptz
)
SELECT s.name, count(c.realized_pnl), coalesce(sum(c.realized_pnl), 0),
       count(c.realized_pnl) FILTER (WHERE c.realized_pnl > 0)
  FROM strategies s LEFT JOIN closed c ON c.strategy_id = s.id
 GROUP BY s.name ORDER BY s.name
"""

# Maximum drawdown: the largest gap between the running peak (from 0) and
# the running sum of realized P&L, computed in SQL instead of Python.
DRAWDOWN_SQL = """
SELECT s.name, coalesce(max(d.peak - d.running), 0)
  FROM strategies s LEFT JOIN (
    SELECT strategy_id, running,
           greatest(0, max(running) OVER (PARTITION BY strategy_id ORDER BY closed_at, id)) AS peak
      FROM (SELECT strategy_id, closed_at, id,
                   sum(realized_pnl) OVER (PARTITION BY strategy_id ORDER BY closed_at, id) AS running
              FROM positions
             WHERE closed_at >= '{end}'::timestamptz - interval '7 days' AND closed_at < '{end}'::timestamptz) r
  ) d ON d.strategy_id = s.id
 GROUP BY s.name ORDER BY s.name
"""


@pytest.fixture(scope="module")
def report(host):
    result = host.run("runuser -u tradeops -- /usr/local/sbin/tradeops-weekly-report --end %s", END)
    assert result.rc == 0, host.file("/var/log/tradeops/weekly-report.log").content_string[-3000:]
    rows = list(csv.DictReader(io.StringIO(host.file(BASE + ".csv").content_string)))
    return {row["strategy"]: row for row in rows}


def test_report_has_every_strategy(host, report):
    names = [row[0] for row in psql_db("SELECT name FROM strategies ORDER BY name")]
    assert sorted(report) == names


def test_report_has_trades(host, report):
    assert sum(int(row["trades"]) for row in report.values()) > 0


def test_report_numbers_match_sql(host, report):
    for name, trades, pnl, wins in psql_db(EXPECTED_SQL.format(end=END)):
        row = report[name]
        assert int(row["trades"]) == int(trades), name
        assert float(row["pnl"]) == pytest.approx(float(pnl), abs=1e-6), name
        if int(trades):
            assert float(row["win_rate"]) == pytest.approx(int(wins) / int(trades), abs=1e-4), name
        else:
            assert row["win_rate"] == "", name


def test_report_drawdown_matches_sql(host, report):
    for name, drawdown in psql_db(DRAWDOWN_SQL.format(end=END)):
        assert float(report[name]["max_drawdown"]) == pytest.approx(float(drawdown), abs=1e-6), name


def test_report_filled_orders_match_sql(host, report):
    rows = psql_db("SELECT s.name, count(o.id) FROM strategies s LEFT JOIN orders o ON o.strategy_id = s.id "
                   "AND o.status = 'filled' AND o.created_at >= '{end}'::timestamptz - interval '7 days' "
                   "AND o.created_at < '{end}'::timestamptz GROUP BY s.name".format(end=END))
    for name, count in rows:
        assert int(report[name]["filled_orders"]) == int(count), name


def test_report_page_has_charts(host, report):
    page = host.file(BASE + ".html")
    assert page.user == "tradeops"
    assert page.mode == 0o640
    assert page.content_string.count('src="data:image/png;base64,iVBOR') == 3


def test_report_summary_sent(host, report):
    sent = wait_for_mails(host, "weekly_report", 1)
    assert len(sent) >= 1
    assert BASE + ".html" in sent[-1]["body"]
    assert "Total realized P&L:" in sent[-1]["body"]
