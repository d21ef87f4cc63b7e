"""Job status for monitoring: node_exporter textfile metrics written by jobs.sh."""

import re

from lab_hosts import hosts_in_group

testinfra_hosts = hosts_in_group("app")

PROM = "/var/lib/tradeops/textfile/tradeops_job_broker-data.prom"


def metric(text, name):
    match = re.search(r'^%s\{job="broker-data"\} (\d+)$' % name, text, re.MULTILINE)
    assert match, "%s missing from %s" % (name, PROM)
    return int(match.group(1))


def test_metrics_after_success_and_failure(host):
    assert host.run("/usr/local/sbin/tradeops-broker-data").rc == 0
    success = host.file(PROM).content_string
    last_success = metric(success, "tradeops_job_last_success_timestamp_seconds")
    assert metric(success, "tradeops_job_exit_code") == 0
    assert metric(success, "tradeops_job_last_run_timestamp_seconds") == last_success
    host.run("sleep 1.1; touch /opt/trading-app/lab-fail/updateTokens.ts")
    try:
        assert host.run("/usr/local/sbin/tradeops-broker-data").rc == 1
    finally:
        host.run("rm -f /opt/trading-app/lab-fail/updateTokens.ts")
    failure = host.file(PROM).content_string
    assert metric(failure, "tradeops_job_exit_code") == 1
    # A failed run keeps the time of the last success.
    assert metric(failure, "tradeops_job_last_success_timestamp_seconds") == last_success
    assert metric(failure, "tradeops_job_last_run_timestamp_seconds") > last_success
    assert metric(failure, "tradeops_job_duration_seconds") >= 0


def test_metrics_file_mode(host):
    prom = host.file(PROM)
    assert prom.mode == 0o644
    assert host.run("ls -A /var/lib/tradeops/textfile | grep -c '^\\.'").stdout.strip() == "0"
