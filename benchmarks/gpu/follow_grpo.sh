#!/bin/bash
# Follow the detached pipeline of benchmarks/gpu/grpo_runs.sh for up to $1 seconds (default 560),
# then copy its logs and results to $OUT (default ./returned); once it is done, the
# best de novo policy too (fp16, in 16 MB parts: cat best_fp16.pt.part* > best_fp16.pt).
OUT=${OUT:-returned}; mkdir -p "$OUT"
LIMIT=${1:-560}
source benchmarks/gpu/lib.sh
wait_stage "$LIMIT"
for R in r_dng r_nodiv r_dng_pre r_div02 r_clip3; do
  L=$D/$R/log.txt
  [ -f $L ] && { echo "--- $R"; grep "^\[" $L | awk 'NR%10==1' | cut -c1-300; grep "^\[" $L | tail -2 | cut -c1-600; grep -vE "^\[|CHGNet v0" $L | grep -E "eval |model |^base|^dng|kept|stop|Error|error" | tail -8 | cut -c1-900; }
done
[ -f $D/grpo_update.log ] && { echo "--- grpo_update"; tail -6 $D/grpo_update.log; }
[ -f $D/best_label ] && cat $D/best_label
tar czf $OUT/logs.tgz $D/pipeline.log $D/STAGE $D/grpo_update.log $D/best_label $D/r_*/log.txt $D/r_*/results.json 2>/dev/null
if [ "$(cat $D/STAGE 2>/dev/null)" = done ] && [ -f $D/best_fp16.pt ]; then
  (cd $D && sha256sum best_fp16.pt && split -b 16000000 -d best_fp16.pt $OUT/best_fp16.pt.part)
fi
ls -la $OUT
