#!/bin/bash
# Follow benchmarks/gpu/scaling.sh for up to $1 seconds (default 540), print its progress and
# copy results to $OUT (or ./returned when OUT is unset): scaling.tgz with every JSONL and log;
# SHIP="A B" adds those runs' last EMA checkpoints as fp16 in 16 MB parts
# (cat ldm_A_fp16.pt.part* > ldm_A_fp16.pt) with their sha256; SAMPLES="A_4000 ..." adds those
# snapshots' samples to the archive.
LIMIT=${1:-540}
source benchmarks/gpu/lib.sh  # D=out/dev and wait_stage
SC=$D/sc
OUT=${OUT:-returned}
mkdir -p $OUT
wait_stage "$LIMIT"
for f in $SC/ldm_*.log $SC/vae_*.log; do [ -f $f ] && { echo "--- $f"; grep -E "step [0-9]+/" $f | tail -1 | cut -c1-200; grep -iE "error|Traceback" $f | tail -3; }; done
for f in $SC/eval_*.log; do [ -f $f ] && { echo "--- $f"; grep -E "eval |Error|Traceback" $f | tail -12 | cut -c1-220; }; done
EXTRA=""; for s in $SAMPLES; do [ -f $SC/samples_$s.json.gz ] && EXTRA="$EXTRA $SC/samples_$s.json.gz"; done
tar czf $OUT/scaling.tgz $D/pipeline.log $SC/*.jsonl $SC/*.log $SC/mu_*.json $EXTRA 2>/dev/null
for tag in $SHIP; do
  f=$SC/ldm_${tag}_last.pt
  [ -f $f ] || continue
  PYTHONPATH=$D/code python3 - "$f" "$SC/ldm_${tag}_fp16.pt" <<'PY'
import sys, torch
d = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
for part in ("vae", "ldm"):
    d[part] = {k: (v.half() if v.is_floating_point() and k not in ("latent_mean", "latent_std")
                   else v) for k, v in d[part].items()}
torch.save(d, sys.argv[2])
PY
  (cd $SC && sha256sum ldm_${tag}_fp16.pt ldm_${tag}_last.pt | tee -a $OUT/sha256.txt && split -b 16000000 -d ldm_${tag}_fp16.pt $OUT/ldm_${tag}_fp16.pt.part)
done
ls -la $OUT
