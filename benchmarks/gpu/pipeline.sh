#!/bin/bash
# Run a benchmark pipeline (benchmarks/gpu/NAME.sh) on a GPU host, detached and resumable.
# From the repository root:
#
#   bash benchmarks/gpu/pipeline.sh start NAME [VAR=value ...]
#       Start NAME.sh detached from the shell (setsid nohup), with the work folder D=out/NAME
#       (override with D=...) and its output appended to out/NAME/pipeline.log; VAR=value pairs
#       go into its environment (the knobs each pipeline documents in its header). Running
#       `start` again after the pipeline stopped or was killed resumes it: stages whose results
#       exist are skipped and training runs continue from their saved states. A second copy is
#       refused while one runs (out/NAME/pipeline.pid).
#   bash benchmarks/gpu/pipeline.sh status NAME [WAIT_SECONDS]
#       Wait up to WAIT_SECONDS (default 0) for the pipeline to finish or fail, then print its
#       stage history, the last line of each log in the work folder and the GPU utilisation.
#   bash benchmarks/gpu/pipeline.sh collect NAME DEST [--split-mb N]
#       Copy the work folder's logs and JSON/JSONL results into DEST/NAME.tar.gz; for every
#       checkpoint the pipeline listed in out/NAME/EXPORT, write an fp16 copy into DEST
#       (benchmarks/gpu/fp16_checkpoint.py) and the sha256 of both into DEST/sha256.txt.
#       --split-mb N splits every file in DEST larger than N MiB into parts FILE.part00, ...
#       (for transfer channels with a file-size limit); `cat FILE.part* > FILE` joins them.
#
# The pipelines record their stage in D/STAGE ("done" or "failed-..." at the end) and print
# "== stage at Ns" lines; benchmarks/gpu/selftest.sh is a two-stage CPU example.
set -u
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
CMD=$1 NAME=$2; shift 2
SCRIPT=benchmarks/gpu/$NAME.sh
[ -f "$SCRIPT" ] || { echo "no pipeline $SCRIPT (run from the repository root)" >&2; exit 2; }
D=${D:-out/$NAME}
PIDFILE=$D/pipeline.pid

running() {  # prints the pid of a running copy of this pipeline
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "$SCRIPT" \
    && echo "$pid"
}

case $CMD in
start)
  for kv in "$@"; do
    [[ $kv == [A-Za-z_]*=* ]] || { echo "not VAR=value: $kv" >&2; exit 2; }
    [[ $kv == D=* ]] && D=${kv#D=} && PIDFILE=$D/pipeline.pid
  done
  if pid=$(running); then echo "$NAME is running already (pid $pid, $D)" >&2; exit 1; fi
  mkdir -p "$D"
  echo "### start $(date -u +%FT%TZ) $*" >> "$D/pipeline.log"
  env "$@" D="$D" PIPELINE="$NAME" setsid nohup bash "$SCRIPT" >> "$D/pipeline.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  echo "started $NAME (pid $!), work folder $D, log $D/pipeline.log"
  ;;
status)
  PIPELINE=$NAME
  source benchmarks/gpu/lib.sh
  wait_stage "${1:-0}"
  if pid=$(running); then state="running (pid $pid)"; else state="not running"; fi
  echo "$NAME: stage $(cat "$D/STAGE" 2>/dev/null || echo none), $state"
  grep -E "^(== |### start)" "$D/pipeline.log" 2>/dev/null
  find "$D" -path "$D/code" -prune -o -path "$D/site" -prune -o \( -name "*.log" -o -name "log.txt" \) \
      -type f ! -name pipeline.log -print 2>/dev/null | sort | while read -r f; do
    last=$(tr '\r' '\n' < "$f" | grep -v '^[[:space:]]*$' | tail -1 | cut -c1-300)
    err=$(grep -E "Traceback|Error" "$f" | tail -1 | cut -c1-300)
    echo "--- ${f#"$D"/}: $last"
    [ -z "$err" ] || echo "    last error: $err"
  done
  command -v nvidia-smi > /dev/null && \
    nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total --format=csv,noheader
  ;;
collect)
  [ $# -ge 1 ] || usage
  DEST=$1; shift; SPLIT=""
  [ "${1:-}" = --split-mb ] && { SPLIT=${2:?--split-mb needs a size}; shift 2; }
  [ $# -eq 0 ] || usage
  [ -d "$D" ] || { echo "no work folder $D" >&2; exit 1; }
  mkdir -p "$DEST"
  find "$D" -path "$D/code" -prune -o -path "$D/site" -prune -o -type f \( -name "*.log" \
      -o -name "log.txt" -o -name "*.json" -o -name "*.jsonl" -o -name "*.json.gz" -o -name STAGE \
      -o -name EXPORT -o -name best_label \) -print0 | tar czf "$DEST/$NAME.tar.gz" --null -T -
  if [ -f "$D/EXPORT" ]; then
    while read -r p; do
      [ -n "$p" ] || continue
      [ -f "$p" ] || { echo "listed in EXPORT but missing: $p"; continue; }
      rel=${p#"$D"/}; out="$DEST/${rel//\//__}"; out="${out%.pt}_fp16.pt"
      PYTHONPATH=$PWD python3 benchmarks/gpu/fp16_checkpoint.py "$p" "$out" || { echo "fp16 failed: $p"; continue; }
      { sha256sum "$p"; (cd "$DEST" && sha256sum "${out##*/}"); } | tee -a "$DEST/sha256.txt"
    done < "$D/EXPORT"
  fi
  if [ -n "$SPLIT" ]; then
    BYTES=$(awk -v m="$SPLIT" 'BEGIN { printf "%d", m * 1048576 }')
    [ "$BYTES" -gt 0 ] || { echo "--split-mb needs a positive size" >&2; exit 2; }
    find "$DEST" -maxdepth 1 -type f ! -name "*.part[0-9]*" -size +"$BYTES"c | while read -r f; do
      split -b "$BYTES" -d "$f" "$f.part" && rm "$f" && echo "split $f: cat $f.part* > $f"
    done
  fi
  ls -la "$DEST"
  ;;
*) usage ;;
esac
