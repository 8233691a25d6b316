"""campaigns/cluster_campaign.py builds through the one builder and routes every stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_campaign_dry_run_routes_every_stage():
    out = subprocess.run(
        [sys.executable, str(ROOT / "campaigns" / "cluster_campaign.py"), "--dry-run"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for stage, worker in (("train vae", "gpu_worker"), ("rl fine-tune", "gpu_worker"),
                          ("screen", "gpu_worker"), ("dft validation", "cpu_worker")):
        line = next((ln for ln in out.stdout.splitlines() if ln.strip().startswith(stage)), None)
        assert line is not None, f"{stage!r} missing from the routing table:\n{out.stdout}"
        assert worker in line, line
