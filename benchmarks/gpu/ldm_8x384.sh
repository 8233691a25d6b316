#!/bin/bash
# GPU pipeline, part 1: on the frozen KL 1e-3 VAE, (a) a fresh larger LDM
# (8 x 384, bf16, batch 512) and (b) the existing 6 x 256 LDM continued, side by side.
OUT=${OUT:-returned}; mkdir -p "$OUT"
set -o pipefail
# Run from the repository root on a GPU host, with this folder present:
#   out/c3/{whl/, val.pt (MP-20 val cache from train_mp20.py --cache-dir), test2k.pt (first 2,000 test rows), gen.pt (the KL 1e-3 generator)}
# whl/ holds wheels of the non-torch dependencies for the host's Python (pip download).
# Results land in $OUT (default ./returned). Numbers: benchmarks/RESULTS.md.
T0=$(date +%s)
mkdir -p out/dev
python3 -m pip install -q --no-index --no-deps --no-compile --target out/dev/site out/c3/whl/*.whl || exit 11
export PYTHONPATH=$PWD/out/dev/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
sha256sum out/c3/gen.pt
COMMON="--train out/c3/val.pt --test out/c3/test2k.pt --checkpoint out/c3/gen.pt --vae-steps 0 --device cuda --tf32 --ldm-steps 1000000 --ldm-minutes ${LDM_MIN:-7.6} --schedule cosine --n-samples 1000 --eta 1.0 --workers 6 --log-every 2000 --inference-only-checkpoint"
echo "== install $(( $(date +%s) - T0 ))s"
python3 benchmarks/train_mp20.py $COMMON --new-ldm --dit-depth 8 --dit-hidden 384 --dit-heads 6 --ema-decay 0.999 --batch-size 512 --dtype bf16 --ldm-lr 3e-4 --warmup 500 --out-dir out/dev/big > out/dev/big.log 2>&1 &
python3 benchmarks/train_mp20.py $COMMON --batch-size 256 --ldm-lr 1e-4 --warmup 100 --out-dir out/dev/cont > out/dev/cont.log 2>&1 &
wait
for R in big cont; do
  echo "=== $R"; grep -v parse_struct out/dev/$R.log | grep -v '^  ' | cut -c1-400 | grep -v '"' | tail -8
  python3 - <<PY
import json, torch
m = json.load(open("out/dev/$R/metrics.json"))
print("$R", "params", m["params"], "ldm steps", m["training"]["ldm"]["steps"], "loss", round(m["training"]["ldm"]["final_loss"], 4), "recon", round(m["reconstruction"]["match_rate"], 4))
print("  sampling", {k: m["sampling"][k] for k in ("structural_validity", "smact_validity", "both_valid", "min_distance")})
d = torch.load("out/dev/$R/generator.pt", map_location="cpu", weights_only=True)
for part in ("vae", "ldm"):
    d[part] = {k: (v.half() if v.is_floating_point() and k not in ("latent_mean", "latent_std") else v) for k, v in d[part].items()}
torch.save(d, "out/dev/gen_${R}_fp16.pt")
json.dump(m, open("out/dev/metrics_$R.json", "w"), indent=1, default=str)
PY
  (cd out/dev && sha256sum gen_${R}_fp16.pt && split -b 16000000 -d gen_${R}_fp16.pt $OUT/gen_${R}_fp16.pt.part)
done
tar czf $OUT/logs.tgz -C out/dev big.log cont.log metrics_big.json metrics_cont.json; ls -la $OUT
echo "== done $(( $(date +%s) - T0 ))s"
