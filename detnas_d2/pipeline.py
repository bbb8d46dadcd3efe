"""Running pipeline steps as the commands a user would type (tools/run_pipeline.py, tools/study.py,
tools/rank_audit.py standalone).

A step is one training or search command (`python -m detnas_d2.train_net` / `detnas_d2.search_net`, what
train_net.py / search_net.py of a checkout run) with its own output folder, run from the current folder
with the installed package, so also from a non-editable install. Its command line is kept in
<folder>/command.txt and its output in <folder>/stdout.txt; <folder>/step_done.json marks it finished. A
folder from an earlier run is emptied before the step runs again, or reused when asked (and the log says
which). Stopped (Ctrl-C, SIGTERM), a step passes the signal on to its command and waits for it
(detnas_d2.process); the command also dies with this process.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from .arch_io import load_arch_record
from .config_files import config_file
from .output_files import EVAL_RESULTS_FILE
from .process import STOP_GRACE_S, start_child, stop_processes, stop_signal_of

TRAIN = "detnas_d2.train_net"  # the modules a step runs (python -m)
SEARCH = "detnas_d2.search_net"
DONE_FILE = "step_done.json"
# Lines of a step's output shown on the terminal: Detectron2's "eta: ... iter: ..." lines and the search's
# "[generation g] candidate ... eta ..." and per-generation lines.
_PROGRESS = re.compile(r"\beta[: ]|^.*Generation \d+ done|Search done")

# --quick (tools/run_pipeline.py, tools/study.py): a few iterations per step, enough to pass every
# artifact along (not to learn anything). Keys: the step kinds.
_TRAIN_QUICK = ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "(3,)"]
QUICK_OVERRIDES = {
    "cls_supernet": _TRAIN_QUICK + ["DETNAS.SAMPLER.PROGRESSIVE_ITERS", "2"],
    "det_supernet": _TRAIN_QUICK,
    "search": [
        "DETNAS.SEARCH.POPULATION",
        "3",
        "DETNAS.SEARCH.GENERATIONS",
        "2",
        "DETNAS.SEARCH.TOPK",
        "2",
        "DETNAS.SEARCH.NUM_MUTATION",
        "1",
        "DETNAS.SEARCH.NUM_CROSSOVER",
        "1",
        "DETNAS.SEARCH.MAX_CANDIDATES",
        "6",
        "DETNAS.BN_RECALIB.IMAGES",
        "16",
        "DETNAS.SEARCH.EVAL_IMAGES",
        "8",
    ],
    "cls_subnet": _TRAIN_QUICK,
    "det_subnet": _TRAIN_QUICK,
    # Four iterations leave RetinaNet's scores near its prior (0.01), under the 0.05 test threshold:
    # every detection is kept, so that the evaluation has one to score.
    "eval": ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"],
}


def split_opts(chunks: Optional[List[str]]) -> List[str]:
    """Repeatable "KEY VALUE ..." command-line arguments (shell-quoted) as one KEY VALUE list."""
    return [token for chunk in chunks or [] for token in shlex.split(chunk)]


class StepFailed(RuntimeError):
    pass


class Step:
    """`module` (TRAIN or SEARCH) with `config` (a path, or one of the package's configs: config_file)
    and KEY VALUE `opts`, writing to `out_dir`; finished when `artifact` exists."""

    def __init__(
        self,
        name: str,
        title: str,
        module: str,
        config: str,
        out_dir: Path,
        opts: List[str],
        artifact: Path,
        eval_only: bool = False,
    ):
        self.name, self.title, self.module, self.config = name, title, module, config
        self.out_dir, self.opts, self.artifact, self.eval_only = (
            Path(out_dir),
            opts,
            Path(artifact),
            eval_only,
        )

    def command(self, num_gpus: int, resume: bool = False) -> List[str]:
        # The config's real path: the same file from any folder gives the same command (reuse compares it).
        cmd = [
            sys.executable,
            "-m",
            self.module,
            "--config-file",
            os.path.realpath(config_file(self.config)),
            "--num-gpus",
            str(num_gpus),
        ]
        if self.eval_only:
            cmd.append("--eval-only")
        if resume:  # a flag: before the KEY VALUE options, which take the rest of the command line
            cmd.append("--resume")
        return cmd + [str(o) for o in self.opts] + ["OUTPUT_DIR", str(self.out_dir)]

    def finished(self) -> Optional[dict]:
        done = self.out_dir / DONE_FILE
        return json.loads(done.read_text()) if done.exists() and self.artifact.exists() else None

    def run(
        self, num_gpus: int = 1, reuse: bool = False, log: Callable[[str], None] = print
    ) -> float:
        """Run the step; returns its seconds. Raises StepFailed. With `reuse`, a step that finished with
        this command is kept, and one that was stopped with this command continues (`--resume`: training
        and search end as an uninterrupted run would); otherwise its folder is emptied first."""
        cmd = self.command(num_gpus)
        command_file = self.out_dir / "command.txt"
        same = command_file.exists() and command_file.read_text() == " ".join(cmd) + "\n"
        previous = self.finished()
        if reuse and same and previous:
            log(f"[{self.name}] reusing {self.out_dir} (finished {previous['finished']})")
            return previous["seconds"]
        resume = reuse and same and not self.eval_only and previous is None
        if self.out_dir.exists() and not resume:
            log(f"[{self.name}] removing the previous output in {self.out_dir}")
            shutil.rmtree(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        command_file.write_text(" ".join(cmd) + "\n")
        if resume:
            cmd = self.command(num_gpus, resume=True)
            log(
                f"[{self.name}] {self.title}: continuing the stopped run in {self.out_dir}\n  $ {' '.join(cmd)}"
            )
        else:
            log(f"[{self.name}] {self.title}\n  $ {' '.join(cmd)}")
        start = time.time()
        returncode = self._run_logged(cmd, log, append=resume)
        if returncode != 0 or not self.artifact.exists():
            tail = (self.out_dir / "stdout.txt").read_text().splitlines()[-25:]
            raise StepFailed(
                f"[{self.name}] failed (exit {returncode}, expected {self.artifact}); the outputs "
                f"of earlier steps are kept.\nLast lines of {self.out_dir / 'stdout.txt'}:\n"
                + "\n".join(tail)
            )
        seconds = time.time() - start
        (self.out_dir / DONE_FILE).write_text(
            json.dumps(
                {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1)}
            )
        )
        log(f"[{self.name}] done in {seconds:.0f}s")
        return seconds

    def _run_logged(self, cmd: List[str], log: Callable[[str], None], append: bool = False) -> int:
        """Run `cmd` with its output in <folder>/stdout.txt (added to it with `append`); its progress lines
        (Detectron2's ETA lines, the search's per-candidate lines) also go to `log`, so a running step shows
        it is alive. Interrupted (Ctrl-C, or any error here), the command gets the signal (SIGTERM for an
        error) and STOP_GRACE_S seconds to stop (its launcher stops its workers) before re-raising."""
        with open(self.out_dir / "stdout.txt", "a" if append else "w") as f:
            proc = start_child(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                for line in proc.stdout:
                    f.write(line)
                    if _PROGRESS.search(line):
                        log(f"  [{self.name}] {line.split(']: ', 1)[-1].strip()}")
                return proc.wait()
            except BaseException as error:
                stop_processes([proc], STOP_GRACE_S, stop_signal_of(error))
                raise

    def metric(self):
        """(name, value) of the step's headline metric: best search score, top-1 or bbox AP."""
        if self.module == SEARCH:
            return "best score", load_arch_record(str(self.artifact)).metadata.get("score")
        results = json.loads((self.out_dir / EVAL_RESULTS_FILE).read_text())
        if "classification" in results:
            return "top-1", results["classification"]["top1"]
        return "bbox AP", results["bbox"]["AP"]
