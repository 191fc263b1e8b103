"""Running a Ray scenario script (tests/ray_scenario.py, tests/probe_ray_scenario.py) the only safe way here: in a
fresh network namespace whose only interface is loopback (Ray binds some ports on every interface whatever it is
told), with Ray's files in a folder of the run's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["skip_without_namespace", "run_scenario"]


def skip_without_namespace() -> None:
    """Skip the calling test where no such namespace can be made (no unshare, ip or ss; not allowed to)."""
    if not all(shutil.which(t) for t in ("unshare", "ip", "ss")):
        pytest.skip("Ray runs only in a network namespace with loopback alone: needs unshare, ip and ss")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"Ray runs only in a network namespace with loopback alone: cannot make one "
                    f"({probe.stderr.strip()})")


def run_scenario(script: Path, out: Path, *flags: str, timeout: float) -> dict:
    """``script [flags] OUT`` in a fresh network namespace; the report it wrote to ``out``, with ``wall_s``.

    Ray's files (sessions, logs, the address of "the current cluster") go to a folder of this run's, removed
    after: under /tmp/ray, runs would see each other's cluster and leave their logs behind. It is short: Ray's
    socket paths must fit 107 bytes."""
    command = f"exec {sys.executable} {script} {' '.join(flags)} {out}"
    t0 = time.monotonic()
    ray_tmp = tempfile.mkdtemp(prefix="er-ray-", dir="/tmp")
    try:
        done = subprocess.run(["unshare", "--net", "sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    report["wall_s"] = time.monotonic() - t0
    return report
