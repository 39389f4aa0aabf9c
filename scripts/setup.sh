#!/usr/bin/env bash
# Sets up everything virtpool needs on this machine: Debian packages (through
# install-system-packages.sh), a virtualenv in .venv with virtpool installed in it.
# Usage: scripts/setup.sh [--test]   (--test adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-system-packages.sh "${1:-}"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "virtpool installed: $(.venv/bin/virtpool --help >/dev/null && echo .venv/bin/virtpool)"
