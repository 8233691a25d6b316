#!/bin/bash
# Shared steps of the GPU pipelines in this folder. A pipeline sets PIPELINE to its name and
# sources this file from the repository root; benchmarks/gpu/pipeline.sh starts it detached,
# reports its progress and collects its results (see the usage there).
#
# D         the work folder (default out/$PIPELINE); everything the pipeline writes lives there
# D/STAGE   the stage running now; "done" or "failed-..." when it stopped
# D/EXPORT  checkpoints worth bringing back, one path per line (pipeline.sh collect exports
#           them with their sha256 and an fp16 copy)
# WHEELS    optional folder of wheels installed into D/site once (hosts without an index)
D=${D:-out/$PIPELINE}
T0=${T0:-$(date +%s)}
mkdir -p "$D"

# stage NAME: record the running stage.
stage() { echo "$1" > "$D/STAGE"; echo "== $1 at $(( $(date +%s) - T0 ))s"; }

# export_ckpt PATH...: list checkpoints in D/EXPORT (once each).
export_ckpt() {
  local p
  for p in "$@"; do
    [ -f "$p" ] || { echo "export_ckpt: $p missing"; continue; }
    grep -qxF "$p" "$D/EXPORT" 2>/dev/null || echo "$p" >> "$D/EXPORT"
  done
}

# install_site MODULE...: copy the code into D/code (immune to edits of the working tree while
# the pipeline runs), install $WHEELS/*.whl into D/site once if WHEELS is set, export
# PYTHONPATH, and check that MODULE... import.
install_site() {
  rm -rf "$D/code" && mkdir -p "$D/code" && cp -r xtalforge benchmarks "$D/code/"
  if [ -n "$WHEELS" ] && [ ! -d "$D/site" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$D/site" "$WHEELS"/*.whl \
      || { rm -rf "$D/site"; stage failed-install; exit 11; }
  fi
  mkdir -p "$D/site"
  export PYTHONPATH=$PWD/$D/site:$PWD/$D/code PYTHONUNBUFFERED=1 TQDM_DISABLE=1
  # chgnet imports nvidia_smi (images often have only its successor pynvml); pymatgen's phase
  # diagram module imports plotly at module level (only its plotting uses it); pandas wants pytz
  python3 -c "import nvidia_smi" 2>/dev/null || echo 'from pynvml import *  # noqa' > "$D/site/nvidia_smi.py"
  python3 -c "import plotly" 2>/dev/null || { mkdir -p "$D/site/plotly"; touch "$D/site/plotly/__init__.py" "$D/site/plotly/graph_objects.py"; }
  # maggma.stores imports paramiko for its SSH tunnel alone (never used on a GPU host)
  python3 -c "import paramiko" 2>/dev/null || printf '%s\n' 'class PKey: ...' 'class Transport: ...' \
      'class SSHException(Exception): ...' 'class AuthenticationException(SSHException): ...' \
      > "$D/site/paramiko.py"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  [ $# -eq 0 ] || python3 -c "import $(IFS=,; echo "$*"); print('imports ok')" || { stage failed-imports; exit 12; }
}

# wait_stage SECONDS: wait up to SECONDS for D/STAGE to become "done" or "failed*".
wait_stage() {
  local t0; t0=$(date +%s)
  while [ $(( $(date +%s) - t0 )) -lt "${1:-0}" ]; do
    case "$(cat "$D/STAGE" 2>/dev/null)" in done|failed*) break;; esac
    sleep 5
  done
}

# export_best DIR...: of the "dng@..." rows in DIR/results.json, list the fine-tuned policy
# (DIR/dng.pt) with the highest mSUN in D/EXPORT and write its label and mSUN to D/best_label.
export_best() {
  local best
  best=$(python3 - "$@" <<'PY'
import json, sys
best = None
for d in sys.argv[1:]:
    try:
        rows = json.load(open(f"{d}/results.json"))["rows"]
    except (OSError, KeyError, ValueError):
        continue
    for r in rows:
        if r["model"].startswith("dng@") and (best is None or (r.get("mSUN") or 0) > best[0]):
            best = ((r.get("mSUN") or 0), f"{d}/dng.pt", r["model"])
if best:
    print(best[1], best[2], best[0])
PY
)
  [ -n "$best" ] || { echo "no dng@ row to keep"; return; }
  echo "$best" | cut -d' ' -f2- > "$D/best_label"
  echo "kept $best"
  export_ckpt "${best%% *}"
}
