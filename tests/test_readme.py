"""The README's code blocks run: its ``bash`` and ``python`` blocks against the demo campaign.

Every fenced ``bash`` or ``python`` block of README.md runs, except a block preceded by an HTML
comment ``<!-- no-test ... -->`` (installation, GPU or cluster commands). The blocks run in a
temporary directory with ``$XTALFORGE_HOME`` set to the root of the demo campaign run once per
session (the ``demo_root`` fixture of ``conftest.py``), which is what the README's commands read
after ``xtalforge demo``. Two substitutions only: ``.venv/bin/xtalforge`` is this interpreter's
``python -m xtalforge``, and the placeholder ``xf-...`` is the id of a structure of the demo.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_NO_TEST = re.compile(r"<!--\s*no-test\b.*?-->\s*$", re.S)


def readme_blocks(text: str) -> list[tuple[int, str, str, bool]]:
    """Return ``(line, language, code, runs)`` for each fenced block of a Markdown text."""
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip()
        runs = not _NO_TEST.search(before[-300:])
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), runs))
    return out


def _runnable(lang: str) -> list[tuple[int, str]]:
    return [(line, code) for line, lg, code, runs in readme_blocks(README.read_text())
            if lg == lang and runs]


def test_block_extraction_honours_the_marker():
    text = ("x\n\n```bash\necho a\n```\n\n<!-- no-test: GPU -->\n```bash\necho b\n```\n"
            "```python\nprint(1)\n```\n```\nplain\n```\n")
    got = [(lang, code, runs) for _, lang, code, runs in readme_blocks(text)]
    assert got == [("bash", "echo a\n", True), ("bash", "echo b\n", False),
                   ("python", "print(1)\n", True), ("", "plain\n", True)]
    # the README has blocks of both kinds to run, and marks its set-up block
    assert _runnable("bash") and _runnable("python")
    assert any(not runs for *_, runs in readme_blocks(README.read_text()))


@pytest.fixture(scope="module")
def env(demo_root):
    return {**os.environ, "XTALFORGE_HOME": str(demo_root), "XTALFORGE_STORE": "",
            "PYTHONPATH": os.pathsep.join(p for p in (str(README.parent),
                                                      os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(scope="module")
def structure_id(env):
    p = subprocess.run([sys.executable, "-m", "xtalforge", "query", "--campaign", "demo",
                        "--format", "json", "--limit", "1"], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(p.stdout)[0]["structure_id"]


def test_bash_blocks_run(env, structure_id, tmp_path):
    xf = f"{shlex.quote(sys.executable)} -m xtalforge"
    n = 0
    for line, code in _runnable("bash"):
        for k, cmd in enumerate(code.splitlines()):
            cmd = cmd.split(" #")[0].strip()
            if not cmd or cmd.startswith("#"):
                continue
            cmd = cmd.replace(".venv/bin/xtalforge", xf).replace("xf-...", structure_id)
            p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True,
                               text=True, env=env)
            assert p.returncode == 0, f"README.md:{line + 1 + k}: {cmd}\n{p.stdout}\n{p.stderr}"
            assert p.stdout.strip() or list(tmp_path.iterdir()), f"README.md:{line + 1 + k}"
            n += 1
    assert n >= 5


def test_python_blocks_run(env, tmp_path):
    for line, code in _runnable("python"):
        p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                           text=True, env=env)
        assert p.returncode == 0, f"README.md:{line}:\n{code}\n{p.stdout}\n{p.stderr}"
