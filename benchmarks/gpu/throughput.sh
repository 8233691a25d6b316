#!/bin/bash
# Campaign-round throughput on one GPU host (benchmarks/campaign_throughput.py and
# benchmarks/chgnet_profile.py), run detached:
#
#   bash benchmarks/gpu/pipeline.sh start throughput CKPT=path/to/generator.pt [N=10000 ...]
#   bash benchmarks/gpu/pipeline.sh status throughput 600
#   bash benchmarks/gpu/pipeline.sh collect throughput returned/throughput
#
# 1. round_sp     one round of N structures (default 10,000) from the trained generator CKPT
#                 (latent diffusion or Wyckoff transformer; random weights are refused):
#                 sample, decode, CHGNet single points, MP-20 hull, uniqueness / novelty / SMACT,
#                 store; the per-structure ASE way on BASELINE_N structures in the same run
# 2. profile      CHGNet single points batched at 256 and 1024, graph construction included,
#                 against the ASE loop (chgnet_profile.py) on STRUCTURES (a JSON(.gz) list of
#                 generated structures, e.g. a scaling evaluation's samples_*.json.gz)
# 2b. frechet    the Frechet cell-force loop alone (a few minutes, before the long round):
#                 FSTEPS FIRE steps (default 30) of NFRECHET generated structures (default 500,
#                 from STRUCTURES or MP-20 test crystals)
#                 with torch-sim's per-system loop and with relax_batched's batched matrix
#                 exponentials, same structures, same model (benchmarks/relax_frechet.py); only
#                 structures that screening evaluates (--valid-only: no atoms closer than 0.5 A)
# 3. round_relax  one round of NRELAX structures (default 1,000) relaxed with torch-sim batched
#                 FIRE (fmax 0.05 eV/A, <= 300 steps) against one ASE FIRE run per structure;
#                 CHGNet graphs are rebuilt at every step, in GRAPH_WORKERS processes (serial
#                 graph building, about 5 ms a cell, is what bounds a batched relaxation on a
#                 GPU); the log shows progress and the graph / model time split every minute
# 4. mace         MACE (MACE-MP-0 medium size) single points batched over torch_geometric
#                 batches, graphs built in-process and in GRAPH_WORKERS processes, against
#                 mace-torch's ASE calculator one structure at a time (benchmarks/screening.py),
#                 with the graph-building time per structure
# Each stage writes D/<stage>.json and is skipped when that file exists.
#
# Environment: CKPT (required), STRUCTURES, DATA_DIR (MP-20 CSVs, default ../shared/data/mp20), WHEELS,
# D (default out/throughput), N, NRELAX, BASELINE_N, RELAX_BASELINE_N, NFRECHET, FSTEPS,
# GRAPH_WORKERS, N_JOBS, SKIP (stages to leave out this time, e.g. SKIP="round_sp profile";
# a later start without them runs them).
set -o pipefail
PIPELINE=throughput
source benchmarks/gpu/lib.sh
: "${CKPT:?CKPT=path of a trained generator checkpoint}"
DATA_DIR=${DATA_DIR:-../shared/data/mp20}
N=${N:-10000}
NRELAX=${NRELAX:-1000}
BASELINE_N=${BASELINE_N:-200}
RELAX_BASELINE_N=${RELAX_BASELINE_N:-50}
GRAPH_WORKERS=${GRAPH_WORKERS:-8}
N_JOBS=${N_JOBS:-8}

stage install
install_site xtalforge.data.mp20 chgnet.model pymatgen.analysis.phase_diagram smact maggma.stores numexpr tables

# want STAGE: true unless STAGE is in SKIP or its result file exists already
want() { [[ " $SKIP " != *" $1 "* ]] && [ ! -f "$D/$2" ]; }

CT="python3 $D/code/benchmarks/campaign_throughput.py --checkpoint $CKPT --data-dir $DATA_DIR --device cuda"
stage round_sp
! want round_sp round_sp.json || $CT --n "$N" --batch-size 512 --graph-workers "$GRAPH_WORKERS" \
    --n-jobs "$N_JOBS" --baseline-n "$BASELINE_N" --out "$D/round_sp.json" > "$D/round_sp.log" 2>&1 \
    || { stage failed-round_sp; exit 13; }

stage profile
! want profile profile.json || python3 "$D/code/benchmarks/chgnet_profile.py" --device cuda --n 4096 \
    --batch-sizes 256 1024 --graph-workers "$GRAPH_WORKERS" ${STRUCTURES:+--structures "$STRUCTURES"} --out "$D/profile.json" \
    > "$D/profile.log" 2>&1 || stage failed-profile

stage frechet
! want frechet relax_frechet.json || python3 "$D/code/benchmarks/relax_frechet.py" --device cuda \
    --n "${NFRECHET:-500}" --steps "${FSTEPS:-30}" --graph-workers "$GRAPH_WORKERS" --valid-only \
    ${STRUCTURES:+--structures "$STRUCTURES"} --out "$D/relax_frechet.json" > "$D/relax_frechet.log" 2>&1 \
    || stage failed-frechet

stage round_relax
! want round_relax round_relax.json || $CT --n "$NRELAX" --relax --fmax 0.05 --steps 300 \
    --graph-workers "$GRAPH_WORKERS" --n-jobs "$N_JOBS" --baseline-n "$RELAX_BASELINE_N" --out "$D/round_relax.json" \
    > "$D/round_relax.log" 2>&1 || { stage failed-round_relax; exit 14; }

stage mace
! want mace mace.json || python3 "$D/code/benchmarks/screening.py" --device cuda --n 2048 \
    --n-ase 200 --batch-sizes 64 256 --graph-workers "$GRAPH_WORKERS" --out "$D/mace.json" \
    > "$D/mace.log" 2>&1 || stage failed-mace
stage done
echo "== total $(( $(date +%s) - T0 ))s"
