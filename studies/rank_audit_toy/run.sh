#!/usr/bin/env bash
# Issue 17's ranking study at toy scale: does each supernet recipe rank archs as stand-alone training does?
#
#   bash studies/rank_audit_toy/run.sh standalone        # ground truth: steps 4-5 per arch and seed
#   bash studies/rank_audit_toy/run.sh recipes a b c     # steps 1-2 per recipe, then its supernet scores
#   bash studies/rank_audit_toy/run.sh compare           # the figures, once both parts are done
#
# Each recipe also scores the archs' top-1 on its step-1 classification supernet (step1_top1_<r>.jsonl):
# does step 1 learn over paths other than its reference? Every part resumes: run the same command again after a stop and it continues where it was (training
# with --resume, the score files skip what they hold). Trainings run on one thread each, so the two
# parts can run side by side on a 2-core machine. Results (small files) go to studies/rank_audit_toy/,
# training folders to output/rank_audit_toy/ (not committed).
#
# Recipes (steps 1-2 of configs/Toy, the same 4,000 + 2,500 iterations):
#   a  the shipped one: progressive warm-up toward the fixed reference arch (all shuffle_3x3)
#   b  no warm-up: every layer random from the first iteration (SPOS, DetNAS)
#   c  rotating warm-up: the same warm-up, but its fixed layers take a new random arch in each phase
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
HERE=studies/rank_audit_toy
RUNS=output/rank_audit_toy
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"

archs() {
  [ -f "$HERE/archs.txt" ] || "$PY" tools/rank_audit.py sample --num 12 --seed 0 \
    --include 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0 --output "$HERE/archs.txt"
}

recipe_opts() {
  case "$1" in
    a) echo "" ;;
    b) echo "DETNAS.SAMPLER.PROGRESSIVE_ITERS 0" ;;
    c) echo "DETNAS.SAMPLER.PROGRESSIVE_REFERENCE rotating" ;;
    *) echo "unknown recipe '$1' (a, b or c)" >&2; exit 2 ;;
  esac
}

recipe() {
  local r=$1 opts
  opts=$(recipe_opts "$r")
  local cls=$RUNS/recipe_$r/cls_supernet det=$RUNS/recipe_$r/det_supernet
  # shellcheck disable=SC2086
  [ -f "$cls/model_final.pth" ] || "$PY" train_net.py --config-file configs/Toy/cls_supernet.yaml --resume \
    OUTPUT_DIR "$cls" $opts
  # Step 1's own check: top-1 of each arch's path (BN recalibrated) on the classification supernet.
  "$PY" tools/rank_audit.py supernet --config-file configs/Toy/search_cls.yaml --archs "$HERE/archs.txt" \
    --protocol "recipe-$r-step1" --output "$HERE/step1_top1_$r.jsonl" MODEL.WEIGHTS "$cls/model_final.pth"
  [ -f "$det/model_final.pth" ] || "$PY" train_net.py --config-file configs/Toy/det_supernet.yaml --resume \
    OUTPUT_DIR "$det" MODEL.WEIGHTS "$cls/model_final.pth"
  "$PY" tools/rank_audit.py supernet --archs "$HERE/archs.txt" --protocol "recipe-$r" \
    --output "$HERE/supernet_$r.jsonl" MODEL.WEIGHTS "$det/model_final.pth"
}

case "${1:-}" in
  standalone)
    archs
    # Seed 0 of every arch first: a partial file already ranks all archs.
    for seeds in 0 "0 1"; do
      # shellcheck disable=SC2086
      "$PY" tools/rank_audit.py standalone --archs "$HERE/archs.txt" --seeds $seeds --jobs 1 --threads 1 \
        --work-dir "$RUNS/standalone" --output "$HERE/standalone.jsonl"
    done ;;
  recipes)
    archs
    shift
    for r in "${@:-a b c}"; do recipe "$r"; done ;;
  compare)
    sup=()
    # the detection supernets, and each step-1 supernet's top-1 as a predictor of detection AP
    for f in "$HERE"/supernet_*.jsonl "$HERE"/step1_top1_*.jsonl; do [ -f "$f" ] && sup+=(--supernet "$f"); done
    "$PY" tools/rank_audit.py compare "${sup[@]}" --standalone "$HERE/standalone.jsonl" --output-dir "$HERE" ;;
  *)
    sed -n '2,16p' "$0"; exit 2 ;;
esac
