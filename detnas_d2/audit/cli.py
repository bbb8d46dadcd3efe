"""Does the supernet rank archs as stand-alone training does? Score a set of archs both ways and compare.

    # 1. an arch set: K archs stratified over FLOPs inside the search's FLOPs band (or give your own)
    python tools/rank_audit.py sample --num 12 --seed 0 --output output/audit/archs.txt
    # 2. supernet scores, with the search's own scorer and settings (KEY VALUE options as in search_net.py)
    python tools/rank_audit.py supernet --archs output/audit/archs.txt --output output/audit/supernet.jsonl \\
        MODEL.WEIGHTS output/toy/2/model_final.pth
    # 2b. or zero-shot scores, with no supernet and no data (MAE-DET's entropy or Zen-NAS's Zen-score)
    python tools/rank_audit.py zeroshot --archs output/audit/archs.txt --scorer entropy \\
        --output output/audit/zero_shot_entropy.jsonl
    # 3. stand-alone scores: steps 4-5 of the pipeline for each arch and seed, 2 trainings at a time
    python tools/rank_audit.py standalone --archs output/audit/archs.txt --seeds 0 1 --jobs 2 \\
        --output output/audit/standalone.jsonl
    # 4. the figures: Kendall tau, Spearman rho, top-20% precision, seed noise, rank-by-FLOPs/params
    python tools/rank_audit.py compare --supernet output/audit/supernet.jsonl \\
        --standalone output/audit/standalone.jsonl --output-dir output/audit
    # a cheaper scoring protocol against a reference one (score files or searches' candidates.jsonl)
    python tools/rank_audit.py protocols --reference output/search_full/candidates.jsonl \\
        --cheap output/search_cheap/candidates.jsonl --topk 10

Arch sets (--archs, one or more): a text file with one arch per line (comma-separated block ids or
names, `#` comments), a YAML list of archs, a JSON-lines file with an "arch" per line (a search's
candidates.jsonl, or this tool's own output), a JSON list, one arch file (best_arch.yaml), or an inline arch
("0,1,2,...", "random:SEED").

Scores are JSON lines, one per scored arch (supernet) or per (arch, seed) (stand-alone), with the fields
arch (block ids), flops and params (the backbone's, at DETNAS.SEARCH.INPUT_SIZE of --config-file), score
(the task's headline metric: bbox AP), protocol (a label, --protocol), seed (the scoring seed, or the
training seed), seconds, images_recalib and images_eval (supernet: the image forwards), plus metadata:
kind, metric, settings (everything that fixes the score; a file only takes lines of one protocol and
settings), timings, top-1 of the stand-alone classifier, ...

Zero-shot scores are lines of the same form, kind "supernet" (compare and protocols read them as they read
supernet scores), with metric and protocol the scorer's name (zero_shot_entropy, zero_shot_zen),
images_recalib 0 and images_eval the random images forwarded.

The scoring parts resume: an arch (or (arch, seed)) with a line in the output is not scored again, so
stopping a run (Ctrl-C, kill) and starting it again ends with the same lines (timings aside), in the
order of the arch list. A line cut short by a kill is dropped on the next start. A stand-alone run that
was stopped halfway continues: a step that finished with the same command is kept, a training that was
stopped resumes from its last checkpoint (--resume, exact).
"""

import argparse
import sys

from ..file_io import atomic_write
from ..pipeline import split_opts
from ..user_errors import UserError, reporting_user_errors
from ..zero_shot import METHODS
from .archs import (
    DEFAULT_SEARCH_CONFIG,
    arch_str,
    flops_band,
    read_archs,
    sample_stratified,
    search_space_and_table,
)
from .compare import compare
from .console import log
from .protocols import compare_protocols
from .standalone import DEFAULT_CLS_CONFIG, DEFAULT_DET_CONFIG, score_standalone
from .supernet import score_supernet
from .zero_shot import score_zero_shot

__all__ = ["build_parser", "main"]


