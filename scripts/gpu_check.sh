#!/usr/bin/env bash
# gpu_check.sh: the GPU side of tops, natively, in one command, on a CUDA machine that has
# torch (CUDA build), triton, jax, numpy, pytest and pytest-xdist already installed and no
# network. No venv, nothing downloaded: tops is imported from this checkout
# (PYTHONPATH = the repository root), and nothing in the checkout is rewritten.
#
#   bash scripts/gpu_check.sh OUT_DIR          # from any directory; 9 minutes at most
#
# Steps, in order, each under `timeout` (cap in seconds), its full stdout+stderr in
# OUT_DIR/<step>.log; a failing step prints "FAILED: step ... (exit N)" and the tail of its
# log, and the next step still runs:
#
#   preflight            20  date (UTC), nvidia-smi, python/torch/triton/jax/numpy/pytest
#                            versions, torch.cuda.is_available() and the device, tops modes
#   peer wheels          20  optional: installs the wheels in $TOPS_PEER_WHEELS (see below)
#   native GPU tests    240  pytest -n 12 tests/ops -k gpu: every Triton kernel test, exact
#                            semantics, sampling bit-identity with the reference, precision
#                            rules 1 and 3 per case on the GPU and rule 2 against the TPU
#                            kernel (Pallas interpret mode on the CPU), the sm_90 compile
#                            check; JUnit XML in OUT_DIR/tests.xml
#   bench softmax        20  scripts/bench_temperature_softmax.py  -> OUT_DIR/bench_softmax.txt
#   bench softmax-sweep  15  ... --sweep                           -> bench_softmax_sweep.txt
#   bench topk           75  scripts/bench_topk.py                 -> bench_topk.txt
#                            (its Pallas termination table, in interpret mode on the CPU at
#                            the GPU shapes, takes about 50 s of it)
#   bench simple_gla     45  scripts/bench_simple_gla.py           -> bench_simple_gla.txt
#   bench sampling       35  scripts/bench_sampling.py             -> bench_sampling.txt
#   precision report     60  python -m tops.precision report --backend gpu into
#                            OUT_DIR/report/precision.{md,json}, recording the native
#                            (mode `gpu`) ε with --update-baseline --baseline
#                            OUT_DIR/baseline.json, a copy of tops/precision/baseline.json
#                            made first (rule 3 is not asserted in a run that records)
#
# The caps add up to 530 s. Time a step leaves unused is carried over to the next ones
# (printed beside the cap; a step's limit is its cap plus that), so the whole run still
# ends within the sum. At the end a table of step / status / seconds / cap / limit is
# printed and written to OUT_DIR/summary.txt.
# Exit status: 0 when every step passed, 1 when any step failed or timed out, 2 when torch
# sees no CUDA device (the GPU steps are not run), 64 on bad usage.
#
# JAX runs on the CPU (JAX_PLATFORMS=cpu unless already set): the TPU kernels run in
# Pallas interpret mode as on the CPU CI (the committed `tpu-interpret` ledger entries
# hold), and a CUDA build of jaxlib never takes GPU memory from torch.
#
# Environment:
#   TOPS_PEER_WHEELS=DIR   a folder of wheels of the benchmarks' peers (fla-core for `fla`,
#                          flashinfer, and those of their dependencies the machine lacks),
#                          installed with `pip install --no-index --no-deps --target` into a
#                          temporary folder put on PYTHONPATH and removed at exit. Default:
#                          <repo>/wheels. No .whl there: the step is skipped with a note and
#                          the benchmarks print "-" for peers that are not installed.
#   TOPS_GPU_CHECK_ALLOW_CPU=1    go on without a CUDA device (everything then runs in the
#                          interpreters, far too slow for the caps: for smoke tests only).
#   TOPS_GPU_CHECK_PYTEST_ARGS    replaces the test selection `tests/ops -k gpu` (parsed
#                          with shell quoting, e.g. 'tests/ops/topk -k "gpu and small"').
#   TOPS_GPU_CHECK_REPORT_ARGS    extra arguments of the report (e.g. '--op topk').
#   TOPS_GPU_CHECK_WORKERS        pytest-xdist workers (default: 12, at most the CPU count).
#   TOPS_GPU_CHECK_CAP_SCALE      multiplies every cap (a positive integer; default 1).
#   TOPS_GPU_CHECK_PYTHON         the interpreter (default python3).

set -u -o pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: bash scripts/gpu_check.sh OUT_DIR" >&2
    exit 64
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 64
mkdir -p "$1" || exit 64
OUT=$(cd "$1" && pwd) || exit 64
cd "$ROOT" || exit 64

PY=${TOPS_GPU_CHECK_PYTHON:-python3}
CPUS=$(nproc 2>/dev/null || echo 1)
WORKERS=${TOPS_GPU_CHECK_WORKERS:-$((CPUS < 12 ? CPUS : 12))}
SCALE=${TOPS_GPU_CHECK_CAP_SCALE:-1}
case "$SCALE" in
    '' | *[!0-9]* | 0)
        echo "TOPS_GPU_CHECK_CAP_SCALE must be a positive integer, got '$SCALE'" >&2
        exit 64
        ;;
