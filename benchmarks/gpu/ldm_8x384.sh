#!/bin/bash
# A larger denoiser, then GRPO from it (numbers: benchmarks/RESULTS.md), run detached:
#
#   bash benchmarks/gpu/pipeline.sh start ldm_8x384 CACHE_DIR=... GEN=...
#   bash benchmarks/gpu/pipeline.sh status ldm_8x384 600
#   bash benchmarks/gpu/pipeline.sh collect ldm_8x384 returned/ldm_8x384
#
# 1. ldm   on the frozen VAE of GEN (the KL 1e-3 generator), side by side: (a) big, a fresh
#          8 x 384 LDM (bf16, batch 512, EMA 0.999) and (b) cont, GEN's 6 x 256 LDM continued;
#          1,000 samples each. Skipped for a run whose metrics.json exists.
# 2. pick  the model with the larger share of samples whose minimum distance is above 1 A
#          (FORCE_PICK=big|cont overrides), stored in fp16 (benchmarks/gpu/fp16_checkpoint.py)
#          as the start of the RL runs; both generators are listed in $D/EXPORT.
# 3. rl    GRPO de novo, the no-diversity ablation and the 3 eV band-gap run side by side,
#          base and fine-tuned models screened identically (1,000 samples each).
#
# Environment: CACHE_DIR (required: train_mp20.py caches val.pt and test2k.pt, the first 2,000
# test rows), GEN (required: the generator checkpoint), DATA_DIR (MP-20 CSVs with the formation
# energies, default ../shared/data/mp20), MU_FILE (CHGNet chemical potentials, optional), WHEELS,
# D (default out/ldm_8x384), LDM_MIN, LR, RLS (RL seconds per run), BUDGET, FORCE_PICK.
set -o pipefail
PIPELINE=ldm_8x384
source benchmarks/gpu/lib.sh
DATA_DIR=${DATA_DIR:-../shared/data/mp20}
stage install
[ -f "$CACHE_DIR/val.pt" ] && [ -f "$GEN" ] || { stage failed-no-inputs; exit 10; }
install_site xtalforge chgnet.model pymatgen.analysis.phase_diagram smact amd
sha256sum "$GEN"

stage ldm
COMMON="--train $CACHE_DIR/val.pt --test $CACHE_DIR/test2k.pt --checkpoint $GEN --vae-steps 0 --device cuda --tf32 --ldm-steps 1000000 --ldm-minutes ${LDM_MIN:-7.6} --schedule cosine --n-samples 1000 --eta 1.0 --workers 6 --log-every 2000 --inference-only-checkpoint"
TM="python3 $D/code/benchmarks/train_mp20.py $COMMON"
[ -f $D/big/metrics.json ] || $TM --new-ldm --dit-depth 8 --dit-hidden 384 --dit-heads 6 --ema-decay 0.999 --batch-size 512 --dtype bf16 --ldm-lr 3e-4 --warmup 500 --out-dir $D/big > $D/big.log 2>&1 &
[ -f $D/cont/metrics.json ] || $TM --batch-size 256 --ldm-lr 1e-4 --warmup 100 --out-dir $D/cont > $D/cont.log 2>&1 &
wait
for R in big cont; do [ -f $D/$R/metrics.json ] || { stage failed-ldm-$R; exit 13; }; done

stage pick
PICK=$(python3 - "$D" <<'PY'
import json, sys
f = {r: json.load(open(f"{sys.argv[1]}/{r}/metrics.json"))["sampling"]["min_distance"]["frac_above_1A"]
     for r in ("big", "cont")}
print(max(f, key=f.get))
PY
) || { stage failed-pick; exit 14; }
PICK=${FORCE_PICK:-$PICK}
echo "picked $PICK"
export_ckpt $D/big/generator.pt $D/cont/generator.pt
python3 $D/code/benchmarks/gpu/fp16_checkpoint.py $D/$PICK/generator.pt $D/gen_${PICK}_fp16.pt
sha256sum $D/gen_${PICK}_fp16.pt

stage rl
for RUN in dng dng_no_diversity bandgap; do
  mkdir -p $D/rl_$RUN
  [ -f $D/rl_$RUN/results.json ] && continue
  timeout ${BUDGET:-540} python3 $D/code/benchmarks/rl_denovo.py --checkpoint $D/gen_${PICK}_fp16.pt --runs $RUN \
    --data-dir $DATA_DIR ${MU_FILE:+--mu-file $MU_FILE} --device cuda \
    --workers 5 --n-jobs 5 --rl-seconds ${RLS:-380} --rl-steps 1000 --group-size 32 \
    --num-conditions 4 --lr ${LR:-3e-5} --stability-clip 10 --n-samples 1000 --surrogate-epochs 60 --save-checkpoints \
    --max-kl 1.0 --out-dir $D/rl_$RUN > $D/rl_$RUN/log.txt 2>&1 &
done
wait
stage done
echo "== total $(( $(date +%s) - T0 ))s"