def _sample(*, config, num, seed, flops_min, flops_max, include, output):
    """K archs stratified over FLOPs (and those of --include first), written as an arch list."""
    cfg, space, table = search_space_and_table(config)
    lo, hi = flops_band(cfg, table, flops_min, flops_max)
    archs = sample_stratified(space, table, num, lo, hi, seed)
    extra = read_archs(include, space) if include else []
    archs = list(dict.fromkeys(extra + archs))
    input_size = int(cfg.DETNAS.SEARCH.INPUT_SIZE)
    lines = [
        f"# {len(archs)} archs of space {space.name} (width {space.width_mult}): "
        + (f"{len(extra)} given (--include), then " if extra else "")
        + f"{num} stratified over backbone FLOPs at {input_size}x{input_size} in "
        f"[{lo / 1e6:.3f}M, {hi / 1e6:.3f}M], seed {seed}",
        f"# python tools/rank_audit.py {' '.join(sys.argv[1:])}",
        f"# one arch per line: block ids ({space.describe_choices(0)})",
    ]
    lines += [
        f"{arch_str(a)}  # {table.flops(a) / 1e6:.3f} MFLOPs, {table.params(a) / 1e6:.4f} Mparams"
        for a in archs
    ]
    text = "\n".join(lines) + "\n"
    if output:
        atomic_write(output, text)
        log(f"{len(archs)} archs written to {output}")
    else:
        print(text, end="")


