#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running platform: set everything up, then
# `virtpool up` in the foreground (it builds the default guest image on its first start).
# Extra arguments go to `virtpool up`, e.g. scripts/run.sh --listen 127.0.0.1:9000
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/virtpool up "$@"
