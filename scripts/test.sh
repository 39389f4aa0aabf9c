#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a full test run: set everything up, build the
# default guest image (cached in .cache/images), run every test. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
export VIRTPOOL_TEST_IMAGES=${VIRTPOOL_TEST_IMAGES:-$PWD/.cache/images}
.venv/bin/python -c '
import os, pathlib
from virtpool.node.images.build import build_default_image
manifest, built = build_default_image(pathlib.Path(os.environ["VIRTPOOL_TEST_IMAGES"]))
print("default image:", "built" if built else "cached", manifest.kernel.path, manifest.initrd.path)
'
exec .venv/bin/python -m pytest -q "$@"
