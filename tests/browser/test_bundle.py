"""The dashboard's committed build (src/virtpool/web/static) is what its sources build to.

The bundle is committed so that a machine running virtpool needs no Node.js; this test keeps it
honest: it installs the locked npm packages (`npm ci`) into a scratch copy of web/, builds, and
compares every file byte for byte. Without npm it fails, never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

WEB = REPO / "web"
STATIC = REPO / "src" / "virtpool" / "web" / "static"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_bundle_is_the_build_of_the_sources(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run scripts/install-system-packages.sh --test")
    work = tmp_path / "web"
    shutil.copytree(WEB, work, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=work, check=True, capture_output=True, timeout=600)
    out = tmp_path / "out"
    subprocess.run([npm, "run", "build"], cwd=work, check=True, capture_output=True, timeout=300,
                   env={**os.environ, "VIRTPOOL_WEB_OUT": str(out)})
    built, committed = files(out), files(STATIC)
    assert sorted(built) == sorted(committed) == ["assets/app.css", "assets/app.js", "index.html"]
    stale = [name for name in built if built[name] != committed[name]]
    assert stale == [], f"rebuild the dashboard (cd web && npm ci && npm run build) and commit: {stale}"
