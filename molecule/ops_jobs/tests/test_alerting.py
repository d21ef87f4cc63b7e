"""The alert command: mail, webhook, system_alerts, redaction and failing channels."""

import json
import subprocess
import uuid

from conftest import psql_db, wait_for_mails
from lab_hosts import first_in_group, hosts_in_group

testinfra_hosts = hosts_in_group("app")

WEBHOOK_LISTENER = r"""
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "wb") as handle:
            handle.write(body)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.handle_request()
"""


def send_alert(host, key, subject, message, config="/etc/tradeops/alert.conf"):
    return host.run("printf '%%s' %s | /usr/local/sbin/tradeops-alert --config %s --severity critical --key %s %s",
                    message, config, key, subject)


def test_alert_reaches_mail_and_database(host):
    key = "test_" + uuid.uuid4().hex[:8]
    result = send_alert(host, key, "disk almost full", "details of the test alert")
    assert result.rc == 0, result.stderr
    delivered = wait_for_mails(host, key, 1)
    assert len(delivered) == 1
    assert "CRITICAL: disk almost full" in delivered[0]["subject"]
    assert "details of the test alert" in delivered[0]["body"]
    rows = psql_db("SELECT severity, replace(message, E'\\n', ' ') FROM system_alerts WHERE type = '%s'" % key)
    assert len(rows) == 1
    assert rows[0][0] == "critical"
    assert "disk almost full" in rows[0][1]


def test_alert_redacts_secrets(host):
    key = "test_" + uuid.uuid4().hex[:8]
    message = ("pg_dump failed: password=hunter2secret PGPASSWORD=s3cr3tvalue "
               "url postgresql://trading_user:pa55word@db:5432/trading_db token: abcdef123456")
    assert send_alert(host, key, "backup failed password=subjectsecret", message).rc == 0
    delivered = wait_for_mails(host, key, 1)
    assert len(delivered) == 1
    text = delivered[0]["subject"] + delivered[0]["body"]
    for secret in ("hunter2secret", "s3cr3tvalue", "pa55word", "abcdef123456", "subjectsecret"):
        assert secret not in text
    assert "postgresql://***@db:5432/trading_db" in text
    rows = psql_db("SELECT replace(message, E'\\n', ' ') FROM system_alerts WHERE type = '%s'" % key)
    assert "hunter2secret" not in rows[0][0]
    assert "password=***" in rows[0][0]


def test_alert_posts_webhook(host):
    key = "test_" + uuid.uuid4().hex[:8]
    host.run("rm -f /tmp/webhook-body.json")
    host.run("sed 's|^url = .*|url = http://127.0.0.1:18088/alerts|' /etc/tradeops/alert.conf > /tmp/alert-webhook.conf")
    # The listener runs in the container for as long as this podman exec
    # does, and exits after one request.
    listener = subprocess.Popen(["podman", "exec", first_in_group("app"), "python3", "-c", WEBHOOK_LISTENER,
                                 "18088", "/tmp/webhook-body.json"])
    try:
        host.run("for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/18088) 2>/dev/null && break; sleep 0.1; done")
        result = send_alert(host, key, "webhook test", "sent to the listener", config="/tmp/alert-webhook.conf")
        listener.wait(timeout=10)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert result.rc == 0, result.stderr
    body = json.loads(host.file("/tmp/webhook-body.json").content_string)
    assert body["key"] == key
    assert body["severity"] == "critical"
    assert body["subject"] == "webhook test"


def test_alert_survives_broken_channels(host):
    key = "test_" + uuid.uuid4().hex[:8]
    # Nothing listens on the webhook port and the database host does not
    # resolve: the command still exits 0 and the mail still goes out.
    host.run("sed -e 's|^url = .*|url = http://127.0.0.1:18089/none|' -e 's|^host = .*|host = no-such-db.invalid|' "
             "/etc/tradeops/alert.conf > /tmp/alert-broken.conf")
    result = send_alert(host, key, "broken channels", "still mailed",
                        config="/tmp/alert-broken.conf")
    assert result.rc == 0, result.stderr
    assert len(wait_for_mails(host, key, 1)) == 1
    log = host.file("/var/log/tradeops/alert.log").content_string
    assert "webhook: POST to http://127.0.0.1:18089 failed" in log
    assert "database: cannot connect to no-such-db.invalid" in log


def test_alert_rejects_invalid_arguments(host):
    assert host.run("/usr/local/sbin/tradeops-alert </dev/null").rc == 64
    assert host.run("/usr/local/sbin/tradeops-alert --severity loud subject </dev/null").rc == 64
    assert host.run("/usr/local/sbin/tradeops-alert --key 'bad key' subject </dev/null").rc == 64


def test_alert_role_may_only_insert(host):
    rows = psql_db("SELECT has_table_privilege('tradeops_alert', 'public.system_alerts', 'INSERT'), "
                   "has_table_privilege('tradeops_alert', 'public.system_alerts', 'SELECT'), "
                   "has_table_privilege('tradeops_alert', 'public.orders', 'SELECT')")
    assert rows == [["t", "f", "f"]]
