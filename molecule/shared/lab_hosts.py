"""Map a molecule scenario's inventory groups to testinfra podman hosts.

testinfra's podman backend runs each command with one `podman exec`,
several times faster than going through Ansible for every command. The
platforms and their groups come from the scenario's molecule.yml.
"""

import os

import yaml


def _platforms():
    scenario_dir = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    with open(os.path.join(scenario_dir, "molecule.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["platforms"]


def hosts_in_group(group):
    """Return testinfra host specs ("podman://NAME") of the group's platforms."""
    return ["podman://" + platform["name"] for platform in _platforms()
            if group == "all" or group in platform.get("groups", [])]


def first_in_group(group):
    """Return the container name of the group's first platform."""
    return hosts_in_group(group)[0][len("podman://"):]
