"""Helpers for the default scenario's testinfra tests."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


@pytest.fixture(scope="session")
def lab_secret():
    """Return a generated lab password by its role name."""
    secrets_dir = os.environ.get("TRADEOPS_LAB_SECRETS") or os.path.join(
        os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "secrets")

    def read(name):
        with open(os.path.join(secrets_dir, name), encoding="utf-8") as handle:
            return handle.read().rstrip("\n")

    return read


def write_file(container, path, content, mode="0600"):
    """Write content to a file in a container through stdin, never argv."""
    subprocess.run(["podman", "exec", "-i", container, "sh", "-c",
                    'umask 077 && cat > "$1" && chmod %s "$1"' % mode, "sh", path],
                   input=content.encode(), check=True)
