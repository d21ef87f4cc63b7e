#!/usr/bin/env python3
"""Check that each role's argument spec matches its defaults/main.yml.

The spec in meta/argument_specs.yml is the role's documentation; the value
used at run time comes from defaults/main.yml. This check fails when a
default is missing from the spec, a spec option has no default where the
defaults file sets one, or the two values differ. Internal variables
(starting with "__") are ignored.

Usage: tools/check_argument_specs.py [ROLES_DIR]   (default: roles)
Exit status: 0 when every role matches, 1 otherwise.
"""

import os
import sys

import yaml


def load_yaml(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def check_role(role_dir):
    """Return a list of problems found in one role."""
    name = os.path.basename(role_dir)
    defaults_path = os.path.join(role_dir, "defaults", "main.yml")
    spec_path = os.path.join(role_dir, "meta", "argument_specs.yml")
    defaults = load_yaml(defaults_path) if os.path.exists(defaults_path) else {}
    if not os.path.exists(spec_path):
        return ["%s: meta/argument_specs.yml is missing" % name]
    spec = load_yaml(spec_path).get("argument_specs", {}).get("main", {})
    options = spec.get("options", {}) or {}
    problems = []
    for key, value in defaults.items():
        if key.startswith("__"):
            continue
        if key not in options:
            problems.append("%s: default '%s' is not documented in the argument spec" % (name, key))
        elif "default" not in options[key]:
            problems.append("%s: option '%s' has no default in the spec, defaults/main.yml sets %r"
                            % (name, key, value))
        elif options[key]["default"] != value:
            problems.append("%s: option '%s' defaults to %r in the spec but %r in defaults/main.yml"
                            % (name, key, options[key]["default"], value))
    for key, option in options.items():
        if key not in defaults and "default" in option:
            problems.append("%s: spec option '%s' has a default but defaults/main.yml does not set it"
                            % (name, key))
        if not option.get("description"):
            problems.append("%s: spec option '%s' has no description" % (name, key))
    return problems


def main(argv):
    roles_dir = argv[1] if len(argv) > 1 else "roles"
    problems = []
    roles = sorted(entry for entry in os.listdir(roles_dir)
                   if os.path.isdir(os.path.join(roles_dir, entry)))
    for role in roles:
        problems.extend(check_role(os.path.join(roles_dir, role)))
    for problem in problems:
        print(problem, file=sys.stderr)
    print("argument specs: %d roles checked, %d problems" % (len(roles), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
