"""load_job_settings: the JSON settings file shared by the job programs."""

import pytest

from tradeops_postgres import ConfigError, load_job_settings

SECTIONS = (("connection", dict), ("kinds", list))


def write(tmp_path, text):
    path = tmp_path / "settings.json"
    path.write_text(text)
    return str(path)


def test_banner_lines_skipped(tmp_path):
    path = write(tmp_path, '# Ansible managed\n#\n{"connection": {"login_user": "u"}, "kinds": []}\n')
    assert load_job_settings(path, "some_role", SECTIONS)["connection"] == {"login_user": "u"}


def test_missing_file_names_role(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_job_settings(str(tmp_path / "absent.json"), "some_role", SECTIONS)
    assert str(raised.value).startswith('Failed to read the settings file "')
    assert "Run the some_role role" in str(raised.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "Invalid JSON in the settings file"),
    ("[1, 2]", "expected a JSON object"),
    ('{"kinds": []}', '"connection" is missing or not a dict'),
    ('{"connection": {}, "kinds": {}}', '"kinds" is missing or not a list'),
    ('{"connection": {"password": "x"}, "kinds": []}', "unknown connection keys password"),
])
def test_invalid_settings_rejected(tmp_path, text, message):
    with pytest.raises(ConfigError) as raised:
        load_job_settings(write(tmp_path, text), "some_role", SECTIONS)
    assert message in str(raised.value)
