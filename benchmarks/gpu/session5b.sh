#!/bin/bash
# Issue 5, fifth session, second pipeline (after session5.sh): two de novo variants that give
# stability more weight against the diversity terms, side by side, same budget and settings as
# session5.sh otherwise (rollout reference). Followed by benchmarks/gpu/follow5.sh.
#   dng@div0.2   diversity weights x 0.2 (compositional 0.2, structural 0.02), stability clip 1
#   dng@clip3    paper weights, stability reward -clip(E_hull, 0, 3)
# The base row is the one session5.sh measured (same checkpoint, seed and sampler).
#
# (Header of session5.sh follows.)
#
# Three runs side by side, the same wall budget (RLS seconds) and settings (G = 32 x 4, lr LR,
# the paper's clip 1e-3, KL weight 1, entropy 1e-5, stability clip 1 eV/atom, reward components
# min-max scaled over the batch, creativity un-normalised as in Chemeleon2's released config):
#   dng@rollout-ref               de novo reward, KL to the rollout policy (Chemeleon2's code)
#   dng_no_diversity@rollout-ref  the Fig. 2c ablation at the same budget
#   dng@pretrained-ref            de novo reward, KL to the frozen pretrained model (paper text)
# Every 10 steps each run samples the same 256 crystals' noise (eval_every) and keeps the policy
# with the highest eval/frac_msun; that policy is then screened on 2,000 fresh samples (another
# seed) with the base, identically. Afterwards the GRPO update timing (benchmarks/grpo_update.py)
# runs alone on the GPU, and the best de novo policy is saved in fp16 for follow5.sh to return.
#
# Needs, on the device machine: out/dev/base/gen.pt (carried by an earlier call: the checkpoint
# and the wheels do not fit one call's 64 MiB) and the carried out/c5/{whl/, cache/, mp20/,
# chgnet_mu.json}. Knobs: RLS (RL seconds per run, default 720), LR (3e-5).
set -o pipefail
T0=$(date +%s)
D=out/dev
mkdir -p $D
stage() { echo "$1" > $D/STAGE; echo "== $1 at $(( $(date +%s) - T0 ))s"; }
stage install
[ -f $D/base/gen.pt ] || { stage failed-no-base; exit 10; }
rm -f $D/best_fp16.pt $D/best_label; rm -rf $D/code && mkdir -p $D/code && cp -r xtalforge benchmarks $D/code/  # immune to re-syncs
[ -d $D/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target $D/site out/c5/whl/*.whl || { stage failed-install; exit 11; }
export PYTHONPATH=$PWD/$D/site:$PWD/$D/code PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# chgnet imports nvidia_smi (the image has its successor pynvml); pymatgen's phase diagram
# imports plotly at module level (only its plotting uses it).
python3 -c "import nvidia_smi" 2>/dev/null || echo 'from pynvml import *  # noqa' > $D/site/nvidia_smi.py
python3 -c "import plotly" 2>/dev/null || { mkdir -p $D/site/plotly; touch $D/site/plotly/__init__.py $D/site/plotly/graph_objects.py; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import xtalforge, chgnet.model, pymatgen.analysis.phase_diagram, smact, amd; print('imports ok')" || { stage failed-imports; exit 12; }
sha256sum $D/base/gen.pt

RD="python3 $D/code/benchmarks/rl_denovo.py --checkpoint $D/base/gen.pt --data-dir out/c5/mp20 --cache-dir out/c5/cache --mu-file out/c5/chgnet_mu.json --device cuda --workers 4 --n-jobs 7 --n-samples 2000 --rl-seconds ${RLS:-480} --rl-steps 5000 --group-size 32 --num-conditions 4 --lr ${LR:-3e-5} --stability-clip 1 --eval-every 10 --eval-samples 256 --select-by eval/frac_msun --val-every 10 --save-checkpoints --reference rollout --skip-base --runs dng"

stage rl
mkdir -p $D/r_div02 $D/r_clip3
$RD --diversity-scale 0.2 --tag @div0.2 --out-dir $D/r_div02 > $D/r_div02/log.txt 2>&1 &
$RD --stability-clip 3 --tag @clip3 --out-dir $D/r_clip3 > $D/r_clip3/log.txt 2>&1 &
wait

stage save
python3 - <<'PY'
import json, torch
best, label = None, None
for d in ("out/dev/r_div02", "out/dev/r_clip3"):
    try:
        rows = json.load(open(f"{d}/results.json"))["rows"]
    except (OSError, KeyError, ValueError):
        continue
    for r in rows:
        if r["model"].startswith("dng@") and (best is None or (r.get("mSUN") or 0) > best[0]):
            best, label = ((r.get("mSUN") or 0), f"{d}/dng.pt"), r["model"]
if best:
    d = torch.load(best[1], map_location="cpu", weights_only=True)
    for part in ("vae", "ldm"):
        d[part] = {k: (v.half() if v.is_floating_point() and k not in ("latent_mean", "latent_std")
                       else v) for k, v in d[part].items()}
    torch.save(d, "out/dev/best_fp16.pt")
    open("out/dev/best_label", "w").write(f"{label} {best[0]}\n")
    print("kept", label, best[0])
PY
stage done
echo "== total $(( $(date +%s) - T0 ))s"
