"""Log rotation through logrotate: dated, and no line lost while a writer appends."""

import datetime
import subprocess
import uuid

from lab_hosts import first_in_group, hosts_in_group

testinfra_hosts = hosts_in_group("app")

WRITER = r"""
i=0
end=$(( $(date +%s) + 4 ))
while [ "$(date +%s)" -lt "$end" ]; do
    i=$((i + 1))
    echo "rotation-test $1 line $i" >> /opt/trading-app/logs/app.log
done
echo "$i" > /tmp/rotation-writer.count
"""


def test_rotation_loses_no_line(host):
    today = datetime.datetime.now().strftime("%Y%m%d")
    rotated = "/opt/trading-app/logs/app.log-" + today
    # A dated name can be used once a day: clear today's from earlier runs.
    host.run("rm -f /tmp/rotation-writer.count /opt/trading-app/logs/*.log-%s* /var/log/tradeops/*.log-%s*",
             today, today)
    tag = uuid.uuid4().hex[:8]
    writer = subprocess.Popen(["podman", "exec", first_in_group("app"), "sh", "-c", WRITER, "sh", tag])
    try:
        host.run("sleep 1.5")
        result = host.run("/usr/local/sbin/tradeops-rotate-logs --force")
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert result.rc == 0, result.stderr
    written = int(host.file("/tmp/rotation-writer.count").content_string)
    assert host.file(rotated).exists
    counted = int(host.check_output("cat /opt/trading-app/logs/app.log %s | grep -c '^rotation-test %s line '", rotated, tag))
    assert written > 100
    assert counted == written
    # Each line is there exactly once, in order.
    numbers = host.check_output("cat %s /opt/trading-app/logs/app.log | sed -n 's/^rotation-test %s line //p'", rotated,
                            tag)
    assert [int(n) for n in numbers.split()] == list(range(1, written + 1))


def test_rotated_application_log_owner(host):
    log = host.file("/opt/trading-app/logs/app.log")
    assert log.user == "trading"
    assert log.group == "trading"
    assert log.mode == 0o640


def test_job_logs_rotated_with_date(host):
    today = datetime.datetime.now().strftime("%Y%m%d")
    assert host.file("/var/log/tradeops/broker-data.log-" + today).exists
    assert host.file("/var/log/tradeops/broker-data.log").user == "tradeops"


def test_logrotate_config_is_valid(host):
    result = host.run("logrotate --debug --state /dev/null /etc/tradeops/logrotate.conf")
    assert result.rc == 0, result.stderr
    config = host.file("/etc/tradeops/logrotate.conf").content_string
    for directive in ("daily", "rotate 30", "dateext", "compress", "delaycompress", "missingok", "notifempty",
                      "su trading trading", "su tradeops tradeops"):
        assert directive in config
