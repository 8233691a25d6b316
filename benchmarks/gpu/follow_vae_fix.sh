#!/bin/bash
# Follow the detached pipeline of benchmarks/gpu/vae_fix_pipeline.sh for up to $1 seconds (default 560),
# then copy its logs and results to $OUT (default ./returned).
OUT=${OUT:-returned}; mkdir -p "$OUT"
LIMIT=${1:-560}
source benchmarks/gpu/lib.sh
wait_stage "$LIMIT"
for f in vae ldm dec0 dec0.25 dec0.5; do
  [ -f $D/$f.log ] && { echo "--- $f"; grep -E "step [0-9]+/|time budget|reconstruction|noise|sampling \{" $D/$f.log | tail -4 | cut -c1-600; }
done
[ -f $D/cmp.log ] && { echo "--- cmp"; grep -v "CHGNet v0" $D/cmp.log | grep -E "eval |model|base" | cut -c1-900 | tail -12; }
for R in dng dng_no_diversity bandgap; do
  L=$D/rl_$R/log.txt
  [ -f $L ] && { echo "--- rl $R"; grep "^\[" $L | awk 'NR%10==1' | cut -c1-420; grep "^\[" $L | tail -1 | cut -c1-420; grep -vE "^\[|CHGNet v0" $L | tail -8 | cut -c1-700; }
done
tar czf $OUT/logs.tgz $D/*.log $D/STAGE $D/best_decoder $D/*/metrics.json $D/*/history.json $D/*/results.json $D/rl_*/log.txt $D/pipeline.log 2>/dev/null
ls -la $OUT
