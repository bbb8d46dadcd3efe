#!/usr/bin/env bash
# Why does the supernet rank the 13 archs so poorly? Two sources besides the supernet's bias:
#   - its training: recipe (a)'s steps 1-2 trained again with other seeds (SEED and DETNAS.SAMPLER.SEED;
#     seed 0 is the shipped config), each supernet scoring the 13 archs (and its step-1 supernet their
#     top-1, as run.sh recipes does);
#   - its scoring: the search's protocol (64 images of toy_det_search) against 512 held-out images
#     (toy_det_search_large, whose first 64 are those).
# Each score file goes to supernet_noise/; the tau between two of them (rank_audit.py protocols) says how
# much of the ranking is training or scoring noise, and compare.md (against the paired ground truth) what
# each protocol, and the mean over supernet seeds, reaches.
#
#   bash studies/rank_audit_toy/supernet_noise.sh 0 1    # resumes; trains and scores the given seeds
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
HERE=studies/rank_audit_toy
OUT=$HERE/supernet_noise
RUNS=output/rank_audit_toy/supernet_noise
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT" "$RUNS"
[ $# -gt 0 ] || set -- 0 1

for s in "$@"; do
  cls=$RUNS/seed$s/cls_supernet det=$RUNS/seed$s/det_supernet
  seeds="SEED $s DETNAS.SAMPLER.SEED $s"
  # shellcheck disable=SC2086
  [ -f "$cls/model_final.pth" ] || "$PY" train_net.py --config-file configs/Toy/cls_supernet.yaml --resume \
    OUTPUT_DIR "$cls" $seeds
  "$PY" tools/rank_audit.py supernet --config-file configs/Toy/search_cls.yaml --archs "$HERE/archs.txt" \
    --protocol "a-seed$s-step1" --output "$OUT/a_seed${s}_step1.jsonl" MODEL.WEIGHTS "$cls/model_final.pth"
  # shellcheck disable=SC2086
  [ -f "$det/model_final.pth" ] || "$PY" train_net.py --config-file configs/Toy/det_supernet.yaml --resume \
    OUTPUT_DIR "$det" MODEL.WEIGHTS "$cls/model_final.pth" $seeds
  "$PY" tools/rank_audit.py supernet --archs "$HERE/archs.txt" --protocol "a-seed$s" \
    --output "$OUT/a_seed$s.jsonl" MODEL.WEIGHTS "$det/model_final.pth"
  "$PY" tools/rank_audit.py supernet --archs "$HERE/archs.txt" --protocol "a-seed$s-eval512" \
    --output "$OUT/a_seed${s}_eval512.jsonl" MODEL.WEIGHTS "$det/model_final.pth" \
    DETNAS.SEARCH.EVAL_DATASET toy_det_search_large
done
