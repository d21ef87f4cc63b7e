"""Helpers of the ops_jobs scenario's testinfra tests."""

import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from lab_hosts import first_in_group  # noqa: E402  pylint: disable=wrong-import-position

# The lab mails alerts to the ops user; exim4 delivers them on the host itself.
MAILBOX = "/var/mail/tradeops"

# Parse the mailbox and print one JSON object per message.
_READ_MAILBOX = """
import json, mailbox, sys
for message in mailbox.mbox(sys.argv[1]):
    print(json.dumps({"key": message.get("X-Tradeops-Key", ""), "subject": " ".join(message["Subject"].split()),
                      "body": message.get_payload(decode=True).decode("utf-8", "replace")}))
"""


def mails(host, key=None):
    """Return the alert mails in the host's mailbox, optionally only those with the given key."""
    result = host.run("test -e %s && python3 -c %s %s", MAILBOX, _READ_MAILBOX, MAILBOX)
    found = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return [mail for mail in found if key is None or mail["key"] == key]


def wait_for_mails(host, key, count, timeout=15):
    """Wait until the mailbox has at least count mails with key (exim delivers in the background)."""
    deadline = time.time() + timeout
    while True:
        found = mails(host, key)
        if len(found) >= count or time.time() > deadline:
            return found
        time.sleep(0.5)


def psql_db(sql):
    """Run one query in trading_db on the db host as postgres and return its rows."""
    result = subprocess.run(["podman", "exec", first_in_group("db"), "runuser", "-u", "postgres", "--",
                             "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", "trading_db",
                             "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines() if line]


def write_file(container, path, content, mode="0644"):
    """Write content to a file in a container through stdin."""
    subprocess.run(["podman", "exec", "-i", container, "sh", "-c",
                    'cat > "$1" && chmod %s "$1"' % mode, "sh", path],
                   input=content.encode(), check=True)


@pytest.fixture(scope="session")
def db_container():
    return first_in_group("db")


@pytest.fixture(scope="session")
def app_container():
    return first_in_group("app")
