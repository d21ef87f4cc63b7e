"""The linear strategy run through Mitogen, found here so that ansible.cfg needs no path into the virtualenv.

Mitogen (the mitogen package in requirements.txt) keeps one Python
interpreter per host for the whole play and sends it each task's module, in
place of a new connection and a new interpreter for every task. For the lab's
podman hosts and for ssh hosts this makes a run several times faster; the
numbers are in docs/benchmarks.md. Set ANSIBLE_STRATEGY=linear to run
without it.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401  pylint: disable=unused-import
