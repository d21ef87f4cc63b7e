"""Every host: packages, the ops user, directories, the job library, cron."""

import pytest
from lab_hosts import hosts_in_group

testinfra_hosts = hosts_in_group("all")


@pytest.mark.parametrize("package", [
    "cron", "logrotate", "gzip", "zstd", "pigz", "postgresql-client-15",
])
def test_package_installed(host, package):
    assert host.package(package).is_installed


def test_ops_user_is_system_user(host):
    user = host.user("tradeops")
    assert user.exists
    assert user.uid < 1000
    assert user.group == "tradeops"
    assert user.shell == "/usr/sbin/nologin"


@pytest.mark.parametrize("path, owner, group, mode", [
    ("/opt/backups", "root", "tradeops", 0o750),
    ("/opt/backups/postgres", "tradeops", "tradeops", 0o750),
    ("/opt/backups/config", "tradeops", "tradeops", 0o750),
    ("/opt/backups/logs", "tradeops", "tradeops", 0o750),
    ("/opt/backups/strategies", "tradeops", "tradeops", 0o750),
    ("/var/log/tradeops", "tradeops", "adm", 0o750),
    ("/var/lib/tradeops/status", "tradeops", "tradeops", 0o755),
    ("/etc/tradeops", "root", "tradeops", 0o750),
    ("/usr/local/lib/tradeops", "root", "root", 0o755),
])
def test_directory_owner_and_mode(host, path, owner, group, mode):
    directory = host.file(path)
    assert directory.is_directory
    assert directory.user == owner
    assert directory.group == group
    assert directory.mode == mode


def test_backups_not_world_readable(host):
    # Nothing under the backup root may be readable by other users.
    found = host.check_output("find /opt/backups -perm /o=rwx -printf '%p\\n'")
    assert found == ""


def test_job_library_installed(host):
    library = host.file("/usr/local/lib/tradeops/jobs.sh")
    assert library.user == "root"
    assert library.mode == 0o644
    assert library.contains("job_init()")


def test_job_settings_file(host):
    settings = host.file("/etc/default/tradeops")
    assert settings.mode == 0o644
    assert settings.contains("^TRADEOPS_LOG_DIR=/var/log/tradeops$")


def test_cron_daemon_running(host):
    assert len(host.process.filter(comm="cron")) == 1


def test_cron_file_owner_and_mode(host):
    cron_file = host.file("/etc/cron.d/trading_app_tasks")
    assert cron_file.user == "root"
    assert cron_file.group == "root"
    assert cron_file.mode == 0o644

