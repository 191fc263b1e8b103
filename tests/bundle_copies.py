"""What the tests that forge bundles share: a copy of the committed bundle (tests/data/bundle) to tamper with, and
its manifest read and written back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import REPO

BUNDLE = REPO / "tests" / "data" / "bundle"


def copy_bundle(tmp_path: Path) -> Path:
    """A copy of the committed bundle, as ``tmp_path/bundle``."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE, folder)
    return folder


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))
