#!/usr/bin/env bash
# Run the test suite from a fresh clone: create .venv and install if needed, then pytest.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch==2.13.0: the CPU wheel on CPU machines (an open range would pull a multi-GB CUDA build)
.venv/bin/python -m pip install -q torch==2.13.0 -e ".[dev,relax]"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
if [ -x scripts/start_slurm.sh ] && [ "${XTALFORGE_NO_SLURM:-0}" != 1 ]; then
  bash scripts/start_slurm.sh || echo "SLURM could not be started: its tests will be skipped"
fi
if [ -x scripts/install_cp2k.sh ] && [ "${XTALFORGE_NO_CP2K:-0}" != 1 ]; then
  bash scripts/install_cp2k.sh || echo "CP2K could not be installed: its tests will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
