#!/usr/bin/env bash
# The README's two commands:  ./run.sh demo   (install + main job)   ./run.sh test   (install + tests)
#
# Installs into ./.venv (override with LMMR1_VENV=path, or LMMR1_VENV=none to use the current
# Python).  An already-installed torch is respected; otherwise torch==2.13.0 is pinned (on our
# machines pip takes the local CPU wheel; elsewhere set LMMR1_TORCH, e.g. "torch==2.13.0+cu128").
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-}"; shift || true
case "$what" in demo|test|install) ;; *) echo "usage: ./run.sh demo|test|install [args...]" >&2; exit 64;; esac

venv="${LMMR1_VENV:-.venv}"
if [ "$venv" = none ]; then py=python3; else
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  py="$venv/bin/python"
fi
pipq() { "$py" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

stamp="$venv/.lmmr1-installed"; [ "$venv" = none ] && stamp=/dev/null
if [ "$venv" = none ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "[run.sh] installing ${LMMR1_TORCH:-torch==2.13.0}" >&2
    pipq "${LMMR1_TORCH:-torch==2.13.0}"
  fi
  echo "[run.sh] installing lmmr1 and its dependencies" >&2
  pipq -e ".[dev]" -c constraints.txt
  "$py" -c "import lmmr1, torch" || { echo "[run.sh] install failed" >&2; exit 1; }
  [ "$venv" = none ] || touch "$stamp"
fi
export TOKENIZERS_PARALLELISM=false

case "$what" in
  install) exit 0 ;;
  test) exec "$py" -m pytest tests "$@" ;;
  demo) exec "$py" -m lmmr1.demo "$@" ;;
esac
