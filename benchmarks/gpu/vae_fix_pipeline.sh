#!/bin/bash
# One GPU pipeline (VAE fix, new base, decoder fine-tunes, GRPO), run detached:
#
#   bash benchmarks/gpu/pipeline.sh start vae_fix_pipeline [VAE_MIN=3 ...]
#   bash benchmarks/gpu/pipeline.sh status vae_fix_pipeline 600
#   bash benchmarks/gpu/pipeline.sh collect vae_fix_pipeline returned/vae_fix
#
#   1. VAE (medium, KL 1e-3), 3 min.
#   2. Side by side on the frozen encoder: the 8 x 384 LDM (bf16, batch 512), and three decoder
#      fine-tunes on noised latents (noise_max 0, 0.25, 0.5 latent stds; 0 is the control:
#      the same extra decoder training without noise).
#   3. Base model screened with each decoder on the same 1,000 sampled latents
#      (rl_denovo.py --runs "" --compare-decoders): CHGNet, MP-20 formation hull.
#   4. The decoder with the highest metastable fraction is kept; GRPO de novo, the
#      no-diversity ablation and the 3 eV band-gap run side by side from that base, each then
#      screened with the base on 1,000 samples.
#
# Environment: CACHE_DIR (required: train_mp20.py caches val.pt and test2k.pt, the first 2,000
# test rows), DATA_DIR (MP-20 CSVs with the formation energies, default ../shared/data/mp20),
# MU_FILE (precomputed CHGNet chemical potentials, optional), WHEELS, D (default
# out/vae_fix_pipeline), VAE_MIN, LDM_MIN, DEC_MIN, RLS (RL seconds per run), LR, SCLIP.
# The base LDM (ldm/generator.pt) and the kept decoder are listed in $D/EXPORT.
# Numbers: benchmarks/RESULTS.md.
set -o pipefail
PIPELINE=vae_fix_pipeline
source benchmarks/gpu/lib.sh
DATA_DIR=${DATA_DIR:-../shared/data/mp20}
stage install
[ -f "$CACHE_DIR/val.pt" ] || { stage failed-no-cache; exit 10; }
install_site xtalforge chgnet.model pymatgen.analysis.phase_diagram smact amd
TM="python3 $D/code/benchmarks/train_mp20.py --train $CACHE_DIR/val.pt --test $CACHE_DIR/test2k.pt --device cuda --tf32 --workers 4 --log-every 2000"

stage vae
$TM --preset medium --vae-hidden 256 --vae-layers 4 --kl-weight 1e-3 --vae-lr 5e-4 --warmup 200 \
  --schedule cosine --vae-minutes ${VAE_MIN:-3} --ldm-steps 0 --no-sample --recon-noise 0 --out-dir $D/vae > $D/vae.log 2>&1 \
  || { stage failed-vae; exit 13; }
python3 -c "
import json, sys
r = json.load(open('$D/vae/metrics.json'))['reconstruction']['match_rate']
print('VAE reconstruction', r); sys.exit(0 if r > 0.3 else 1)" || { stage failed-vae-quality; exit 16; }

stage ldm+decoders
$TM --checkpoint $D/vae/generator.pt --vae-steps 0 --new-ldm --dit-depth 8 --dit-hidden 384 --dit-heads 6 \
  --ema-decay 0.999 --batch-size 512 --dtype bf16 --ldm-lr 3e-4 --warmup 500 --schedule cosine \
  --ldm-steps 1000000 --ldm-minutes ${LDM_MIN:-5} --n-samples 1000 --eta 1.0 --recon-noise 0 \
  --inference-only-checkpoint --out-dir $D/ldm > $D/ldm.log 2>&1 &
P_LDM=$!
for NZ in 0 0.25 0.5; do
  $TM --checkpoint $D/vae/generator.pt --vae-steps 0 --ldm-steps 0 --decoder-noise $NZ \
    --decoder-minutes ${DEC_MIN:-3} --decoder-lr 2e-4 --schedule cosine --no-sample \
    --recon-noise 0,0.1,0.25,0.5 --out-dir $D/dec$NZ > $D/dec$NZ.log 2>&1 &
done
wait $P_LDM || { stage failed-ldm; exit 14; }
wait

RD="python3 $D/code/benchmarks/rl_denovo.py --data-dir $DATA_DIR --cache-dir $CACHE_DIR ${MU_FILE:+--mu-file $MU_FILE} --device cuda --workers 4 --n-samples 1000"
stage compare-decoders
$RD --checkpoint $D/ldm/generator.pt --runs "" --n-jobs 12 --n-samples ${CMP_N:-500} \
  --compare-decoders $D/dec0/generator.pt,$D/dec0.25/generator.pt,$D/dec0.5/generator.pt \
  --out-dir $D/cmp > $D/cmp.log 2>&1 || { stage failed-compare; exit 15; }
BEST=$(python3 - "$D/cmp/results.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
best = max(rows, key=lambda r: (r.get("metastability") or 0.0, r.get("mSUN") or 0.0))
print(best["model"].split("+")[1] if "+" in best["model"] else "")
PY
)
echo "best decoder: ${BEST:-original}"
DEC=""; [ -n "$BEST" ] && DEC="--decoder-from $D/${BEST}/generator.pt"
echo "$DEC" > $D/best_decoder
export_ckpt $D/ldm/generator.pt ${BEST:+$D/$BEST/generator.pt}

stage rl
for RUN in dng dng_no_diversity bandgap; do
  mkdir -p $D/rl_$RUN
  timeout 300 $RD --checkpoint $D/ldm/generator.pt $DEC --runs $RUN --n-jobs 5 --rl-seconds ${RLS:-130} \
    --rl-steps 1000 --group-size 32 --num-conditions 4 --lr ${LR:-2e-5} --stability-clip ${SCLIP:-5} \
    --max-kl 1.0 --surrogate-epochs 40 --save-checkpoints --out-dir $D/rl_$RUN > $D/rl_$RUN/log.txt 2>&1 &
done
wait
stage done
echo "== total $(( $(date +%s) - T0 ))s"
