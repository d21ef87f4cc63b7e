# shellcheck shell=bash
#
# Shared library for the tradeops job scripts. A job sources this file and
# calls job_init first:
#
#   . /usr/local/lib/tradeops/jobs.sh
#   job_init backup          # strict mode, log file, lock, exit trap
#   log_info "dumping trading_db"
#   run_logged pg_dump ...   # command's stderr goes to the job log
#   job_fail "$EX_UNAVAILABLE" "database 'trading_db' is not reachable"
#
# Every job logs to $TRADEOPS_LOG_DIR/<job>.log, one timestamped line per
# event, and also to stderr when stderr is a terminal. The first line of a
# run records the start and the last records "completed" or
# "failed (code N)". A job never overlaps itself: job_init takes an flock
# on $TRADEOPS_LOCK_DIR/tradeops-<job>.lock, which the kernel releases when
# the process ends, however it ends.
#
# On exit, the job's last run (start, end, exit code, duration) is written
# atomically to $TRADEOPS_STATE_DIR/<job>.status for monitoring.
#
# Exit codes, one per class of failure (the numbers follow sysexits.h, so
# they mean the same to cron, monitoring and people):
#
#   0   EX_OK           the job did all its work
#   1   EX_FAILURE      the job's own work failed (a dump, a check, a delete)
#   64  EX_USAGE        invalid command-line arguments
#   69  EX_UNAVAILABLE  a service the job needs (PostgreSQL) is unreachable
#   73  EX_CANTCREAT    an output file could not be written (disk full, mode)
#   75  EX_TEMPFAIL     another run of the same job holds the lock
#   78  EX_CONFIG       the configuration is missing or invalid
#
# Settings, normally from /etc/default/tradeops:
#   TRADEOPS_LOG_DIR    job logs (default /var/log/tradeops)
#   TRADEOPS_LOCK_DIR   lock files (default /run/lock)
#   TRADEOPS_STATE_DIR  last-run status files (default /var/lib/tradeops/status)
#   TRADEOPS_LOCK_WAIT  seconds to wait for the lock; 0 exits at once with 75
#   TRADEOPS_DRY_RUN    1 makes jobs that support it change nothing

# shellcheck disable=SC2034 # the scripts that source this file use them
readonly EX_OK=0 EX_FAILURE=1 EX_USAGE=64 EX_UNAVAILABLE=69 EX_CANTCREAT=73 EX_TEMPFAIL=75 EX_CONFIG=78

if [[ -r /etc/default/tradeops ]]; then
    # shellcheck source=/dev/null
    . /etc/default/tradeops
fi

: "${TRADEOPS_LOG_DIR:=/var/log/tradeops}"
: "${TRADEOPS_LOCK_DIR:=/run/lock}"
: "${TRADEOPS_STATE_DIR:=/var/lib/tradeops/status}"
: "${TRADEOPS_LOCK_WAIT:=0}"
: "${TRADEOPS_DRY_RUN:=0}"

JOB_NAME=
JOB_LOG=
JOB_STARTED_AT=
JOB_STARTED_EPOCH=

# Write one log line. Level is INFO, WARN or ERROR.
_job_log() {
    local level=$1
    shift
    local prefix=
    [[ $TRADEOPS_DRY_RUN == 1 ]] && prefix='[DRY-RUN] '
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) ${JOB_NAME:-job}[$$] $level: $prefix$*"
    if [[ -n $JOB_LOG ]]; then
        printf '%s\n' "$line" >>"$JOB_LOG" || true
    fi
    if [[ -t 2 || -z $JOB_LOG ]]; then
        printf '%s\n' "$line" >&2
    fi
}

log_info() { _job_log INFO "$@"; }
log_warn() { _job_log WARN "$@"; }
log_error() { _job_log ERROR "$@"; }

# Log an error and exit with the given code.
job_fail() {
    local code=$1
    shift
    log_error "$*"
    exit "$code"
}

# True when the job runs with TRADEOPS_DRY_RUN=1.
job_dry_run() { [[ $TRADEOPS_DRY_RUN == 1 ]]; }

# Run a command and copy each line it writes to stderr into the job log.
# Returns the command's own exit status; stdout passes through untouched.
run_logged() {
    local status=0
    # fd 3 carries the command's stdout around the pipe, which takes only
    # its stderr. With pipefail the pipeline's status is the command's,
    # because the reader loop itself always succeeds.
    { "$@" 2>&1 1>&3 3>&- | _job_log_lines "$1"; } 3>&1 || status=$?
    return "$status"
}

_job_log_lines() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        _job_log INFO "$1: $line"
    done
    return 0
}

