#!/usr/bin/env bash
# Usage: bash scripts/with-env.sh COMMAND [ARGS...]
# Creates the project's virtual environment in .venv on first use (or when pyproject.toml
# changed), installs tops with its pinned dependencies, then runs COMMAND inside it from
# the repository root. Needs only Python 3.11 on the machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.tops-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python="$(command -v python3.11 || command -v python3)"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
  echo "$want" >"$stamp"
fi
cd "$root"
export PATH="$venv/bin:$PATH"
exec "$@"
