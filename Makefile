# tradeops: one entry point for the lab and the tests.
#
#   make lab        provision the local lab from nothing and load real data
#   make test       run every test: lint, module tests, molecule scenarios
#   make lab-down   remove the lab containers (the image stays cached)
#
# Both targets install what they need: Debian packages through apt-get
# (podman, runc, debootstrap, PostgreSQL 15, shellcheck), a Python venv in
# .venv from requirements.txt, and the lab image (built once, then cached).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_FORCE_COLOR := false
export PY_COLORS := 0

HOST_PACKAGES := podman runc debootstrap postgresql-15 postgresql-client-15 shellcheck
# Every molecule scenario, longest first so that two at a time finish
# together; the lint target fails when a scenario folder is missing here.
MOLECULE_SCENARIOS := ops_jobs restore_drill default backup maintenance
LAB_TICKS ?= 1000000

.PHONY: lab lab-down test lint pytest molecule host-packages image venv

lab: host-packages venv image
	ansible-playbook playbooks/lab-up.yml
	ansible-playbook site.yml
	ansible-playbook playbooks/lab-data.yml -e lab_data_ticks=$(LAB_TICKS)
	ansible-playbook playbooks/backup.yml
	ansible-playbook playbooks/restore-drill.yml
	ansible-playbook playbooks/lab-summary.yml

lab-down: venv
	ansible-playbook playbooks/lab-down.yml

test: host-packages venv image lint pytest molecule

host-packages:
	@missing=$$(for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

image:
	bash lab/build-image.sh

lint: venv
	yamllint --strict .
	ansible-lint
	shellcheck -x $$(git ls-files '*.sh' 'roles/*/files/*' | xargs grep -l '^#!.*\(ba\)\?sh' 2>/dev/null)
	python tools/check_argument_specs.py
	for dir in molecule/*/molecule.yml; do \
	    scenario=$$(basename "$$(dirname "$$dir")"); \
	    case " $(MOLECULE_SCENARIOS) " in *" $$scenario "*) ;; \
	    *) echo "molecule scenario $$scenario is missing from MOLECULE_SCENARIOS in the Makefile"; exit 1;; esac; \
	done
	for playbook in site.yml playbooks/*.yml; do \
	    ansible-playbook --syntax-check "$$playbook" >/dev/null || { echo "syntax check failed: $$playbook"; exit 1; }; \
	done
	for module in $$(ls library/*.py 2>/dev/null | xargs -rn1 basename | sed 's/\.py$$//'); do \
	    ansible-doc -M library "$$module" >/dev/null || { echo "ansible-doc failed: $$module"; exit 1; }; \
	done
	@echo "lint: passed"

# One pytest session per folder: each folder's conftest.py has helpers its
# tests import by the name "conftest", which would clash in one session.
pytest: venv image
	status=0; \
	for dir in tests/*/; do \
	    echo "=== pytest $$dir"; \
	    python -m pytest "$$dir" -q -p no:cacheprovider || status=1; \
	done; \
	exit $$status

# Two scenarios at a time: most of a converge is spent waiting on podman
# exec, so a second one uses the idle time of the first.
MOLECULE_JOBS ?= 2

molecule: venv image
	tools/run-molecule.sh -j $(MOLECULE_JOBS) $(MOLECULE_SCENARIOS)
