#!/bin/bash
# Wyckoff transformer on MP-20 (benchmarks/train_wyckoff.py) on one GPU host, run detached:
#
#   bash benchmarks/gpu/pipeline.sh start wyckoff_pipeline [MODEL=medium TRAINM=60 ...]
#   bash benchmarks/gpu/pipeline.sh status wyckoff_pipeline 600
#   bash benchmarks/gpu/pipeline.sh collect wyckoff_pipeline returned/wyckoff
#
# 1. train   the Wyckoff transformer (MODEL preset, default medium: d 256 x 8 layers) on the
#            project's MP-20 split for STEPS steps (default 10,000: the held-out NLL rises after
#            about 5,000 on the 17k crystals) at batch BATCH, TRAINM minutes per run; the
#            state lives in $D/state_wyckoff.pt, so running this script again continues the run
#            (tokenised sequences are cached in $D/sequences.pt); a snapshot every SNAP steps.
# 2. eval    the final model with the fixed protocol of generator_scaling.py (NSAMPLES samples,
#            seed 12345, CHGNet single points, MP-20 formation hull, novelty against MP-20
#            val + test) plus the space-group distribution and samples/s.
# 3. ppo     PPO with r = -E_hull (REWARD=ehull; or a preset / JSON list of the reward registry,
#            see `train_wyckoff.py ppo --help`) (tau KL, 3 updates per batch, eps 0.2, EMA baseline 0.95),
#            PPOSTEPS steps of PPOBATCH samples from the base (or from the policy INIT),
#            resumable ($D/ppo_state.pt), then eval of the
#            fine-tuned policy with the same protocol (label ppo).
# 4. sft     the supervised fine-tuning baseline of Cao & Wang 2025 Fig. 5: SFTN samples of the
#            base model relaxed with CHGNet (SFTRELAX=0: single points), keep E_hull < 0.1
#            eV/atom on the same hull, fine-tune the base on them (SFTEPOCHS epochs, batch 100,
#            lr 1e-5); the selection is kept in $D/sft_selected.json.gz; then eval (label sft).
#            The relaxation is batched through torch-sim where it is installed, else one
#            structure at a time with ASE (hours for 10,000: lower SFTN or set SFTRELAX=0).
# 5. compare base vs PPO vs SFT (without SFT when it selected nothing) with identical screening: the three eval rows (NSAMPLES
#            samples each) and, per model, NSG samples in each of SPACEGROUPS (default the 14
#            space groups of Cao & Wang 2025 Fig. 4) with CHGNet single points and the same
#            hull, resumable per (model, group) in $D/spacegroups.jsonl; one JSON of rows and
#            the S.U.N. fraction per space group in $D/compare.json.
# A stage whose output exists is skipped, so the script resumes where a killed run stopped.
# wyckoff.pt, ppo.pt and sft.pt are listed in $D/EXPORT.
#
# Environment: D (work folder, default out/wyckoff_pipeline), DATA_DIR (MP-20 CSVs, default
# ../shared/data/mp20), WHEELS (a folder of wheels installed into $D/site first, optional: a host
# that cannot reach PyPI needs the pure-Python pyxtal wheel there, made with
# `pip download pyxtal==1.1.5 --no-deps -d $WHEELS`; of its dependencies only ase, networkx,
# pandas, scipy and spglib are imported, which the project's environment has), MODEL,
# STEPS, BATCH, LR, TRAINM, SNAP, LIMIT (first N training crystals, for smoke runs), NSAMPLES,
# PPOSTEPS, PPOBATCH, PPOMB (PPO minibatch), KL (tau), PPOLR, REWARD, INIT (a fine-tuned policy
# to start PPO from; the KL still measures the distance to the base), PPOEVAL (PPO eval samples), SFTN,
# SFTEPOCHS, SFTRELAX (1/0), NSG, SPACEGROUPS (space-separated numbers), NJOBS, DECODEW
# (processes assembling sampled sequences into structures, default NJOBS), DEVICE.
set -o pipefail
PIPELINE=wyckoff_pipeline
source benchmarks/gpu/lib.sh
DATA_DIR=${DATA_DIR:-../shared/data/mp20}
MODEL=${MODEL:-medium}
STEPS=${STEPS:-10000}
BATCH=${BATCH:-256}
LR=${LR:-3e-4}
TRAINM=${TRAINM:-60}
SNAP=${SNAP:-5000}
NSAMPLES=${NSAMPLES:-2000}
PPOSTEPS=${PPOSTEPS:-100}
PPOBATCH=${PPOBATCH:-1000}
PPOMB=${PPOMB:-250}
KL=${KL:-0.1}
REWARD=${REWARD:-ehull}
PPOLR=${PPOLR:-1e-4}
INIT=${INIT:-}
PPOEVAL=${PPOEVAL:-500}
SFTN=${SFTN:-10000}
SFTEPOCHS=${SFTEPOCHS:-55}
SFTRELAX=${SFTRELAX:-1}
NSG=${NSG:-1000}
SPACEGROUPS=${SPACEGROUPS:-1 2 12 14 62 63 123 139 164 166 191 194 221 225}
NJOBS=${NJOBS:-8}
DECODEW=${DECODEW:-$NJOBS}
LIMIT=${LIMIT:-}
DEVICE=${DEVICE:-cuda}
stage install
install_site pyxtal xtalforge.models.wyckoff.generator chgnet.model smact