# Write the last-run status file and the node_exporter textfile metrics;
# called from the exit trap. Both are written to a temporary file in the
# target directory and renamed, so readers never see half a file.
_job_write_status() {
    local code=$1
    local ended_epoch
    ended_epoch=$(date +%s)
    if [[ -d $TRADEOPS_STATE_DIR && -w $TRADEOPS_STATE_DIR ]]; then
        local tmp
        if tmp=$(mktemp "$TRADEOPS_STATE_DIR/.$JOB_NAME.XXXXXX"); then
            if printf 'job=%s\nstarted_at=%s\nended_at=%s\nexit_code=%s\nduration_seconds=%s\n' \
                "$JOB_NAME" "$JOB_STARTED_AT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$code" \
                "$((ended_epoch - JOB_STARTED_EPOCH))" >"$tmp" && chmod 0644 "$tmp"; then
                mv -f "$tmp" "$TRADEOPS_STATE_DIR/$JOB_NAME.status" || rm -f "$tmp"
            else
                rm -f "$tmp"
            fi
        fi
    fi

    # Metrics for node_exporter's textfile collector, one file per job.
    # A failed run keeps the last success time of the previous file.
    local dir=${TRADEOPS_TEXTFILE_DIR:-/var/lib/tradeops/textfile}
    [[ -d $dir && -w $dir ]] || return 0
    local prom=$dir/tradeops_job_$JOB_NAME.prom
    local last_success=
    if [[ $code -eq 0 ]]; then
        last_success=$ended_epoch
    elif [[ -r $prom ]]; then
        last_success=$(awk '$1 ~ /^tradeops_job_last_success_timestamp_seconds[{]/ { print $2 }' "$prom" 2>/dev/null) ||
            last_success=
    fi
    local label="job=\"$JOB_NAME\""
    local metrics
    metrics=$(mktemp "$dir/.tradeops_job_$JOB_NAME.XXXXXX") || return 0
    if ! {
        printf '# HELP tradeops_job_last_run_timestamp_seconds Unix time the last run of the tradeops job ended.\n'
        printf '# TYPE tradeops_job_last_run_timestamp_seconds gauge\n'
        printf 'tradeops_job_last_run_timestamp_seconds{%s} %s\n' "$label" "$ended_epoch"
        if [[ -n $last_success ]]; then
            printf '# HELP tradeops_job_last_success_timestamp_seconds Unix time the last successful run ended.\n'
            printf '# TYPE tradeops_job_last_success_timestamp_seconds gauge\n'
            printf 'tradeops_job_last_success_timestamp_seconds{%s} %s\n' "$label" "$last_success"
        fi
        printf '# HELP tradeops_job_exit_code Exit code of the last run (0 is success).\n'
        printf '# TYPE tradeops_job_exit_code gauge\n'
        printf 'tradeops_job_exit_code{%s} %s\n' "$label" "$code"
        printf '# HELP tradeops_job_duration_seconds Duration of the last run.\n'
        printf '# TYPE tradeops_job_duration_seconds gauge\n'
        printf 'tradeops_job_duration_seconds{%s} %s\n' "$label" "$((ended_epoch - JOB_STARTED_EPOCH))"
    } >"$metrics" || ! chmod 0644 "$metrics" || ! mv -f "$metrics" "$prom"; then
        rm -f "$metrics"
    fi
}

_job_on_exit() {
    local code=$?
    trap - EXIT
    if [[ $code -eq 0 ]]; then
        log_info "$JOB_NAME completed"
    else
        log_error "$JOB_NAME failed (code $code)"
    fi
    # A run that never got the lock is not a run of the job: keep the
    # status of the run that holds it.
    if [[ $code -ne $EX_TEMPFAIL ]]; then
        _job_write_status "$code"
    fi
    exit "$code"
}

# Start a job: strict mode, umask, log file, lock and exit trap.
# Usage: job_init NAME [ARGS...]; ARGS are logged on the start line and
# must not contain secrets.
job_init() {
    JOB_NAME=$1
    shift
    set -o errexit -o nounset -o pipefail
    umask 027
    if [[ ! $JOB_NAME =~ ^[a-z][a-z0-9_-]*$ ]]; then
        printf 'job_init: invalid job name %q\n' "$JOB_NAME" >&2
        exit "$EX_USAGE"
    fi
    if [[ -d $TRADEOPS_LOG_DIR && -w $TRADEOPS_LOG_DIR ]]; then
        JOB_LOG=$TRADEOPS_LOG_DIR/$JOB_NAME.log
    else
        JOB_LOG=
        _job_log WARN "log directory $TRADEOPS_LOG_DIR is not writable; logging to stderr only"
    fi
    JOB_STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    JOB_STARTED_EPOCH=$(date +%s)
    trap _job_on_exit EXIT

    local lockfile=$TRADEOPS_LOCK_DIR/tradeops-$JOB_NAME.lock
    exec {JOB_LOCK_FD}>>"$lockfile" ||
        job_fail "$EX_CANTCREAT" "cannot open lock file $lockfile"
    if ! flock -w "$TRADEOPS_LOCK_WAIT" "$JOB_LOCK_FD"; then
        job_fail "$EX_TEMPFAIL" "another $JOB_NAME run holds $lockfile; not starting"
    fi
    log_info "$JOB_NAME started${*:+ with $*}"
}
