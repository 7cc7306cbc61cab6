#!/usr/bin/env bash
# Usage: bash scripts/run-tests.sh
# The test suite on each CI stack (README, "CI stacks"), every stack in its own pinned
# environment (scripts/with-env.sh, envs/NAME.txt). A failing stack does not stop the
# next; the exit status is non-zero when any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
failed=()
summary=()

stack() { # stack NAME COMMAND [ARGS...]
  local name="$1" start=$SECONDS status=passed
  shift
  echo "=== stack $name: $*"
  bash scripts/with-env.sh --env "$name" "$@" || status=FAILED
  [ "$status" = passed ] || failed+=("$name")
  summary+=("$(printf '%-13s %-6s %4d s  %s' "$name" "$status" $((SECONDS - start)) "$*")")
}

# tests/precision/test_report_page.py renders the report page in headless Chromium, taken
# from the system packages (Debian/Ubuntu: apt-get, as root or through sudo) when missing;
# TOPS_REQUIRE_BROWSER=1 makes that test fail, not skip, if Chromium is still not there.
if ! command -v chromium >/dev/null 2>&1; then
  apt=(apt-get)
  [ "$(id -u)" = 0 ] || apt=(sudo -n apt-get)
  echo "=== installing Chromium: ${apt[*]} install chromium"
  "${apt[@]}" install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
    { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends chromium; } ||
    echo "run-tests.sh: could not install Chromium; the report page test will fail" >&2
fi
export TOPS_REQUIRE_BROWSER=1

# The whole suite: Python 3.11, jax 0.10.2 with libtpu, torch 2.13 (CPU), Triton 3.9.
stack main python -m pytest -n 2 --dist loadgroup
# The CUDA image's TPU side: Python 3.12, jax 0.11.2, no torch, tops installed from its
# wheel (-P keeps the checkout off sys.path, so the installed package is what runs): the
# reference and harness tests, and every TPU case against the ledger (rules 1 and 3).
stack jax011-py312 python -P -m pytest -n 2 --dist loadgroup -p no:cacheprovider \
  tests/cpu tests/precision
stack jax011-py312 python -P -m pytest -n 2 --dist loadgroup -p no:cacheprovider tests/ops \
  -k "tpu and not gpu and (rules_1_and_3 or half or double_float)"
# The CUDA image's Triton 3.6 (NumPy 2.2, torch 2.13 CPU): every GPU test but rule 2
# (which reruns the TPU side, done by main), the sm_90 compile check included.
stack triton36 python -m pytest -n 2 --dist loadgroup -p no:cacheprovider tests/ops \
  -k "gpu and not rule2"

printf '%s\n' "=== stacks" "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stacks: ${failed[*]}"
  exit 1
fi