TW="python3 $D/code/benchmarks/train_wyckoff.py"
COMMON="--out $D --data-dir $DATA_DIR --device $DEVICE --workers $NJOBS"

stage train
until [ -f $D/wyckoff.pt ]; do
  $TW train $COMMON --model $MODEL --steps $STEPS --batch-size $BATCH --lr $LR --tf32 \
    --minutes $TRAINM --snapshot-every $SNAP ${LIMIT:+--limit $LIMIT} \
    || { stage failed-train; exit 13; }
done
grep '"final"' $D/train.jsonl | tail -1 | cut -c1-400
export_ckpt $D/wyckoff.pt

stage eval-base
grep -q '"label": "base"' $D/eval.jsonl 2>/dev/null || \
  $TW eval $COMMON --checkpoint $D/wyckoff.pt --n-samples $NSAMPLES --n-jobs $NJOBS --decode-workers $DECODEW --label base \
  || { stage failed-eval; exit 14; }

stage ppo
[ -f $D/ppo.pt ] || $TW ppo $COMMON --checkpoint $D/wyckoff.pt --steps $PPOSTEPS \
  --batch-size $PPOBATCH --minibatch-size $PPOMB --kl-coef $KL --n-jobs $NJOBS --decode-workers $DECODEW --eval-every 10 \
  --eval-samples $PPOEVAL --reward "$REWARD" --lr $PPOLR ${INIT:+--init $INIT} \
  || { stage failed-ppo; exit 15; }
export_ckpt $D/ppo.pt

stage eval-ppo
grep -q '"label": "ppo"' $D/eval.jsonl 2>/dev/null || \
  $TW eval $COMMON --checkpoint $D/ppo.pt --n-samples $NSAMPLES --n-jobs $NJOBS --decode-workers $DECODEW --label ppo \
  || { stage failed-eval-ppo; exit 16; }

stage sft
# an SFT that cannot run (no sample below the threshold) is recorded and the comparison goes on
[ -f $D/sft.pt ] || $TW sft $COMMON --checkpoint $D/wyckoff.pt --n-samples $SFTN \
  --epochs $SFTEPOCHS --batch-size 100 --lr 1e-5 --n-jobs $NJOBS --decode-workers $DECODEW \
  $([ "$SFTRELAX" = 0 ] && echo --no-relax) || echo "== sft gave no model (see the log above)"
MODELS="base=$D/wyckoff.pt ppo=$D/ppo.pt"
if [ -f $D/sft.pt ]; then
  export_ckpt $D/sft.pt
  MODELS="$MODELS sft=$D/sft.pt"
  stage eval-sft
  grep -q '"label": "sft"' $D/eval.jsonl 2>/dev/null || \
    $TW eval $COMMON --checkpoint $D/sft.pt --n-samples $NSAMPLES --n-jobs $NJOBS --decode-workers $DECODEW --label sft \
    || { stage failed-eval-sft; exit 18; }
fi

stage compare
[ -f $D/compare.json ] || $TW compare $COMMON --models $MODELS --n-per-group $NSG \
  --space-groups $SPACEGROUPS --n-jobs $NJOBS --decode-workers $DECODEW || { stage failed-compare; exit 19; }
stage done
echo "== total $(( $(date +%s) - T0 ))s"
