# Shared helpers for the bench scripts. Sourced, not run.
# shellcheck shell=bash

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
QUIVER="${QUIVER:-$REPO_DIR/target/release/quiver}"
FIXTURE_DIR="${FIXTURE_DIR:-$REPO_DIR/tests/fixtures/peft/plain_r8}"

# Processes and paths to clean up on exit (see bench_cleanup).
BENCH_PIDS=()
BENCH_CLEANUP_CMDS=()

die() {
    echo "error: $*" >&2
    exit 1
}

need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd is required (see bench/README.md)"
    done
}

check_quiver() {
    [[ -x "$QUIVER" ]] || die "no quiver binary at $QUIVER: build it with 'cargo build --release -p quiver-api' (or set QUIVER=)"
    [[ -f "$FIXTURE_DIR/adapter_config.json" && -f "$FIXTURE_DIR/adapter_model.safetensors" ]] ||
        die "PEFT fixture files missing in $FIXTURE_DIR"
}

# A TCP port nobody listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts a command in the background in its own session, so that its children stop with it.
# Its pid (the command itself: setsid execs it) goes into the variable named by $1; stdout and
# stderr go to the file $2.
#   start_bg VAR LOGFILE cmd args...
start_bg() {
    local __var="$1" log="$2"
    shift 2
    setsid "$@" >"$log" 2>&1 </dev/null &
    local __pid=$!
    BENCH_PIDS+=("$__pid")
    printf -v "$__var" '%s' "$__pid"
}

# Stops one process group started by start_bg: TERM, then KILL after 10 s.
stop_bg() {
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local pid cmd
    for pid in "${BENCH_PIDS[@]}"; do
        stop_bg "$pid"
    done
    for cmd in "${BENCH_CLEANUP_CMDS[@]}"; do
        eval "$cmd" || true
    done
}

# Waits until URL answers 2xx (30 s at most by default).
wait_http() {
    local url="$1" tries="${2:-300}" pid="${3:-}" i
    for i in $(seq 1 "$tries"); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# start_quiver VAR PORT DATA_DIR LOG [extra serve flags...]
# Starts `quiver serve` and waits for /healthz. The pid (quiver itself) goes into VAR.
start_quiver() {
    local __var="$1" port="$2" data="$3" log="$4"
    shift 4
    local __qpid
    start_bg __qpid "$log" "$QUIVER" serve --bind "127.0.0.1:$port" --data-dir "$data" "$@"
    if ! wait_http "http://127.0.0.1:$port/healthz" 300 "$__qpid"; then
        echo "quiver did not become healthy; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    printf -v "$__var" '%s' "$__qpid"
}

# make_token DATA_DIR USER SCOPE [storage flags...] → prints the token.
make_token() {
    local data="$1" user="$2" scope="$3"
    shift 3
    "$QUIVER" token create --user "$user" --scope "$scope" --data-dir "$data" "$@" 2>/dev/null | tail -n 1
}

# How many lines of a quiver log are warnings, errors or panics (the log may carry ANSI colours).
log_problems() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -cE '^\S+ +(WARN|ERROR) |panicked' || true
}

# Decimal GB/s from bytes and seconds.
gbps() {
    python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1e9:.3f}')" "$1" "$2"
}

ratio() {
    python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b else 'n/a')" "$1" "$2"
}

now_s() {
    date +%s.%N
}

machine_line() {
    local model
    model="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)"
    echo "machine: $(nproc) CPUs (${model:-unknown CPU}), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr); date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
}

# Other CPU-heavy work on the machine (another build, another test run) skews every figure here.
# cpuwatch.py samples, once a second, the CPU used by processes outside this bench (ours descend
# from this script or carry QUIVER_BENCH_RUN in their environment). wait_quiet / wait_idle wait
# for quiet (WAIT_IDLE_S); load_watch_report / load_watch_between summarise the samples.
export QUIVER_BENCH_RUN="$$-$RANDOM"

start_load_watch() { # file
    LOAD_WATCH_FILE="$1"
    python3 "$BENCH_DIR/cpuwatch.py" "$QUIVER_BENCH_RUN" "$$" >"$LOAD_WATCH_FILE" &
    BENCH_PIDS+=("$!")
    sleep 1.2
}

# Waits (up to WAIT_IDLE_S seconds) for QUIET_S seconds (default 5) in a row in which other
# processes used < 20 % of a core. Returns at once when WAIT_IDLE_S is 0 (the default).
wait_quiet() {
    local limit="${WAIT_IDLE_S:-0}" need="${QUIET_S:-5}" waited=0 quiet
    ((limit > 0)) || return 0
    while ((waited < limit)); do
        quiet=$(tail -n "$need" "$LOAD_WATCH_FILE" | awk '$1 < 20 {n++} END {print n + 0}')
        ((quiet >= need)) && return 0
        ((waited == 0)) && echo "  waiting for other CPU-heavy processes to finish (up to ${limit}s)…" >&2
        sleep 5
        waited=$((waited + 5))
    done
    echo "  warning: the machine is still busy after ${limit}s; going on" >&2
}

# wait_quiet, then start counting the bench's samples (load_watch_report).
wait_idle() {
    wait_quiet
    LOAD_WATCH_START=$(load_watch_mark)
}

# Line number of the latest sample (to summarise a stretch later with load_watch_between).
load_watch_mark() {
    wc -l <"$LOAD_WATCH_FILE"
}

load_watch_between() { # from_line to_line
    python3 "$BENCH_DIR/cpuwatch.py" --summary "$LOAD_WATCH_FILE" "$(($1 + 1))" "$2"
}

# Summary of the samples since wait_idle returned: the bench proper.
load_watch_report() {
    echo "concurrent load during the bench ($(( $(load_watch_mark) - LOAD_WATCH_START )) s): $(load_watch_between "$LOAD_WATCH_START" "$(load_watch_mark)")"
}
