"""Multi-process launch and DDP wrapping that also work without CUDA.

`launch` starts `num_gpus_per_machine` processes itself, as `detectron2.engine.launch` does: NCCL, one
process per GPU, with CUDA; gloo CPU processes without it (Detectron2 v0.6 asserts CUDA there), so
`--num-gpus 2` runs two CPU processes. On top of Detectron2's launch:

- `dist_url="auto"` picks a free port on 127.0.0.1 (one machine only), also with CUDA (v0.6 lacks it), so
  two multi-process runs on one machine do not collide on a fixed port;
- stopping the launcher stops its workers (detnas_d2.process). SIGINT / SIGTERM (Ctrl-C, `kill`,
  `timeout`, SLURM's requeue or cancel) are forwarded to the workers, which get `STOP_GRACE_S` seconds
  before SIGKILL; the launcher then dies of the same signal. If the launcher dies without that (`kill -9`,
  OOM killer), each worker follows it (`exit_with_parent`). A worker that fails still stops the others
  (torch's ProcessContext.join);
- a worker stopped by a user error (detnas_d2.user_errors) exits with status 2 and leaves its message to
  the launcher, which prints each different message once (an error every process meets, such as a
  diverging loss, is one line, not one per process) and exits with status 2 without a traceback.
"""

import logging
import os
import shutil
import signal
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..process import (
    STOP_GRACE_S,
    Stopped,
    exit_with_parent,
    raising_stop_signals,
    resend_signal,
    stop_processes,
)
from ..user_errors import USER_ERROR_EXIT, UserError, print_user_error, reporting_user_errors

__all__ = ["launch", "create_ddp_model", "resolve_dist_url", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

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
            raise UserError(
                f"--dist-url {dist_url or 'auto'} works on one machine only; with {num_machines} machines give "
                "tcp://<host of machine rank 0>:<port> (under SLURM's srun it is set for you)"
            )
        return _free_local_url()
    return dist_url


def launch(
    main_func,
    num_gpus_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
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
        raise UserError(
            f"--num-gpus {num_gpus_per_machine}: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    backend = "nccl" if use_cuda else "gloo"
    logger.info(
        f"Starting {num_gpus_per_machine} {'GPU' if use_cuda else 'CPU'} processes ({backend}) on machine "
        f"{machine_rank} of {num_machines}, {dist_url}"
    )
    messages = tempfile.mkdtemp(prefix="detnas_user_errors_")  # the workers' user errors
    try:
        context = mp.start_processes(
            _worker,
            nprocs=num_gpus_per_machine,
            args=(
                main_func,
                world_size,
                num_gpus_per_machine,
                machine_rank,
                dist_url,
                args,
                timeout,
                backend,
                os.getpid(),
                messages,
            ),
            daemon=False,
            join=False,
            start_method="spawn",
        )
        _join_forwarding_signals(context, messages)
    finally:
        shutil.rmtree(messages, ignore_errors=True)


def _join_forwarding_signals(context, messages: str):
    """Join the workers; on SIGINT/SIGTERM forward it to them, stop them, and die of it. A worker's
    user error ends the launcher with the same exit status, each different message of the workers' (in
    folder `messages`, a file per rank) printed once."""
    received = None
    user_error = False
    try:
        with raising_stop_signals():
            while not context.join():
                pass
    except Stopped as stop:
        received = stop.signum
    except mp.ProcessExitedException as e:
        if e.exit_code != USER_ERROR_EXIT:
            raise
        user_error = True
    finally:
        stop_processes(context.processes, STOP_GRACE_S, received)
    if user_error:
        for message in _worker_messages(messages):
            print_user_error(message)
        raise SystemExit(USER_ERROR_EXIT)
    if received is not None:
        logger.warning(f"Launcher received {signal.Signals(received).name}: workers stopped")
        # Die of the same signal (exit status 128 + signum), as without a handler; SIGINT under a handler
        # of the caller's (e.g. Python's default KeyboardInterrupt) goes to that handler instead.
        resend_signal(received)


def _worker_messages(messages: str):
    """The workers' user-error messages in rank order, each different one once."""
    found = []
    for name in sorted((n for n in os.listdir(messages) if n.isdigit()), key=int):
        with open(os.path.join(messages, name)) as f:
            text = f.read()
        if text not in found:
            found.append(text)
    return found


def _worker(
    local_rank,
    main_func,
    world_size,
    num_per_machine,
    machine_rank,
    dist_url,
    args,
    timeout,
    backend,
    launcher_pid,
    messages,
):
    exit_with_parent(launcher_pid)
    global_rank = machine_rank * num_per_machine + local_rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:  # share the cores instead of every process using all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _create_local_process_group(world_size, num_per_machine, machine_rank)
    # As Detectron2's launch: synchronize now, to prevent a possible timeout after init_process_group.
    comm.synchronize()

    def report(message: str):  # to the launcher, which prints each different message once
        path = os.path.join(messages, str(global_rank))
        with open(path + ".tmp", "w") as f:
            f.write(message)
        os.replace(path + ".tmp", path)

    try:
        with reporting_user_errors(report=report):
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
        group = dist.new_group(
            list(range(machine * num_per_machine, (machine + 1) * num_per_machine))
        )
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
