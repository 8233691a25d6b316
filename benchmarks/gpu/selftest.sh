#!/bin/bash
# A two-stage CPU pipeline that shows the shape every pipeline here follows (and checks
# pipeline.sh start / status / collect on any host):
#
#   bash benchmarks/gpu/pipeline.sh start selftest [SLEEP=2]
#   bash benchmarks/gpu/pipeline.sh status selftest 60
#   bash benchmarks/gpu/pipeline.sh collect selftest returned/selftest
#
# 1. make   write a tiny torch checkpoint (skipped when it exists) and list it in D/EXPORT
# 2. score  write D/score.json from it (skipped when it exists)
set -o pipefail
PIPELINE=selftest
source benchmarks/gpu/lib.sh
SLEEP=${SLEEP:-2}

stage make
if [ ! -f "$D/tiny.pt" ]; then
  sleep "$SLEEP"
  python3 -c "
import torch
torch.manual_seed(0)
torch.save({'net': {'w': torch.randn(4, 3), 'steps': torch.tensor(7)}, 'latent_mean': torch.zeros(3)}, '$D/tiny.pt')
print('make: step 1/1 wrote $D/tiny.pt')" > "$D/make.log" 2>&1 || { stage failed-make; exit 13; }
fi
export_ckpt "$D/tiny.pt"

stage score
if [ ! -f "$D/score.json" ]; then
  sleep "$SLEEP"
  python3 -c "
import json, torch
d = torch.load('$D/tiny.pt', weights_only=True)
json.dump({'norm': float(d['net']['w'].norm())}, open('$D/score.json', 'w'))
print('score: norm', round(float(d['net']['w'].norm()), 4))" > "$D/score.log" 2>&1 || { stage failed-score; exit 14; }
fi
stage done
echo "== total $(( $(date +%s) - T0 ))s"
