#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a full test run: set everything up, build the
# default guest image (cached in .cache/images), run every test in two workers, a file per
# worker at a time (a module's server is started once). Arguments go to pytest (`-n 0`: serial).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
export VIRTPOOL_TEST_IMAGES=${VIRTPOOL_TEST_IMAGES:-$PWD/.cache/images}
# Both built-in images, built once here (or taken from the cache) and shared by every test.
.venv/bin/python -c '
import os, pathlib, time
from virtpool.node.images.build import build_default_image
from virtpool.node.images.debian import build_debian_image
root = pathlib.Path(os.environ["VIRTPOOL_TEST_IMAGES"])
manifest, built = build_default_image(root)
print("default image:", "built" if built else "cached", manifest.kernel.path, manifest.initrd.path)
began = time.monotonic()
manifest, built = build_debian_image(root)
print("debian-12 image:", "built" if built else "cached", manifest.disk.path,
      f"{manifest.disk.size / 2**20:.0f} MiB in {time.monotonic() - began:.0f} s")
'
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
