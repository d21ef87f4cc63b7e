"""Redaction of secrets in alerts."""

import pytest


@pytest.mark.parametrize("text, secret", [
    ("password=hunter2", "hunter2"),
    ("PGPASSWORD=abc123 pg_dump", "abc123"),
    ("db_password: 's p a c e'", "s p a c e"),
    ('{"api_key": "k-123"}', "k-123"),
    ("token=xyz&user=a", "xyz"),
    ("postgresql://trading_user:pa55@db:5432/trading_db", "pa55"),
    ("https://hooks:tok3n@example.invalid/x", "tok3n"),
    ("Authorization: Bearer eyJhbGciOi", "eyJhbGciOi"),
    ("client_secret = s3cr3t", "s3cr3t"),
])
def test_redact_removes_secret(alert, text, secret):
    assert secret not in alert.redact(text)


def test_redact_keeps_plain_text(alert):
    text = "disk /opt/backups is 95% used (limit 90%) on db-1"
    assert alert.redact(text) == text


def test_redact_keeps_url_host(alert):
    assert alert.redact("postgresql://u:p@db:5432/x") == "postgresql://***@db:5432/x"


def test_redact_url_for_logs(alert):
    assert alert.redact_url("https://user:pw@hooks.example.invalid/path?token=1") == "https://hooks.example.invalid"


@pytest.mark.parametrize("argv", [
    [],
    ["--severity", "loud", "subject"],
    ["--key", "bad key", "subject"],
    ["   "],
])
def test_alert_invalid_arguments_exit_64(alert, argv):
    assert alert.main(argv) == 64
