#!/bin/bash
# Shared steps of the detached GPU pipelines (vae_fix_pipeline.sh, grpo_runs.sh) and of their followers
# (follow_vae_fix.sh, follow_grpo.sh). Source it from the repository root; everything lives under out/dev,
# which stays on the GPU host between the follow calls.
D=out/dev
T0=${T0:-$(date +%s)}
mkdir -p $D

# stage NAME: record the running stage (followers stop on "done" or "failed*").
stage() { echo "$1" > $D/STAGE; echo "== $1 at $(( $(date +%s) - T0 ))s"; }

# install_site: copy the code (immune to re-syncs of the working tree), install the
# wheels of out/c5/whl into out/dev/site once, export PYTHONPATH, check the imports.
install_site() {
  rm -rf $D/code && mkdir -p $D/code && cp -r xtalforge benchmarks $D/code/
  [ -d $D/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target $D/site out/c5/whl/*.whl || { stage failed-install; exit 11; }
  export PYTHONPATH=$PWD/$D/site:$PWD/$D/code PYTHONUNBUFFERED=1 TQDM_DISABLE=1
  # Two modules the image lacks and gpu_wheels.sh does not collect: chgnet imports nvidia_smi
  # (the image has its successor pynvml), pymatgen.analysis.phase_diagram imports plotly at
  # module level (only its plotting uses it).
  python3 -c "import nvidia_smi" 2>/dev/null || echo 'from pynvml import *  # noqa' > $D/site/nvidia_smi.py
  python3 -c "import plotly" 2>/dev/null || { mkdir -p $D/site/plotly; touch $D/site/plotly/__init__.py $D/site/plotly/graph_objects.py; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import xtalforge, chgnet.model, pymatgen.analysis.phase_diagram, smact, amd; print('imports ok')" || { stage failed-imports; exit 12; }
}

# wait_stage LIMIT: wait up to LIMIT seconds for the pipeline to finish or fail.
wait_stage() {
  local t0; t0=$(date +%s)
  while [ $(( $(date +%s) - t0 )) -lt "$1" ]; do
    case "$(cat $D/STAGE 2>/dev/null)" in done|failed*) break;; esac
    sleep 10
  done
  echo "stage: $(cat $D/STAGE 2>/dev/null) after $(( $(date +%s) - t0 ))s of following"
  grep "^== " $D/pipeline.log
  nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader
}

# save_best_fp16 DIR...: of the "dng@..." rows in DIR/results.json, keep the fine-tuned policy
# (DIR/dng.pt) with the highest mSUN as out/dev/best_fp16.pt (fp16 weights, for the return).
save_best_fp16() {
  python3 - "$@" <<'PY'
import json, sys, torch
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
    d = torch.load(best[1], map_location="cpu", weights_only=True)
    for part in ("vae", "ldm"):
        d[part] = {k: (v.half() if v.is_floating_point() and k not in ("latent_mean", "latent_std")
                       else v) for k, v in d[part].items()}
    torch.save(d, "out/dev/best_fp16.pt")
    open("out/dev/best_label", "w").write(f"{best[2]} {best[0]}\n")
    print("kept", best[2], best[0])
PY
}
