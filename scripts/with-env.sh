#!/usr/bin/env bash
# Usage: bash scripts/with-env.sh [--env NAME] COMMAND [ARGS...]
# Runs COMMAND from the repository root inside the virtual environment of CI stack NAME
# (default: main), creating it on first use and again whenever pyproject.toml or the
# stack's lock file changed. A stack is its lock file envs/NAME.txt: exact versions of
# every package (a pip constraints file) and three header lines naming the Python
# version, the extras of tops to install and whether the install is editable.
# Needs only that Python on the machine (found on PATH or in pyenv) and the package index.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name=main
if [ "${1:-}" = "--env" ]; then
  name="$2"
  shift 2
fi
lock="$root/envs/$name.txt"
[ -f "$lock" ] || { echo "with-env.sh: no lock file $lock" >&2; exit 2; }
header() { sed -n "s/^# $1: *//p" "$lock" | head -n1; }
version="$(header python)"
extras="$(header extras)"
editable="$(header editable)"
venv="$root/.venv"
[ "$name" = main ] || venv="$root/.venv-$name"
stamp="$venv/.tops-installed"
want="$(cat "$root/pyproject.toml" "$lock" | sha256sum | cut -d' ' -f1)"

find_python() {
  local candidate
  for candidate in "python$version" "$(pyenv root 2>/dev/null)/versions/$version"*/bin/python"$version"; do
    if "$candidate" -c 'import sys' >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
  echo "with-env.sh: stack $name needs Python $version (not on PATH nor in pyenv)" >&2
  exit 2
}

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  "$(find_python)" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  install=(--quiet --constraint "$lock")
  [ "$editable" = yes ] && install+=(--editable)
  "$venv/bin/python" -m pip install "${install[@]}" "$root[$extras]"
  echo "$want" >"$stamp"
fi
cd "$root"
export PATH="$venv/bin:$PATH"
exec "$@"
