"""Multi-process launch and DDP wrapping that also work without CUDA.

`launch` starts `num_gpus_per_machine` processes itself, as `detectron2.engine.launch` does: NCCL, one
process per GPU, with CUDA; gloo CPU processes without it (Detectron2 v0.6 asserts CUDA there), so
`--num-gpus 2` runs two CPU processes. On top of Detectron2's launch:

- `dist_url="auto"` picks a free port on 127.0.0.1 (one machine only), also with CUDA (v0.6 lacks it), so
  two multi-process runs on one machine do not collide on a fixed port;
- stopping the launcher stops its workers. SIGINT / SIGTERM (Ctrl-C, `kill`, `timeout`, SLURM's requeue or
  cancel) are forwarded to the workers, which get `WORKER_STOP_GRACE_S` seconds before SIGKILL; the
  launcher then dies of the same signal. If the launcher dies without that (`kill -9`, OOM killer), each
  worker follows it: on Linux the kernel sends it SIGKILL (prctl PR_SET_PDEATHSIG), elsewhere a watchdog
  thread notices the new parent. A worker that fails still stops the others (torch's ProcessContext.join).
"""
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["launch", "create_ddp_model", "resolve_dist_url", "DEFAULT_TIMEOUT", "WORKER_STOP_GRACE_S"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
WORKER_STOP_GRACE_S = 10.0  # below SLURM's default KillWait (30 s) between SIGTERM and SIGKILL
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1

logger = logging.getLogger(__name__)


def _free_local_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def resolve_dist_url(dist_url, num_machines: int) -> str:
    """`dist_url` itself, or for "auto" (or None) on one machine a free port on 127.0.0.1.

    The port is free when chosen; rank 0 binds it moments later, when its process group starts.
    """
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError(
                f"--dist-url {dist_url or 'auto'} works on one machine only; with {num_machines} machines give "
                "tcp://<host of machine rank 0>:<port> (under SLURM's srun it is set for you)"
            )
        return _free_local_url()
    return dist_url


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Run `main_func(*args)` in `num_gpus_per_machine` processes on each of `num_machines` machines.

    Same arguments as `detectron2.engine.launch`; `dist_url` "auto" (or None) picks a free port on
    127.0.0.1 (one machine only).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    dist_url = resolve_dist_url(dist_url, num_machines)
    use_cuda = torch.cuda.is_available()
    if use_cuda and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(f"{num_gpus_per_machine} processes per machine, but {torch.cuda.device_count()} GPUs")
    backend = "nccl" if use_cuda else "gloo"
    logger.info(
        f"Starting {num_gpus_per_machine} {'GPU' if use_cuda else 'CPU'} processes ({backend}) on machine "
        f"{machine_rank} of {num_machines}, {dist_url}"
    )
    context = mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout, backend,
              os.getpid()),
        daemon=False,
        join=False,
        start_method="spawn",
    )
    _join_forwarding_signals(context)


class _LauncherSignal(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _join_forwarding_signals(context):
    """Join the workers; on SIGINT/SIGTERM forward it to them, stop them, and die of it."""

    def forward(signum, frame):
        for process in context.processes:
            _signal_process(process, signum)
        raise _LauncherSignal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _FORWARDED_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a background job: keep it
                previous[signum] = signal.signal(signum, forward)
    received = None
    try:
        while not context.join():
            pass
    except _LauncherSignal as stop:
        received = stop.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_processes(context.processes, WORKER_STOP_GRACE_S)
    if received is not None:
        logger.warning(f"Launcher received {signal.Signals(received).name}: workers stopped")
        sys.stdout.flush()
        sys.stderr.flush()
        # Die of the same signal (exit status 128 + signum), as without a handler; SIGINT under a handler
        # of the caller's (e.g. Python's default KeyboardInterrupt) goes to that handler instead.
        handler = previous.get(received, signal.SIG_DFL)
        if handler in (signal.SIG_DFL, None):
            signal.signal(received, signal.SIG_DFL)
            os.kill(os.getpid(), received)
        if received == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + received)


def _signal_process(process, signum):
    if process.pid is not None and process.exitcode is None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass


def _stop_processes(processes, grace_s):
    """Wait up to `grace_s` for `processes` to exit, then SIGKILL those still alive and reap them."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            logger.warning(f"Worker {process.pid} still running {grace_s:.0f} s after the stop: SIGKILL")
            process.kill()
        process.join()


def _exit_with_parent(parent_pid: int):
    """Make this process die when `parent_pid` (the launcher) does, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        except (OSError, AttributeError):
            _start_parent_watchdog(parent_pid)
    else:
        _start_parent_watchdog(parent_pid)
    if os.getppid() != parent_pid:  # the launcher died before the line above took effect
        os._exit(1)


def _start_parent_watchdog(parent_pid: int, period_s: float = 1.0):
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, name="detnas-parent-watchdog", daemon=True).start()


def _worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout, backend,
            launcher_pid):
    _exit_with_parent(launcher_pid)
    global_rank = machine_rank * num_per_machine + local_rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:  # share the cores instead of every process using all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _create_local_process_group(world_size, num_per_machine, machine_rank)
    # As Detectron2's launch: synchronize now, to prevent a possible timeout after init_process_group.
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _create_local_process_group(world_size, num_per_machine, machine_rank):
    """The ranks on this machine (comm.get_local_rank etc.), as Detectron2's launch sets them up."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after v0.6
        comm.create_local_process_group(num_per_machine)
        return
    assert comm._LOCAL_PROCESS_GROUP is None
    for machine in range(world_size // num_per_machine):
        group = dist.new_group(list(range(machine * num_per_machine, (machine + 1) * num_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def create_ddp_model(model, *, find_unused_parameters=False, fp16_compression=False, **kwargs):
    """`detectron2.engine.create_ddp_model` that also works on CPU (no `device_ids`) and takes
    `find_unused_parameters` (supernets: the blocks off the path get no gradient)."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = next(model.parameters()).is_cuda
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    ddp = DistributedDataParallel(model, find_unused_parameters=find_unused_parameters, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp
