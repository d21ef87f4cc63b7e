"""Converge benchmark: site.yml on throwaway podman hosts, 2, 4 and 8 at a time.

For each host count N it writes an inventory in a temporary directory with
N/2 db hosts (tradeops-bench-db-1, ...) and N/2 app hosts
(tradeops-bench-app-1, ...), creates their containers with
playbooks/lab-up.yml on the podman network tradeops-bench, times a first
site.yml run and then --runs no-change runs under each strategy of
STRATEGIES, and removes the containers and the network with
playbooks/lab-down.yml, also after an error. Every host
gets the lab's group_vars: each db host runs its own PostgreSQL, and every
app host uses the first db host (tradeops_db_host is groups['db'][0]).

It touches no container or network that it did not create: it stops
before lab-up when a container or the network of that name already exists.
"""

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time

import yaml

from measure import median_of

log = logging.getLogger("bench.converge")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK = "tradeops-bench"
HOST_PREFIX = "tradeops-bench-"
TASK_LINE = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]")
CHANGED_LINE = re.compile(r"^changed: \[([^\]]+)\]")
RECAP_LINE = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                        r"\s+skipped=(\d+)")


# The ways site.yml runs, by the name the results use. The first is what
# ansible.cfg sets, and it also makes the first run. The second is stock
# ansible-core with the pipelining podman connection.
STRATEGIES = (
    ("mitogen_linear", {}, []),
    ("linear", {"ANSIBLE_STRATEGY": "linear"}, ["-e", "ansible_connection=podman_pipelined"]),
)


def playbook_env(secrets_dir):
    """Return the environment the README gives for running ansible-playbook by hand."""
    env = dict(os.environ)
    env["PATH"] = os.path.join(REPO, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    env["CONTAINERS_CONF"] = os.path.join(REPO, "lab", "containers.conf")
    env["TRADEOPS_LAB_SECRETS"] = secrets_dir
    env["ANSIBLE_FORCE_COLOR"] = "false"
    return env


def host_names(host_count):
    half = host_count // 2
    return ([HOST_PREFIX + "db-%d" % number for number in range(1, half + 1)],
            [HOST_PREFIX + "app-%d" % number for number in range(1, half + 1)])


def write_inventory(directory, host_count):
    """Write hosts.yml with the db and app hosts and link the lab's group_vars; return the inventory path."""
    db_hosts, app_hosts = host_names(host_count)
    lab_vars = yaml.safe_load(open(os.path.join(REPO, "inventory", "lab", "hosts.yml"), encoding="utf-8"))
    inventory = {"all": {
        "children": {"db": {"hosts": {name: None for name in db_hosts}},
                     "app": {"hosts": {name: None for name in app_hosts}}},
        "vars": lab_vars["all"]["vars"],
    }}
    path = os.path.join(directory, "inventory")
    os.makedirs(path)
    with open(os.path.join(path, "hosts.yml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(inventory, handle, default_flow_style=False)
    os.symlink(os.path.join(REPO, "inventory", "lab", "group_vars"), os.path.join(path, "group_vars"))
    return path


def podman_object_exists(kind, name, env):
    """Return whether a podman container or network of this name exists."""
    process = subprocess.run(["podman", kind, "exists", name], env=env, capture_output=True, check=False)
    return process.returncode == 0


def check_names_free(host_count, env):
    """Raise when a container or the network that lab-up would create already exists."""
    db_hosts, app_hosts = host_names(host_count)
    existing = [name for name in db_hosts + app_hosts if podman_object_exists("container", name, env)]
    if podman_object_exists("network", NETWORK, env):
        existing.append("network " + NETWORK)
    if existing:
        raise RuntimeError("podman objects already exist: %s. They were not made by this run, so it leaves them; "
                           "remove them when they are stale (make the lab-down of the inventory that made them)."
                           % ", ".join(existing))


def parse_recap(output):
    hosts = {}
    for line in output.splitlines():
        match = RECAP_LINE.match(line.strip())
        if match:
            ok, changed, unreachable, failed, skipped = (int(value) for value in match.groups()[1:])
            hosts[match.group(1)] = {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed,
                                     "skipped": skipped}
    return hosts


def changed_tasks(output):
    """Return "host: task" for every task result that PLAY output reports as changed."""
    changed = []
    task = None
    for line in output.splitlines():
        match = TASK_LINE.match(line)
        if match:
            task = match.group(1)
            continue
        match = CHANGED_LINE.match(line)
        if match:
            changed.append("%s: %s" % (match.group(1), task))
    return changed


def ansible_playbook(command, env):
    """Run an ansible-playbook command from the repository; return its stdout and wall seconds."""
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError("%s failed with exit code %d:\n%s%s"
                           % (" ".join(command), process.returncode, process.stdout[-4000:], process.stderr[-2000:]))
    return process.stdout, wall


def run_site(inventory, env, extra_args=()):
    output, wall = ansible_playbook(["ansible-playbook", "-i", inventory, "site.yml"] + list(extra_args), env)
    hosts = parse_recap(output)
    # ansible.cfg hides skipped tasks (display_skipped_hosts = false), so the
    # count comes from PLAY RECAP, whose ok includes the changed tasks.
    return {"wall_seconds": round(wall, 1),
            "tasks": sum(host["ok"] + host["skipped"] + host["failed"] for host in hosts.values()),
            "changed": sum(host["changed"] for host in hosts.values()),
            "changed_tasks": changed_tasks(output),
            "hosts": hosts}


def measure_hosts(host_count, runs, log_sample):
    """Create host_count throwaway hosts, time site.yml on them, and remove them."""
    directory = tempfile.mkdtemp(prefix="tradeops-bench-converge-")
    env = playbook_env(os.path.join(directory, "secrets"))
    network_args = ["-e", "lab_network=" + NETWORK]
    try:
        inventory = write_inventory(directory, host_count)
        check_names_free(host_count, env)
        try:
            log.info("creating %d hosts on the podman network %s", host_count, NETWORK)
            ansible_playbook(["ansible-playbook", "-i", inventory, "playbooks/lab-up.yml"] + network_args, env)
            first = run_site(inventory, env)
            log_sample("converge, %d hosts, first run: %s s, %d tasks, %d changed"
                       % (host_count, first["wall_seconds"], first["tasks"], first["changed"]))
            by_strategy = {}
            for strategy, strategy_env, extra_args in STRATEGIES:
                samples = []
                for round_number in range(runs):
                    samples.append(run_site(inventory, dict(env, **strategy_env), extra_args))
                    log_sample("converge, %d hosts, %s, no-change run %d: %s s, %d tasks, %d changed"
                               % (host_count, strategy, round_number + 1, samples[-1]["wall_seconds"],
                                  samples[-1]["tasks"], samples[-1]["changed"]))
                    for task in samples[-1]["changed_tasks"]:
                        log.warning("changed in a no-change run: %s", task)
                by_strategy[strategy] = {"samples": samples, "median_wall_seconds": median_of(samples, "wall_seconds"),
                                         "changed_total": sum(sample["changed"] for sample in samples)}
        finally:
            log.info("removing the %d hosts and the network %s", host_count, NETWORK)
            ansible_playbook(["ansible-playbook", "-i", inventory, "playbooks/lab-down.yml"] + network_args, env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    default = by_strategy[STRATEGIES[0][0]]
    return {"hosts": host_count, "first_run": first, "strategy": STRATEGIES[0][0], "samples": default["samples"],
            "median_wall_seconds": default["median_wall_seconds"], "tasks": default["samples"][-1]["tasks"],
            "changed_total": sum(entry["changed_total"] for entry in by_strategy.values()),
            "by_strategy": by_strategy}


def run(host_counts, runs, log_sample):
    """Measure site.yml for each host count in turn and return the results."""
    return {"command": "ansible-playbook -i <temporary inventory> site.yml", "network": NETWORK,
            "by_hosts": [measure_hosts(count, runs, log_sample) for count in host_counts]}
