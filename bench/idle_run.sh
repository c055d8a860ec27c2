#!/usr/bin/env bash
# Timings on idle cores (issue 22): pause this machine's sns-engine jobs (SIGSTOP), check that the
# cores are idle, then run the default benchmark suite (its wall time is printed) and the batch-256 engine cases,
# and resume the jobs (SIGCONT, also on error). Usage: bash bench/idle_run.sh [pytest options]
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
pids=$(pgrep -f "sns-engine (train|study|rollout|calibrate)" | tr '\n' ' ')
echo "stopping: $pids"
[ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids; echo resumed' EXIT
sleep 3
busy() { read -r _ a b c d _ < /proc/stat; t1=$((a+b+c)); i1=$d; sleep 5; read -r _ a b c d _ < /proc/stat; echo $(( 100*((a+b+c)-t1) / ((a+b+c+d)-t1-i1+1) )); }
echo "cpu busy before the run: $(busy) % (of 2 cores); processes running:"; ps -eo pid,stat,pcpu,comm --sort=-pcpu | head -8
start=$(date +%s)
.venv/bin/pytest bench --benchmark-only -p no:cacheprovider "$@" 2>&1 | tee "${TMPDIR:-/tmp}/bench-default.log" | tail -150
echo "DEFAULT RUN: $(( $(date +%s) - start )) s wall"
echo "cpu busy after: $(busy) %"
start=$(date +%s)
.venv/bin/pytest bench --benchmark-only --bench-long -p no:cacheprovider -k "test_left_down_cpu and 256" 2>&1 | tee "${TMPDIR:-/tmp}/bench-long.log" | tail -60
echo "LONG RUN: $(( $(date +%s) - start )) s wall"