esac
WHEELS=${TOPS_PEER_WHEELS:-$ROOT/wheels}
KILL_AFTER=2 # seconds between the TERM at a cap and the KILL

PEERS=$(mktemp -d "${TMPDIR:-/tmp}/tops-gpu-check-peers.XXXXXX") || exit 1
trap 'rm -rf "$PEERS"' EXIT

export PYTHONPATH="$ROOT:$PEERS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 # a table cut short by its cap keeps the rows it printed
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export XLA_PYTHON_CLIENT_PREALLOCATE=false

NAMES=()
STATUS=()
SECS=()
CAPS=()
LIMITS=()
FAILED=0
CAPPED_START=-1 # SECONDS when the first capped step started
CAPPED_SUM=0    # the caps of the steps run so far

# run_step NAME CAP LOG TABLE COMMAND...: runs COMMAND from the repository root under
# `timeout` (CAP seconds times the scale, plus what earlier steps left unused), its
# stdout+stderr into OUT/LOG; with TABLE a file name, its stdout also into OUT/TABLE; with
# TABLE "-", its output also on the terminal.
run_step() {
    local name=$1 cap=$(($2 * SCALE)) log=$OUT/$3 table=$4
    shift 4
    if [ "$CAPPED_START" -lt 0 ]; then
        CAPPED_START=$SECONDS
    fi
    local carried=$((CAPPED_SUM - (SECONDS - CAPPED_START)))
    if [ "$carried" -lt 0 ]; then
        carried=0
    fi
    CAPPED_SUM=$((CAPPED_SUM + cap))
    local limit=$((cap + carried)) start=$SECONDS rc
    echo
    if [ "$carried" -gt 0 ]; then
        echo "=== step: $name (cap ${cap}s + ${carried}s carried over) -> $log"
    else
        echo "=== step: $name (cap ${cap}s) -> $log"
    fi
    : >"$log"
    if [ "$table" = "-" ]; then
        timeout -k "$KILL_AFTER" "$limit" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    elif [ -n "$table" ]; then
        timeout -k "$KILL_AFTER" "$limit" "$@" 2>>"$log" | tee "$OUT/$table" >>"$log"
        rc=${PIPESTATUS[0]}
    else
        timeout -k "$KILL_AFTER" "$limit" "$@" >>"$log" 2>&1
        rc=$?
    fi
    local took=$((SECONDS - start)) status
    if [ "$rc" -eq 0 ]; then
        status=ok
        echo "ok: step $name (${took}s)"
    else
        FAILED=1
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            status="TIMEOUT (exit $rc)"
            echo "FAILED: step $name (exit $rc): timed out after ${limit}s"
        else
            status="FAILED (exit $rc)"
            echo "FAILED: step $name (exit $rc) after ${took}s"
        fi
        echo "----- last 40 lines of $log -----"
        tail -n 40 "$log"
        echo "----- end of $log -----"
    fi
    record "$name" "$status" "$took" "$cap" "$limit"
}

record() { # record NAME STATUS SECONDS CAP LIMIT
    NAMES+=("$1")
    STATUS+=("$2")
    SECS+=("$3")
    CAPS+=("$4")
    LIMITS+=("$5")
}

summary() {
    {
        echo "tops gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), ${SECONDS}s in all, $OUT"
        local i
        printf '%-20s  %-20s  %7s  %5s  %5s\n' step status seconds cap limit
        for i in "${!NAMES[@]}"; do
            printf '%-20s  %-20s  %7s  %5s  %5s\n' \
                "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${CAPS[$i]}" "${LIMITS[$i]}"
        done
        if [ "$FAILED" -eq 0 ]; then
            echo "all steps passed"
        elif [ "$FAILED" -eq 2 ]; then
            echo "NO CUDA DEVICE: the GPU steps did not run"
        else
            echo "SOME STEPS FAILED: see the logs above"
        fi
    } >"$OUT/summary.txt"
    echo
    cat "$OUT/summary.txt"
}

# shellcheck disable=SC2317  # run through `bash -c` (exported), under timeout
preflight() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "checkout: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
    echo "cpus: $(nproc 2>/dev/null || echo '?'), pytest workers: $WORKERS"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    echo "JAX_PLATFORMS=$JAX_PLATFORMS PYTHONPATH=$PYTHONPATH"
    "$PY" - <<'EOF'
import importlib.metadata
import platform
import sys

print(f"python {platform.python_version()} ({sys.executable})")
import jax
import numpy
import torch
import triton

for module in (torch, triton, jax, numpy):
    print(f"{module.__name__} {module.__version__}")
for dist in ("pytest", "pytest-xdist"):
    try:
        print(f"{dist} {importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{dist} NOT INSTALLED")
