#!/bin/bash
# GRPO runs of 8-12 minutes from the VAE-fix base generator (vae_fix_pipeline.sh), run detached:
#
#   bash benchmarks/gpu/pipeline.sh start grpo_runs [PLAN=b RLS=480 ...]
#   bash benchmarks/gpu/pipeline.sh status grpo_runs 600
#   bash benchmarks/gpu/pipeline.sh collect grpo_runs returned/grpo
#
# Two plans were run, one after the other (numbers: benchmarks/RESULTS.md):
#
# PLAN=a (default): three runs side by side, RLS=720 s each
#   dng@rollout-ref               de novo reward, KL to the rollout policy (Chemeleon2's code)
#   dng_no_diversity@rollout-ref  the Fig. 2c ablation at the same budget
#   dng@pretrained-ref            de novo reward, KL to the frozen pretrained model (paper text)
#   then the GRPO update timing (benchmarks/grpo_update.py) alone on the GPU.
# PLAN=b: two de novo variants that give stability more weight, side by side, RLS=480 s each
#   dng@div0.2                    diversity weights x 0.2 (compositional 0.2, structural 0.02)
#   dng@clip3                     paper weights, stability reward -clip(E_hull, 0, 3)
#   (no base row: plan a measured it with the same checkpoint, seed and sampler).
# PLAN=s1: the Table S1 comparison from a new base, side by side, RLS=540 s each
#   dng@rollout-ref               de novo reward, paper weights (with the base row)
#   dng@div0.2                    diversity weights x 0.2
#
# Common settings: G = 32 x 4, lr LR (3e-5), the paper's clip 1e-3, KL weight 1, entropy 1e-5,
# stability clip 1 eV/atom unless said, reward components min-max scaled over the batch,
# creativity un-normalised (Chemeleon2's released config). Every 10 steps each run scores the
# same 256 noises (eval_every) and keeps the policy with the highest eval/frac_msun; that policy
# is screened on 2,000 fresh samples (another seed) exactly as the base. The best de novo policy
# is listed in $D/EXPORT (its label and mSUN in $D/best_label).
#
# Environment: BASE (the base checkpoint, default $D/base/gen.pt), DATA_DIR (MP-20 CSVs with the
# formation energies, default ../shared/data/mp20), CACHE_DIR (train_mp20.py caches of val/test,
# optional), MU_FILE (precomputed CHGNet chemical potentials, optional), WHEELS, D (default
# out/grpo_runs), PLAN, RLS (RL seconds per run), LR.
set -o pipefail
PIPELINE=grpo_runs
source benchmarks/gpu/lib.sh
PLAN=${PLAN:-a}
BASE=${BASE:-$D/base/gen.pt}
DATA_DIR=${DATA_DIR:-../shared/data/mp20}
stage install
[ -f $BASE ] || { stage failed-no-base; exit 10; }
rm -f $D/best_label
install_site xtalforge chgnet.model pymatgen.analysis.phase_diagram smact amd
sha256sum $BASE

RD="python3 $D/code/benchmarks/rl_denovo.py --checkpoint $BASE --data-dir $DATA_DIR ${CACHE_DIR:+--cache-dir $CACHE_DIR} ${MU_FILE:+--mu-file $MU_FILE} --device cuda --workers 4 --n-samples 2000 --rl-steps 5000 --group-size 32 --num-conditions 4 --lr ${LR:-3e-5} --stability-clip 1 --eval-every 10 --eval-samples 256 --select-by eval/frac_msun --val-every 10 --save-checkpoints"
stage rl
if [ "$PLAN" = a ]; then
  RD="$RD --n-jobs 5 --rl-seconds ${RLS:-720}"
  DIRS="$D/r_dng $D/r_nodiv $D/r_dng_pre"; mkdir -p $DIRS
  $RD --runs dng --reference rollout --tag @rollout-ref --out-dir $D/r_dng > $D/r_dng/log.txt 2>&1 &
  $RD --runs dng_no_diversity --reference rollout --tag @rollout-ref --skip-base --out-dir $D/r_nodiv > $D/r_nodiv/log.txt 2>&1 &
  $RD --runs dng --reference pretrained --tag @pretrained-ref --skip-base --out-dir $D/r_dng_pre > $D/r_dng_pre/log.txt 2>&1 &
  wait
  stage bench
  python3 $D/code/benchmarks/grpo_update.py --checkpoint $BASE --device cuda --group-size 32 \
    --num-conditions 4 --variants 1,4,0 > $D/grpo_update.log 2>&1
elif [ "$PLAN" = s1 ]; then
  RD="$RD --n-jobs 7 --rl-seconds ${RLS:-540} --reference rollout --runs dng"
  DIRS="$D/r_dng $D/r_div02"; mkdir -p $DIRS
  $RD --tag @rollout-ref --out-dir $D/r_dng > $D/r_dng/log.txt 2>&1 &
  $RD --skip-base --diversity-scale 0.2 --tag @div0.2 --out-dir $D/r_div02 > $D/r_div02/log.txt 2>&1 &
  wait
else
  RD="$RD --n-jobs 7 --rl-seconds ${RLS:-480} --reference rollout --skip-base --runs dng"
  DIRS="$D/r_div02 $D/r_clip3"; mkdir -p $DIRS
  $RD --diversity-scale 0.2 --tag @div0.2 --out-dir $D/r_div02 > $D/r_div02/log.txt 2>&1 &
  $RD --stability-clip 3 --tag @clip3 --out-dir $D/r_clip3 > $D/r_clip3/log.txt 2>&1 &
  wait
fi

stage save
export_best $DIRS
stage done
echo "== total $(( $(date +%s) - T0 ))s"
