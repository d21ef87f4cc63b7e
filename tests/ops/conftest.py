"""Load the ops job programs, which are installed without a .py name, as modules."""

import importlib.machinery
import importlib.util
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def load(name, relative_path):
    path = os.path.join(ROOT, relative_path)
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def alert():
    return load("tradeops_alert", "roles/alerting/files/usr/local/sbin/tradeops-alert")


@pytest.fixture(scope="session")
def health():
    return load("tradeops_health", "roles/health_check/files/usr/local/lib/tradeops/python/tradeops_health.py")


@pytest.fixture(scope="session")
def report():
    return load("tradeops_weekly_report",
                "roles/weekly_report/files/usr/local/lib/tradeops/python/tradeops_weekly_report.py")
