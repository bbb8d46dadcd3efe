#!/usr/bin/env python
"""Is the stand-alone ground truth noisy because of training, or because toy_det_val (80 images) is small?

Evaluates every finished stand-alone detector of a score file again on another dataset (default
toy_det_search_large: 512 held-out images no step trains on) with train_net.py --eval-only, and writes the
same records with that bbox AP as their score (protocol "standalone-<dataset>"), so that
`tools/rank_audit.py compare --standalone <output>` measures the ground truth's reliability on it.
Resumes: runs already in the output are skipped.

    python studies/rank_audit_toy/reevaluate.py [--dataset toy_det_search_large]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from detnas_d2.audit.scores import append_score, read_scores

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scores", default=str(HERE / "standalone.jsonl"))
    parser.add_argument("--dataset", default="toy_det_search_large")
    parser.add_argument("--output", help="default: standalone_<dataset>.jsonl beside --scores")
    args = parser.parse_args()
    output = Path(args.output or Path(args.scores).with_name(f"standalone_{args.dataset}.jsonl"))
    done = {(tuple(r["arch"]), r["seed"]) for r in read_scores(output, repair=True)}
    records = read_scores(Path(args.scores))
    for i, r in enumerate(records, start=1):
        if (tuple(r["arch"]), r["seed"]) in done:
            continue
        run = ROOT / r["run_dir"]
        out_dir = run / f"eval_{args.dataset}"
        cmd = [
            sys.executable,
            str(ROOT / "train_net.py"),
            "--config-file",
            str(ROOT / r["settings"]["det_config"]),
            "--eval-only",
            "MODEL.DETNAS.ARCH",
            str(run.parent / "arch.yaml"),
            "MODEL.WEIGHTS",
            str(run / "det_subnet/model_final.pth"),
            "DATASETS.TEST",
            f"('{args.dataset}',)",
            "OUTPUT_DIR",
            str(out_dir),
        ]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            sys.exit(f"evaluation of {run} failed:\n{proc.stderr[-3000:]}")
        bbox = json.loads((out_dir / "eval_results.json").read_text())["bbox"]
        record = {
            **r,
            "score": bbox["AP"],
            "AP50": bbox["AP50"],
            "protocol": f"standalone-{args.dataset}",
            "seconds_eval": round(time.time() - start, 1),
        }
        append_score(output, record)
        print(
            f"[{i}/{len(records)}] {r['arch_str']} seed {r['seed']}: bbox AP {r['score']:.2f} on the "
            f"stand-alone val set, {bbox['AP']:.2f} on {args.dataset}",
            flush=True,
        )


if __name__ == "__main__":
    main()
