#!/bin/bash
# GPU pipeline, part 2: GRPO from the better generator of call 1 (kept on the
# warm machine in out/dev): de novo, the no-diversity ablation and the 3 eV band-gap run side by
# side, base and fine-tuned models screened identically (1000 samples each).
# Run from the repository root on a GPU host, with this folder present:
#   out/c4/{whl/, mp20/ (val, test, all formation energies from ../shared/data/mp20), shim/, chgnet_mu.json}; out/dev/ left by ldm_8x384.sh on the same warm machine
# whl/ holds wheels of the non-torch dependencies for the host's Python (pip download).
# Results land in $OUT (default ./returned). Numbers: benchmarks/RESULTS.md.
# LR, RLS (RL seconds per run) and BUDGET override the defaults; FORCE_PICK=big|cont picks the model.
OUT=${OUT:-returned}; mkdir -p "$OUT"
set -o pipefail
T0=$(date +%s)
[ -f out/dev/metrics_big.json ] || { echo "out/dev from call 1 is gone"; exit 12; }
[ -d out/dev/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target out/dev/site out/c4/whl/*.whl || exit 11
export PYTHONPATH=$PWD/out/dev/site:$PWD:$PWD/out/c4/shim PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PICK=$(python3 -c "
import json
f = {r: json.load(open(f'out/dev/metrics_{r}.json'))['sampling']['min_distance']['frac_above_1A'] for r in ('big', 'cont')}
print(max(f, key=f.get))")
PICK=${FORCE_PICK:-$PICK}
echo "picked $PICK"; sha256sum out/dev/gen_${PICK}_fp16.pt
for RUN in dng dng_no_diversity bandgap; do
  mkdir -p out/dev/rl_$RUN
  timeout ${BUDGET:-540} python3 benchmarks/rl_denovo.py --checkpoint out/dev/gen_${PICK}_fp16.pt --runs $RUN \
    --data-dir out/c4/mp20 --mu-file out/c4/chgnet_mu.json --device cuda \
    --workers 5 --n-jobs 5 --rl-seconds ${RLS:-380} --rl-steps 1000 --group-size 32 \
    --num-conditions 4 --lr ${LR:-3e-5} --stability-clip 10 --n-samples 1000 --surrogate-epochs 60 --save-checkpoints \
    --max-kl 1.0 --out-dir out/dev/rl_$RUN > out/dev/rl_$RUN/log.txt 2>&1 &
done
wait
for RUN in dng dng_no_diversity bandgap; do
  echo "=== $RUN"; grep -v "CHGNet v0" out/dev/rl_$RUN/log.txt | cut -c1-700 | grep -v "^\[" | tail -12
  grep "^\[" out/dev/rl_$RUN/log.txt | awk 'NR%10==1' | cut -c1-400
  grep "^\[" out/dev/rl_$RUN/log.txt | tail -1 | cut -c1-400
done
tar czf $OUT/rl.tgz -C out/dev rl_dng/log.txt rl_dng/results.json rl_dng_no_diversity/log.txt rl_dng_no_diversity/results.json rl_bandgap/log.txt rl_bandgap/results.json
ls -la $OUT
echo "== done $(( $(date +%s) - T0 ))s"
