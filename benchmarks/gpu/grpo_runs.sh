#!/bin/bash
# GRPO runs of 8-12 minutes from the VAE-fix base generator (vae_fix_pipeline.sh), started
# detached (setsid) and followed by benchmarks/gpu/follow_grpo.sh, so that no shell has to stay
# attached for their whole length. Two plans were run, one after the other (numbers: benchmarks/RESULTS.md):
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
#
# Common settings: G = 32 x 4, lr LR (3e-5), the paper's clip 1e-3, KL weight 1, entropy 1e-5,
# stability clip 1 eV/atom unless said, reward components min-max scaled over the batch,
# creativity un-normalised (Chemeleon2's released config). Every 10 steps each run scores the
# same 256 noises (eval_every) and keeps the policy with the highest eval/frac_msun; that policy
# is screened on 2,000 fresh samples (another seed) exactly as the base. The best de novo policy
# is saved in fp16 for follow_grpo.sh to return.
#
# Needs, on the GPU host: out/dev/base/gen.pt (the base checkpoint) and out/c5/{whl/, cache/,
# mp20/, chgnet_mu.json}. Knobs: PLAN, RLS (RL seconds per run), LR.
set -o pipefail
source benchmarks/gpu/lib.sh
PLAN=${PLAN:-a}
stage install
[ -f $D/base/gen.pt ] || { stage failed-no-base; exit 10; }
rm -f $D/best_fp16.pt $D/best_label
install_site
sha256sum $D/base/gen.pt

RD="python3 $D/code/benchmarks/rl_denovo.py --checkpoint $D/base/gen.pt --data-dir out/c5/mp20 --cache-dir out/c5/cache --mu-file out/c5/chgnet_mu.json --device cuda --workers 4 --n-samples 2000 --rl-steps 5000 --group-size 32 --num-conditions 4 --lr ${LR:-3e-5} --stability-clip 1 --eval-every 10 --eval-samples 256 --select-by eval/frac_msun --val-every 10 --save-checkpoints"
stage rl
if [ "$PLAN" = a ]; then
  RD="$RD --n-jobs 5 --rl-seconds ${RLS:-720}"
  DIRS="$D/r_dng $D/r_nodiv $D/r_dng_pre"; mkdir -p $DIRS
  $RD --runs dng --reference rollout --tag @rollout-ref --out-dir $D/r_dng > $D/r_dng/log.txt 2>&1 &
  $RD --runs dng_no_diversity --reference rollout --tag @rollout-ref --skip-base --out-dir $D/r_nodiv > $D/r_nodiv/log.txt 2>&1 &
  $RD --runs dng --reference pretrained --tag @pretrained-ref --skip-base --out-dir $D/r_dng_pre > $D/r_dng_pre/log.txt 2>&1 &
  wait
  stage bench
  python3 $D/code/benchmarks/grpo_update.py --checkpoint $D/base/gen.pt --device cuda --group-size 32 \
    --num-conditions 4 --variants 1,4,0 > $D/grpo_update.log 2>&1
else
  RD="$RD --n-jobs 7 --rl-seconds ${RLS:-480} --reference rollout --skip-base --runs dng"
  DIRS="$D/r_div02 $D/r_clip3"; mkdir -p $DIRS
  $RD --diversity-scale 0.2 --tag @div0.2 --out-dir $D/r_div02 > $D/r_div02/log.txt 2>&1 &
  $RD --stability-clip 3 --tag @clip3 --out-dir $D/r_clip3 > $D/r_clip3/log.txt 2>&1 &
  wait
fi

stage save
save_best_fp16 $DIRS
stage done
echo "== total $(( $(date +%s) - T0 ))s"