def _add_arch_scoring_arguments(p, config_help, archs_help):
    """The options of a part that scores archs one by one into a resumable score file."""
    p.add_argument("--config-file", dest="config", default=DEFAULT_SEARCH_CONFIG, help=config_help)
    p.add_argument("--archs", action="append", required=True, help=archs_help)
    p.add_argument(
        "--output", required=True, help="score file (JSON lines); its archs are not scored again"
    )
    p.add_argument("--limit", type=int, help="score at most this many new archs, then stop")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = (
        f"the search config: space, FLOPs input size (DETNAS.SEARCH.INPUT_SIZE) and FLOPs band "
        f"(default {DEFAULT_SEARCH_CONFIG})"
    )
    archs_help = "archs: a file (see above) or an inline arch; repeat to add more"

    # Each part's options are the keyword arguments of the function it runs (`run`).
    p = sub.add_parser(
        "sample", help="K archs stratified over FLOPs inside a band, written as an arch list"
    )
    p.set_defaults(run=_sample)
    p.add_argument("--config-file", dest="config", default=DEFAULT_SEARCH_CONFIG, help=config_help)
    p.add_argument(
        "--num", "-k", type=int, default=12, help="archs to sample, one per FLOPs stratum"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--flops-min", type=float, help="default: DETNAS.SEARCH.FLOPS_MIN (0: the space's min)"
    )
    p.add_argument(
        "--flops-max", type=float, help="default: DETNAS.SEARCH.FLOPS_MAX (0: the space's max)"
    )
    p.add_argument(
        "--include", action="append", help="archs to list first (e.g. a searched best_arch.yaml)"
    )
    p.add_argument("--output", help="arch list file (default: stdout)")

    p = sub.add_parser(
        "supernet",
        help="score archs on a supernet with the search's scorer (resumable)",
        description="Trailing KEY VALUE options go to the search config, as for search_net.py "
        "(MODEL.WEIGHTS, DETNAS.SEARCH.*, DETNAS.BN_RECALIB.*).",
    )
    p.set_defaults(run=score_supernet)
    _add_arch_scoring_arguments(p, "the search config (scoring protocol)", archs_help)
    p.add_argument(
        "--protocol", default="supernet", help="label of these scores (e.g. the supernet recipe)"
    )

    p = sub.add_parser(
        "zeroshot",
        help="score archs with a zero-shot proxy: no supernet, no data (resumable)",
        description="Trailing KEY VALUE options go to the search config (DETNAS.SEARCH.ZERO_SHOT.*, "
        "DETNAS.SEARCH.SEED, MODEL.DEVICE).",
    )
    p.set_defaults(run=score_zero_shot)
    _add_arch_scoring_arguments(p, config_help, archs_help)
    p.add_argument(
        "--scorer",
        dest="method",
        required=True,
        choices=METHODS,
        help="entropy: MAE-DET's multi-scale entropy; zen: Zen-NAS's Zen-score",
    )
    p.add_argument("--protocol", help="label of these scores (default: zero_shot_<scorer>)")

    p = sub.add_parser(
        "standalone", help="retrain archs as pipeline steps 4-5, several seeds (resumable)"
    )
    p.set_defaults(run=score_standalone)
    p.add_argument("--config-file", dest="config", default=DEFAULT_SEARCH_CONFIG, help=config_help)
    p.add_argument("--archs", action="append", required=True, help=archs_help)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (SEED) per arch"
    )
    p.add_argument(
        "--output",
        required=True,
        help="score file (JSON lines); its (arch, seed) are not run again",
    )
    p.add_argument("--work-dir", help="training folders (default: <output without .jsonl>_runs)")
    p.add_argument("--cls-config", default=DEFAULT_CLS_CONFIG, help="step 4 config")
    p.add_argument("--det-config", default=DEFAULT_DET_CONFIG, help="step 5 config")
    p.add_argument(
        "--opts", action="append", help='"KEY VALUE ..." options for both steps (repeatable)'
    )
    p.add_argument("--cls-opts", action="append", help='"KEY VALUE ..." options for step 4 only')
    p.add_argument("--det-opts", action="append", help='"KEY VALUE ..." options for step 5 only')
    p.add_argument("--quick", action="store_true", help="a few iterations per step (smoke test)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time (concurrent processes)")
    p.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS per training (default: the cores / --jobs, unless OMP_NUM_THREADS is set)",
    )
    p.add_argument("--num-gpus", type=int, default=1, help="--num-gpus of each training command")
    p.add_argument("--protocol", default="standalone", help="label of these scores")

    p = sub.add_parser(
        "compare", help="rank correlations, top-k precision, seed noise, table and plot"
    )
    p.set_defaults(run=compare)
    p.add_argument(
        "--supernet",
        action="append",
        required=True,
        help="supernet score file (repeat to compare several)",
    )
    p.add_argument("--standalone", required=True, help="stand-alone score file")
    p.add_argument(
        "--config-file",
        dest="config",
        default=DEFAULT_SEARCH_CONFIG,
        help="where the default FLOPs band is read",
    )
    p.add_argument(
        "--flops-min", type=float, help="band (default: DETNAS.SEARCH.FLOPS_MIN; 0: none)"
    )
    p.add_argument(
        "--flops-max", type=float, help="band (default: DETNAS.SEARCH.FLOPS_MAX; 0: none)"
    )
    p.add_argument("--top-fraction", type=float, default=0.2)
    p.add_argument(
        "--baseline",
        help="a supernet protocol label: every other one's tau minus its tau, with interval",
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--output-dir",
        help="compare.md, compare.json, compare.png (default: the stand-alone file's folder)",
    )

    p = sub.add_parser(
        "protocols", help="a cheaper scoring protocol against a reference: ranking, best, cost"
    )
    p.set_defaults(run=compare_protocols)
    p.add_argument(
        "--reference",
        required=True,
        help="score file or candidates.jsonl of the reference protocol",
    )
    p.add_argument(
        "--cheap", required=True, help="score file or candidates.jsonl of the cheaper protocol"
    )
    p.add_argument(
        "--topk", type=int, default=10, help="top-k overlap (default 10, the search's TOPK)"
    )
    p.add_argument("--output", help="the figures as JSON")
    return parser


def main(argv=None) -> int:
    """Run the part the command line names. Bad input (archs, files, options) ends it as one line on
    stderr and exit status 2 (detnas_d2.user_errors); a stand-alone run with a failed training ends
    with 1."""
    parser = build_parser()
    options = dict(vars(parser.parse_args(argv)))
    command, run = options.pop("command"), options.pop("run")
    with reporting_user_errors(f"{parser.prog} {command}"):
        if command == "standalone":
            if options["jobs"] < 1:
                raise UserError(
                    f"--jobs {options['jobs']}: give the trainings at a time, at least 1"
                )
            for key in ("opts", "cls_opts", "det_opts"):
                options[key] = split_opts(options[key])
        try:
            return run(**options) or 0
        except UserError:
            raise
        except ValueError as e:  # bad archs, files, options: the message, without a traceback
            raise UserError(str(e)) from None
        # Ctrl-C / SIGTERM: what finished is in the output, a new start resumes
        except KeyboardInterrupt:
            return 130
