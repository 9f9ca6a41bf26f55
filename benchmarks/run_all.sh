#!/usr/bin/env bash
# One command for the benchmark suite: time to first token curves, memory, throughput (and,
# with --with-peers, the quality comparison against kvpress / llmlingua), then plots and the
# README results section. Records its own duration in <results>/run_all.json.
#
#   bash benchmarks/run_all.sh                 # full setting: benchmarks/results, benchmarks/plots, README.md
#   bash benchmarks/run_all.sh --medium        # contexts to 4K (not 8K), fewer queries (the full setting
#                                              # with --with-peers took 84 min on one core of a 2-core CPU)
#   bash benchmarks/run_all.sh --small         # CI setting (minutes), into a fresh temp folder, README untouched
#   options: --results DIR  --plots DIR  --readme FILE | --no-readme  --with-peers (PEERS_ARGS=... passed on)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

SMALL=0; RESULTS=""; PLOTS=""; README=""; NO_README=0; PEERS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --small) SMALL=1 ;;
    --medium) SMALL=2 ;;
    --results) RESULTS="$2"; shift ;;
    --plots) PLOTS="$2"; shift ;;
    --readme) README="$2"; shift ;;
    --no-readme) NO_README=1 ;;
    --with-peers) PEERS=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

SCALING_EXTRA=(); MEMORY_EXTRA=(); THROUGHPUT_EXTRA=()
if [ "$SMALL" = 1 ]; then
  SETTING=small; FLAG=(--small)
  RESULTS="${RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/beacon-rag-bench-small.XXXXXX")}"
  PLOTS="${PLOTS:-$RESULTS/plots}"
else
  SETTING=full; FLAG=()
  if [ "$SMALL" = 2 ]; then
    SETTING=medium
    SCALING_EXTRA=(--lengths 512 1024 2048 4096 --doc-counts 1 2 4 8)
    MEMORY_EXTRA=(--context-tokens 2048 --docs 8)
    THROUGHPUT_EXTRA=(--queries 24 --corpus-docs 24)
  fi
  RESULTS="${RESULTS:-$ROOT/benchmarks/results}"
  PLOTS="${PLOTS:-$ROOT/benchmarks/plots}"
  README="${README:-$ROOT/README.md}"
  MEMORY_EXTRA+=(--separate-processes)   # each configuration from the same fresh-process state
fi
[ "$NO_README" = 1 ] && README=""
mkdir -p "$RESULTS" "$PLOTS"

# One thread per process unless told otherwise: the machine is shared, and one thread makes
# side-by-side timings far less noisy than two threads fighting other jobs.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
export BEACON_RAG_BENCH_RESULTS="$RESULTS"

STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
START=$(date +%s)
step() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }

step "scaling ($SETTING)"
"$PY" -m beacon_rag.bench.scaling "${FLAG[@]}" "${SCALING_EXTRA[@]}" --output "$RESULTS/scaling.json" --json >/dev/null
step "memory ($SETTING)"
"$PY" -m beacon_rag.bench.memory_bench "${FLAG[@]}" "${MEMORY_EXTRA[@]}" --output "$RESULTS/memory.json" --json >/dev/null
step "throughput ($SETTING)"
"$PY" -m beacon_rag.bench.throughput "${FLAG[@]}" "${THROUGHPUT_EXTRA[@]}" --output "$RESULTS/throughput.json" --json >/dev/null
if [ "$PEERS" = 1 ]; then
  # Part 3 (quality vs kvpress / llmlingua, bench/peers.py) writes $RESULTS/peers.json; the report
  # includes its section. PEERS_ARGS replaces the arguments below (see beacon-rag bench peers --help).
  step "peers ($SETTING)"
  PEERS_DEFAULT=""
  [ "$SETTING" = small ] && PEERS_DEFAULT="--examples 1 --shared-contexts 1 --shared-docs 2 --ratios 4"
  # shellcheck disable=SC2086
  "$PY" -m beacon_rag.bench.peers --out "$RESULTS/peers.json" ${PEERS_ARGS:-$PEERS_DEFAULT} >/dev/null
fi

DURATION=$(( $(date +%s) - START ))
"$PY" - "$RESULTS/run_all.json" "$SETTING" "$STARTED_AT" "$DURATION" "$PEERS" <<'PYEOF'
import json, sys
from beacon_rag.bench.report import machine_info, save_result
from pathlib import Path
path, setting, started, duration, peers = sys.argv[1:]
save_result({"bench": "run_all", "setting": setting, "started_at": started, "duration_s": float(duration),
             "with_peers": peers == "1", "machine": machine_info()}, Path(path))
PYEOF

step "report"
REPORT_ARGS=(--results "$RESULTS" --plots "$PLOTS")
[ -n "$README" ] && REPORT_ARGS+=(--readme "$README")
"$PY" -m beacon_rag.bench.report "${REPORT_ARGS[@]}" --markdown "$RESULTS/results.md"
echo "beacon-rag benchmarks ($SETTING) done in ${DURATION} s: results in $RESULTS, plots in $PLOTS" >&2
