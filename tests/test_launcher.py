"""The multi-process launcher as users run it (`train_net.py --num-gpus 2` on CPU, in a subprocess): stopping
the launcher stops every worker, a dying worker stops the others, and two runs on one machine do not collide.

Each case starts real processes (each imports torch and Detectron2): 20-60 s apiece on a busy 2-core machine.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 15

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        torch.cuda.is_available() or not Path("/proc/self/stat").exists(),
        reason="CPU launcher (gloo) test; finds processes through Linux's /proc",
    ),
]


def _train_cmd(out_dir, max_iter, *extra):
    return [
        sys.executable,
        str(REPO / "train_net.py"),
        "--num-gpus",
        "2",
        "--config-file",
        str(REPO / "configs" / "Toy" / "cls_supernet.yaml"),
        *extra,
        "OUTPUT_DIR",
        str(out_dir),
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "DATASETS.TEST",
        "()",
    ]


def _stat(pid):
    """(state, parent pid) of a process, None if it is gone or a zombie (dead, not yet reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def _descendants(pid):
    """Live processes below `pid` (workers, and their helpers), from /proc."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                children.setdefault(st[1], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_for(condition, timeout, what, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    detail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_training(tmp_path):
    """train_net.py as a background job of a script (`python train_net.py ... &`) or under nohup-like
    wrappers: SIGINT ignored, in the workers too. (torch's spawn makes workers get SIGINT when their parent
    dies, which such workers ignore: they used to keep training.)"""
    out = tmp_path / "out"
    log = tmp_path / "stdout.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            _train_cmd(out, 100000),
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigint,
        )
    # Workers exist and train: rank 0 started training (both ranks passed their start-up: they synchronized).
    _wait_for(
        lambda: len(_descendants(proc.pid)) >= 2 and "Starting training" in log.read_text(),
        240,
        "two workers training",
        proc,
        log,
    )
    return proc, log


def _assert_all_gone(pids, log):
    deadline = time.monotonic() + STOP_WITHIN_S
    while time.monotonic() < deadline and any(_stat(p) for p in pids):
        time.sleep(0.2)
    alive = [p for p in pids if _stat(p)]
    for p in alive:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not alive, (
        f"processes {alive} still running {STOP_WITHIN_S} s after the stop\n{log.read_text()[-2000:]}"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_launcher_stops_its_workers(tmp_path, signum):
    proc, log = _start_training(tmp_path)
    tree = _descendants(proc.pid)
    workers = [p for p in tree if _stat(p) and _stat(p)[1] == proc.pid]
    assert len(workers) >= 2, tree
    proc.send_signal(signum)
    # SIGTERM: the launcher forwards it, waits for the workers and dies of the same signal.
    assert proc.wait(timeout=STOP_WITHIN_S + 5) == -signum
    _assert_all_gone(tree, log)


# A launcher as train_net.py's (parse_args, then launch) whose workers only talk over gloo: start-up is
# one torch import per worker (they load launch.py and what it imports, not the whole package), so these
# cases take a fraction of a training run.
LIGHT_LAUNCHER = """
import os, sys, time, types

# detnas_d2 and detnas_d2.engine as bare packages of their folders (their __init__ not run): importing
# detnas_d2.engine.launch loads launch.py and detnas_d2/process.py only. Workers run this part too.
REPO = {repo!r}
for name in ("detnas_d2", "detnas_d2.engine"):
    package = sys.modules[name] = types.ModuleType(name)
    package.__path__ = [os.path.join(REPO, *name.split("."))]
from detnas_d2.engine import launch as launch_only


def main(out_dir, steps):
    import torch
    import torch.distributed as dist

    total = torch.ones(1) * (dist.get_rank() + 1)
    dist.all_reduce(total)
    assert total.item() == 3, total
    open(os.path.join(out_dir, "started%d" % dist.get_rank()), "w").close()
    if os.environ.get("USER_ERROR"):  # every worker meets the same user error at once
        from detnas_d2.user_errors import UserError

        raise UserError(os.environ["USER_ERROR"])
    for _ in range(steps):  # steps < 0: until stopped
        dist.all_reduce(torch.ones(1))
        time.sleep(0.05)
        steps -= 2 if steps < 0 else 0
    open(os.path.join(out_dir, "done%d" % dist.get_rank()), "w").write(os.environ.get("RUN", ""))


if __name__ == "__main__":
    from detnas_d2.engine.command_line import parse_args  # the launcher's command line, as train_net.py's

    args = parse_args(["--num-gpus", "2"], env={{}})
    print("dist_url", args.dist_url, flush=True)
    launch_only.launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                       dist_url=args.dist_url, args=(sys.argv[1], int(sys.argv[2])))
"""


def _start_light(tmp_path, name, steps, **env):
    script = tmp_path / "light_launcher.py"
    script.write_text(LIGHT_LAUNCHER.format(repo=str(REPO)))
    out = tmp_path / name
    out.mkdir()
    log = tmp_path / f"{name}.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out), str(steps)],
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, RUN=name, **env),
        )
    return proc, out, log


def test_a_user_error_every_worker_meets_is_one_line(tmp_path):
    proc, out, log = _start_light(tmp_path, "run", 0, USER_ERROR="the same problem, and its fix")
    assert proc.wait(timeout=180) == 2, log.read_text()[-3000:]
    text = log.read_text()
    assert (out / "started0").exists() and (out / "started1").exists()
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert errors == ["light_launcher.py: error: the same problem, and its fix"], text[-3000:]
    assert "Traceback" not in text


def test_a_dying_worker_stops_the_other(tmp_path):
    proc, out, log = _start_light(tmp_path, "run", -1)
    _wait_for(
        lambda: (out / "started0").exists() and (out / "started1").exists(),
        180,
        "two workers",
        proc,
        log,
    )
    tree = _descendants(proc.pid)
    workers = [
        p for p in tree if _stat(p) and _stat(p)[1] == proc.pid and not _is_resource_tracker(p)
    ]
    assert len(workers) == 2, tree
    os.kill(workers[1], signal.SIGKILL)
    assert proc.wait(timeout=60) != 0  # torch's join stops the survivor, then the launcher fails
    _assert_all_gone(tree, log)


def _is_resource_tracker(pid):
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_two_runs_on_one_machine_both_finish(tmp_path):
    """Default --dist-url: each run picks its own free port (with a fixed default port the second run
    failed with EADDRINUSE, or its workers joined the first run's rendezvous)."""
    runs = [_start_light(tmp_path, name, 20) for name in ("a", "b")]
    try:
        for proc, out, log in runs:
            assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        for proc, _, _ in runs:
            for p in _descendants(proc.pid):
                os.kill(p, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
    for proc, out, log in runs:
        assert "dist_url auto" in log.read_text()
        assert [(out / f"done{r}").read_text() for r in (0, 1)] == [
            out.name
        ] * 2  # each run's own workers
