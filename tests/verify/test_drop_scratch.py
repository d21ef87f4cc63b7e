"""Dropping a scratch database while another session is still connected to it."""

import threading
import time

import psycopg2
import pytest

from conftest import admin_execute
from tradeops_postgres import TradeopsError, connect
import tradeops_verify

SCRATCH = "tradeops_verify_droptest"
OTHER_ROLE = "verify_test_other_session"


@pytest.fixture
def scratch_with_other_session(verify_cluster, verifier_params):
    """A scratch database made by the verifier, with a session of another non-superuser role in it."""
    admin_execute(verify_cluster, "DROP ROLE IF EXISTS %s" % OTHER_ROLE)
    admin_execute(verify_cluster, "CREATE ROLE %s LOGIN" % OTHER_ROLE)
    verifier = connect(verifier_params)
    verifier.autocommit = True
    with verifier.cursor() as cur:
        cur.execute("CREATE DATABASE %s" % SCRATCH)
    admin_execute(verify_cluster, "GRANT CONNECT ON DATABASE %s TO %s" % (SCRATCH, OTHER_ROLE))
    other = psycopg2.connect(verify_cluster.dsn(SCRATCH, user=OTHER_ROLE))
    yield verifier, other
    if not other.closed:
        other.close()
    verifier.close()
    admin_execute(verify_cluster, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % SCRATCH)
    admin_execute(verify_cluster, "DROP ROLE IF EXISTS %s" % OTHER_ROLE)


def test_drop_waits_for_session_to_leave(scratch_with_other_session, verify_cluster, monkeypatch):
    verifier, other = scratch_with_other_session
    monkeypatch.setattr(tradeops_verify, "DROP_RETRY_SECONDS", 0.2)
    leaver = threading.Timer(1.0, other.close)
    leaver.start()
    started = time.monotonic()
    tradeops_verify.drop_database(verifier, SCRATCH)
    leaver.join()
    assert time.monotonic() - started >= 0.9
    assert admin_execute(verify_cluster, "SELECT count(*) FROM pg_database WHERE datname = %s",
                         (SCRATCH,)) == [(0,)]


def test_drop_reports_session_that_stays(scratch_with_other_session, verify_cluster, monkeypatch):
    verifier, _ = scratch_with_other_session
    monkeypatch.setattr(tradeops_verify, "DROP_RETRY_SECONDS", 0.05)
    with pytest.raises(TradeopsError) as raised:
        tradeops_verify.drop_database(verifier, SCRATCH)
    assert 'Failed to drop scratch database "%s"' % SCRATCH in str(raised.value)
    assert "is being accessed by other users" in str(raised.value)