available = torch.cuda.is_available()
print(f"torch.cuda.is_available: {available}")
if available:
    print(
        f"device: {torch.cuda.get_device_name()}, capability "
        f"{torch.cuda.get_device_capability()}, CUDA {torch.version.cuda}"
    )
import tops
from tops import backends

print(f"tops from {tops.__file__}")
print(f"tops modes: {backends.modes()}")
EOF
}

# shellcheck disable=SC2317  # run through `bash -c` (exported), under timeout
install_peers() {
    "$PY" -m pip install --no-index --no-deps --no-compile --target "$PEERS" "$WHEELS"/*.whl || return
    echo "installed into $PEERS:" "$(find "$PEERS" -mindepth 1 -maxdepth 1 -printf '%f ')"
    "$PY" - <<'EOF'
import importlib.util

for name in ("fla", "flashinfer"):
    found = importlib.util.find_spec(name)
    print(f"{name}: {found.submodule_search_locations[0] if found else 'not importable'}")
EOF
}

# The test selection and the report's extra arguments (shell quoting honoured).
SELECTION=(tests/ops -k gpu)
if [ -n "${TOPS_GPU_CHECK_PYTEST_ARGS:-}" ]; then
    eval "SELECTION=($TOPS_GPU_CHECK_PYTEST_ARGS)"
fi
REPORT_EXTRA=()
if [ -n "${TOPS_GPU_CHECK_REPORT_ARGS:-}" ]; then
    eval "REPORT_EXTRA=($TOPS_GPU_CHECK_REPORT_ARGS)"
fi

echo "tops gpu_check: $ROOT -> $OUT"

# 1. preflight
export -f preflight
export ROOT PY WORKERS
run_step "preflight" 20 preflight.log - bash -c preflight
if grep -q '^torch.cuda.is_available: True$' "$OUT/preflight.log"; then
    :
elif [ "${TOPS_GPU_CHECK_ALLOW_CPU:-}" = "1" ]; then
    echo
    echo "WARNING: torch sees no CUDA device: going on in the interpreters because"
    echo "WARNING: TOPS_GPU_CHECK_ALLOW_CPU=1 (a smoke test: nothing here measures a GPU)."
else
    echo
    echo "################################################################################"
    echo "FAILED: torch sees no CUDA device (torch.cuda.is_available() is not True; see"
    echo "$OUT/preflight.log). The GPU steps would run in the Triton"
    echo "interpreter, far too slow to mean anything: they are not run."
    echo "(TOPS_GPU_CHECK_ALLOW_CPU=1 runs them anyway, for smoke tests.)"
    echo "################################################################################"
    for step in "peer wheels" "native GPU tests" "bench softmax" "bench softmax-sweep" \
        "bench topk" "bench simple_gla" "bench sampling" "precision report"; do
        record "$step" "not run (no CUDA)" 0 - -
    done
    FAILED=2
    summary
    exit 2
fi

# 2. peer wheels
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    export -f install_peers
    export WHEELS PEERS
    run_step "peer wheels" 20 peers.log - bash -c install_peers
else
    echo
    echo "note: no peer wheels in $WHEELS (TOPS_PEER_WHEELS=DIR names another folder):"
    echo "      only peers already installed run; the benchmarks print '-' for the others"
    record "peer wheels" "skipped (no wheels)" 0 - -
fi

# 3. native GPU tests
run_step "native GPU tests" 240 tests.log "" \
    "$PY" -m pytest -p no:cacheprovider -n "$WORKERS" --dist loadgroup \
    -v --junitxml="$OUT/tests.xml" --durations=25 "${SELECTION[@]}"

# 4. every benchmark at its GPU shapes, against its peers
run_step "bench softmax" 20 bench_softmax.log bench_softmax.txt \
    "$PY" scripts/bench_temperature_softmax.py
run_step "bench softmax-sweep" 15 bench_softmax_sweep.log bench_softmax_sweep.txt \
    "$PY" scripts/bench_temperature_softmax.py --sweep
run_step "bench topk" 75 bench_topk.log bench_topk.txt \
    "$PY" scripts/bench_topk.py
run_step "bench simple_gla" 45 bench_simple_gla.log bench_simple_gla.txt \
    "$PY" scripts/bench_simple_gla.py
run_step "bench sampling" 35 bench_sampling.log bench_sampling.txt \
    "$PY" scripts/bench_sampling.py

# 5. the precision report in gpu mode, recording the native ε into a copy of the ledger
# (the checkout's ledger is never rewritten)
if cp tops/precision/baseline.json "$OUT/baseline.json"; then
    run_step "precision report" 60 report.log "" \
        "$PY" -m tops.precision report --backend gpu --out "$OUT/report" \
        --update-baseline --baseline "$OUT/baseline.json" ${REPORT_EXTRA[@]+"${REPORT_EXTRA[@]}"}
else
    echo "FAILED: step precision report: cannot copy tops/precision/baseline.json to $OUT"
    FAILED=1
    record "precision report" "FAILED (no ledger)" 0 60 -
fi

summary
exit "$FAILED"
