"""Multi-process launch and DDP wrapping that also work without CUDA.

`launch` defers to `detectron2.engine.launch` (NCCL, one process per GPU) when CUDA is available. On a
CPU-only machine it starts `num_gpus_per_machine` processes itself with the gloo backend, so
`--num-gpus 2` runs two CPU processes (Detectron2 v0.6 asserts CUDA there).
"""
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["launch", "create_ddp_model", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_local_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Run `main_func(*args)` in `num_gpus_per_machine` processes on each of `num_machines` machines.

    Same arguments as `detectron2.engine.launch`; `dist_url="auto"` picks a free port on 127.0.0.1
    (single machine only).
    """
    if torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url 'auto' only works on one machine; give tcp://<host of rank 0>:<port>")
        dist_url = _free_local_url()
    logging.getLogger(__name__).info(
        f"No CUDA: starting {num_gpus_per_machine} CPU processes (gloo) on machine {machine_rank} "
        f"of {num_machines}, {dist_url}"
    )
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout):
    global_rank = machine_rank * num_per_machine + local_rank
    # Share the cores instead of every process using all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
    )
    # Ranks on the same machine, as detectron2.engine.launch sets it up (comm.get_local_rank etc.).
    assert comm._LOCAL_PROCESS_GROUP is None
    for machine in range(world_size // num_per_machine):
        group = dist.new_group(list(range(machine * num_per_machine, (machine + 1) * num_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


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
