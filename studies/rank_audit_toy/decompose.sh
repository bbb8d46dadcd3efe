#!/usr/bin/env bash
# Where does the stand-alone seed noise come from: step 4 (the classifier a detector starts from) or step 5?
# The converged pilot's all-3x3 classifiers (run.sh converged) are kept fixed and step 5 is run again with
# other seeds: seeds 1-3 of step 5 on classifier seed 0, and seed 0 on classifier seed 1; then step 5 from
# scratch (no classifier: MODEL.WEIGHTS "") with seeds 0 and 1.
#
#   bash studies/rank_audit_toy/decompose.sh     # resumes; prints and writes decompose.md
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
HERE=studies/rank_audit_toy
PILOT=output/rank_audit_toy/standalone_converged/a00000000000000000000
RUNS=output/rank_audit_toy/decompose
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

for pair in "0 1" "0 2" "0 3" "1 0" "none 0" "none 1"; do
  read -r cls det <<<"$pair"
  out=$RUNS/cls${cls}_det${det}
  [ -f "$out/eval_results.json" ] && continue
  weights=""
  [ "$cls" = none ] || weights=$PILOT/seed$cls/cls_subnet/model_final.pth
  "$PY" train_net.py --config-file configs/Toy/det_subnet.yaml --resume MODEL.DETNAS.ARCH "$PILOT/arch.yaml" \
    MODEL.WEIGHTS "$weights" SOLVER.LR_SCHEDULER_NAME WarmupCosineLR \
    SEED "$det" OUTPUT_DIR "$out" > "$RUNS.cls${cls}_det${det}.log" 2>&1
done

"$PY" - "$PILOT" "$RUNS" > "$HERE/decompose.md" <<'PYEOF'
import json, sys
from pathlib import Path
pilot, runs = Path(sys.argv[1]), Path(sys.argv[2])
cells = {(c, c): pilot / f"seed{c}/det_subnet" for c in (0, 1)}  # the pilot's own runs: same seed in both steps
cells.update({(c, d): runs / f"cls{c}_det{d}" for c, d in ((0, 1), (0, 2), (0, 3), (1, 0), ("none", 0), ("none", 1))})
print("## all-3x3, converged pilot protocol: bbox AP by step-4 seed (classifier) and step-5 seed\n")
print("| step-4 seed (none: step 5 from scratch) | step-5 seed | bbox AP |\n|---|---|---|")
for (c, d), path in sorted(cells.items(), key=str):
    print(f"| {c} | {d} | {json.loads((path / 'eval_results.json').read_text())['bbox']['AP']:.2f} |")
PYEOF
cat "$HERE/decompose.md"
