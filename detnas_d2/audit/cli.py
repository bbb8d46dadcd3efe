"""Does the supernet rank archs as stand-alone training does? Score a set of archs both ways and compare.

    # 1. an arch set: K archs stratified over FLOPs inside the search's FLOPs band (or give your own)
    python tools/rank_audit.py sample --num 12 --seed 0 --output output/audit/archs.txt
    # 2. supernet scores, with the search's own scorer and settings (KEY VALUE options as in search_net.py)
    python tools/rank_audit.py supernet --archs output/audit/archs.txt --output output/audit/supernet.jsonl \\
        MODEL.WEIGHTS output/toy/2/model_final.pth
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

Both scoring parts resume: an arch (or (arch, seed)) with a line in the output is not scored again, so
stopping a run (Ctrl-C, kill) and starting it again ends with the same lines (timings aside), in the
order of the arch list. A line cut short by a kill is dropped on the next start. A stand-alone run that
was stopped halfway continues: a step that finished with the same command is kept, a training that was
stopped resumes from its last checkpoint (--resume, exact).
"""

import argparse
import sys

from ..file_io import atomic_write
from ..pipeline import split_opts
from ..search_space import BLOCKS
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

__all__ = ["build_parser", "main"]


def _sample(args):
    """K archs stratified over FLOPs (and those of --include first), written as an arch list."""
    cfg, space, table = search_space_and_table(args.config_file)
    lo, hi = flops_band(cfg, table, args.flops_min, args.flops_max)
    archs = sample_stratified(space, table, args.num, lo, hi, args.seed)
    extra = read_archs(args.include, space) if args.include else []
    archs = list(dict.fromkeys(extra + archs))
    input_size = int(cfg.DETNAS.SEARCH.INPUT_SIZE)
    lines = [
        f"# {len(archs)} archs of space {space.name} (width {space.width_mult}): "
        + (f"{len(extra)} given (--include), then " if extra else "")
        + f"{args.num} stratified over backbone FLOPs at {input_size}x{input_size} in "
        f"[{lo / 1e6:.3f}M, {hi / 1e6:.3f}M], seed {args.seed}",
        f"# python tools/rank_audit.py {' '.join(sys.argv[1:])}",
        f"# one arch per line: block ids ({', '.join(f'{i} {b}' for i, b in enumerate(BLOCKS))})",
    ]
    lines += [
        f"{arch_str(a)}  # {table.flops(a) / 1e6:.3f} MFLOPs, {table.params(a) / 1e6:.4f} Mparams"
        for a in archs
    ]
    text = "\n".join(lines) + "\n"
    if args.output:
        atomic_write(args.output, text)
        log(f"{len(archs)} archs written to {args.output}")
    else:
        print(text, end="")


def _supernet(args):
    return score_supernet(
        config=args.config_file,
        opts=args.opts,
        archs=args.archs,
        output=args.output,
        protocol=args.protocol,
        limit=args.limit,
    )


def _standalone(args):
    return score_standalone(
        config=args.config_file,
        archs=args.archs,
        seeds=args.seeds,
        output=args.output,
        work_dir=args.work_dir,
        cls_config=args.cls_config,
        det_config=args.det_config,
        opts=args.opts,
        cls_opts=args.cls_opts,
        det_opts=args.det_opts,
        quick=args.quick,
        jobs=args.jobs,
        threads=args.threads,
        num_gpus=args.num_gpus,
        protocol=args.protocol,
    )


def _compare(args):
    return compare(
        supernet=args.supernet,
        standalone=args.standalone,
        config=args.config_file,
        flops_min=args.flops_min,
        flops_max=args.flops_max,
        top_fraction=args.top_fraction,
        baseline=args.baseline,
        bootstrap=args.bootstrap,
        seed=args.seed,
        output_dir=args.output_dir,
    )


def _protocols(args):
    return compare_protocols(
        reference=args.reference, cheap=args.cheap, topk=args.topk, output=args.output
    )


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

    p = sub.add_parser(
        "sample", help="K archs stratified over FLOPs inside a band, written as an arch list"
    )
    p.add_argument("--config-file", default=DEFAULT_SEARCH_CONFIG, help=config_help)
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
    p.add_argument(
        "--config-file", default=DEFAULT_SEARCH_CONFIG, help="the search config (scoring protocol)"
    )
    p.add_argument("--archs", action="append", required=True, help=archs_help)
    p.add_argument(
        "--output", required=True, help="score file (JSON lines); its archs are not scored again"
    )
    p.add_argument(
        "--protocol", default="supernet", help="label of these scores (e.g. the supernet recipe)"
    )
    p.add_argument("--limit", type=int, help="score at most this many new archs, then stop")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options")

    p = sub.add_parser(
        "standalone", help="retrain archs as pipeline steps 4-5, several seeds (resumable)"
    )
    p.add_argument("--config-file", default=DEFAULT_SEARCH_CONFIG, help=config_help)
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
    p.add_argument(
        "--supernet",
        action="append",
        required=True,
        help="supernet score file (repeat to compare several)",
    )
    p.add_argument("--standalone", required=True, help="stand-alone score file")
    p.add_argument(
        "--config-file", default=DEFAULT_SEARCH_CONFIG, help="where the default FLOPs band is read"
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
    args = build_parser().parse_args(argv)
    if args.command == "standalone":
        if args.jobs < 1:
            sys.exit(f"--jobs must be >= 1, got {args.jobs}")
        args.opts, args.cls_opts, args.det_opts = (
            split_opts(args.opts),
            split_opts(args.cls_opts),
            split_opts(args.det_opts),
        )
    commands = {
        "sample": _sample,
        "supernet": _supernet,
        "standalone": _standalone,
        "compare": _compare,
        "protocols": _protocols,
    }
    try:
        return commands[args.command](args) or 0
    except ValueError as e:  # bad archs, files, options: say what, without a traceback
        sys.exit(f"rank_audit {args.command}: {e}")
    except (
        KeyboardInterrupt
    ):  # Ctrl-C / SIGTERM: what finished is in the output, a new start resumes
        return 130
