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
# An editable install leaves src/ uncompiled, and where PYTHONDONTWRITEBYTECODE is set (as on
# our CI machines) every command would compile the modules it imports anew: ~20 ms of a CLI
# command's 0.2 s, far more for the server's start. Python checks each .pyc against its source,
# so an edited module is never run stale.
.venv/bin/python -m compileall -q src >/dev/null
echo "virtpool installed: $(.venv/bin/virtpool --help >/dev/null && echo .venv/bin/virtpool)"
