#!/bin/bash
# Generator scaling study on one GPU host (benchmarks/generator_scaling.py), run detached:
#
#   bash benchmarks/gpu/pipeline.sh start scaling [RUNS="A B" VAEM=3 ...]
#   bash benchmarks/gpu/pipeline.sh status scaling 600            # until the stage is done
#   bash benchmarks/gpu/pipeline.sh collect scaling returned/scaling
#
# 1. three VAEs side by side, VAEM minutes each (resumable):
#      cur17    d 256, 4 + 4 layers, KL 1e-3 (the VAE of the earlier bases), MP-20 val+test
#               minus the 1,000 held-out test crystals (17,093)
#      cur9     the same on MP-20 val only (9,047)
#      paper17  Park & Walsh 2025: d 512, 8 + 8 layers, KL 1e-5, weights 1/1/10/10, 17k data
# 2. four LDMs side by side, LDMM minutes each (bf16, batch 512, lr 3e-4 constant after 500
#    warm-up steps, EMA 0.999), each saving EMA snapshots at log-spaced steps:
#      A  DiT 8 x 384 on cur17, 17k data        B  DiT-B 12 x 768 on cur17, 17k data
#      C  DiT 8 x 384 on cur9, 9k data          D  DiT 8 x 384 on paper17, 17k data
# 3. NEVAL evaluation workers screen the snapshots as they appear (2,000 samples, DDIM 50,
#    eta 1, CHGNet single points, MP-20 formation hull, novelty against MP-20 val + test).
# Every training run keeps its full state (state_*.pt): the same command continues it. The last
# EMA checkpoint of each LDM run (sc/ldm_<run>_last.pt) is listed in $D/EXPORT.
#
# Environment: DATA_DIR (MP-20 CSVs, default ../shared/data/mp20), WHEELS (a folder of wheels to
# install into $D/site first, optional), D (work folder, default out/scaling), VAEM, LDMM, NEVAL,
# RUNS (which LDM runs, default "A B C D"), SNAPS (EMA snapshot steps, comma-separated), EXTRA_VAES (VAEs trained for their reconstruction
# alone, e.g. paper17).
set -o pipefail
PIPELINE=scaling
source benchmarks/gpu/lib.sh
DATA_DIR=${DATA_DIR:-../shared/data/mp20}
VAEM=${VAEM:-3}
LDMM=${LDMM:-11}
NEVAL=${NEVAL:-3}
SC=$D/sc
mkdir -p $SC

stage install
install_site xtalforge.data.mp20 chgnet.model pymatgen.analysis.phase_diagram smact

GS="python3 $D/code/benchmarks/generator_scaling.py"
COMMON="--out $SC --data-dir $DATA_DIR --device ${DEVICE:-cuda}"
# the evaluation workers start now: they parse MP-20 and compute the CHGNet potentials while
# the VAEs train
rm -f $SC/TRAINING_DONE
for w in $(seq 0 $(( NEVAL - 1 ))); do
  $GS eval $COMMON --workers 3 --n-jobs 3 --watch --worker $w --n-workers $NEVAL > $SC/eval_$w.log 2>&1 &
  EVALS="$EVALS $!"
  sleep 60  # the first worker writes the potentials cache; the others read it
done &

stage vae
# RUNS picks the LDM runs (default all four); only the VAEs they need are trained
RUNS=${RUNS:-A B C D}
declare -A VAE_OF=([A]=cur17 [B]=cur17 [C]=cur9 [D]=paper17)
declare -A DIT_OF=([A]=8x384 [B]=12x768 [C]=8x384 [D]=8x384)
declare -A DATA_OF=([A]=17k [B]=17k [C]=9k [D]=17k)
declare -A KIND_OF=([cur17]=current [cur9]=current [paper17]=paper)
declare -A VDATA_OF=([cur17]=17k [cur9]=9k [paper17]=17k)
VAES=$( (for r in $RUNS; do echo ${VAE_OF[$r]}; done; for t in $EXTRA_VAES; do echo $t; done) | sort -u)
PIDS=""
for t in $VAES; do
  $GS vae $COMMON --tag $t --vae ${KIND_OF[$t]} --data ${VDATA_OF[$t]} --minutes $VAEM --tf32 > $SC/vae_$t.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS
for t in $VAES; do [ -f $SC/vae_$t.pt ] || { stage failed-vae-$t; exit 13; }; done
grep -h reconstruction_heldout $SC/vae.jsonl | python3 -c "import sys,json; [print('vae', r['tag'], r['steps'], 'steps, held-out reconstruction', r['reconstruction_heldout']) for r in map(json.loads, sys.stdin)]"

stage ldm
SNAPS=${SNAPS:-250,500,1000,2000,4000,8000,16000,32000,64000}
PIDS=""
for r in $RUNS; do
  $GS ldm $COMMON --tag $r --vae-from $SC/vae_${VAE_OF[$r]}.pt --dit ${DIT_OF[$r]} --data ${DATA_OF[$r]} --minutes $LDMM --snapshots $SNAPS --tf32 > $SC/ldm_$r.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS
for r in $RUNS; do export_ckpt $SC/ldm_${r}_last.pt; done
touch $SC/TRAINING_DONE
stage eval-tail
while pgrep -f "generator_scaling.py eval" > /dev/null; do sleep 5; done
stage done
echo "== total $(( $(date +%s) - T0 ))s"
