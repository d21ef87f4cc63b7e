#!/usr/bin/env bash
# Run `molecule test` for several scenarios, a few at a time, and print
# each scenario's output when it ends (in full when it failed, its last
# lines when it passed). Scenarios use their own containers and podman
# networks, so they do not disturb each other.
#
# Usage: tools/run-molecule.sh [-j JOBS] SCENARIO...
# The last line counts the scenarios: "molecule: N passed, N failed".
# Exit status: 0 when every scenario passed, 1 otherwise.
set -euo pipefail

jobs=2
if [[ ${1:-} == -j ]]; then
    jobs=$2
    shift 2
fi
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [-j JOBS] SCENARIO..." >&2
    exit 64
fi

logdir=$(mktemp -d /tmp/tradeops-molecule.XXXXXX)
trap 'rm -rf "$logdir"' EXIT

run_one() {
    local scenario=$1 started status=0
    started=$(date +%s)
    molecule test -s "$scenario" >"$logdir/$scenario.log" 2>&1 || status=$?
    echo "$status $(($(date +%s) - started))" >"$logdir/$scenario.result"
}

report() {
    local scenario=$1 status seconds
    read -r status seconds <"$logdir/$scenario.result"
    if [[ $status -eq 0 ]]; then
        echo "=== molecule scenario $scenario passed in ${seconds}s; last lines of its output:"
        tail -n 25 "$logdir/$scenario.log"
    else
        echo "=== molecule scenario $scenario FAILED (exit $status) after ${seconds}s; its output:"
        cat "$logdir/$scenario.log"
    fi
}

declare -a pending=("$@") running=()
passed=0
failed=0
while [[ ${#pending[@]} -gt 0 || ${#running[@]} -gt 0 ]]; do
    while [[ ${#pending[@]} -gt 0 && ${#running[@]} -lt $jobs ]]; do
        scenario=${pending[0]}
        pending=("${pending[@]:1}")
        echo "=== molecule scenario $scenario started"
        run_one "$scenario" &
        running+=("$scenario")
    done
    sleep 5
    still=()
    for scenario in "${running[@]}"; do
        if [[ -e $logdir/$scenario.result ]]; then
            report "$scenario"
            read -r status _ <"$logdir/$scenario.result"
            if [[ $status -eq 0 ]]; then
                passed=$((passed + 1))
            else
                failed=$((failed + 1))
            fi
        else
            still+=("$scenario")
        fi
    done
    running=("${still[@]+"${still[@]}"}")
done
wait
echo "molecule: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
