"""Two CPU processes (detnas_d2.engine.launch, gloo) train the toy supernet detector with DDP."""

import importlib
import json
import os

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import add_detnas_config

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from detnas_d2.engine import DetNASTrainer, launch
from detnas_d2.engine.launch import create_ddp_model
from detnas_d2.modeling import find_supernet
from detnas_d2.user_errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ITER = 4


class RecordRank(HookBase):
    """Per iteration: the path, the loss (rank 0 sees the reduced losses), and the names of parameters
    off the path that hold a gradient after backward (DDP must leave them None)."""

    def __init__(self):
        self.paths, self.losses, self.off_path_grads = [], [], []

    def after_step(self):
        model = self.trainer.model
        supernet = find_supernet(model)
        self.paths.append(list(supernet.arch))
        active = {id(p) for m in supernet.active_modules() for p in m.parameters()}
        self.off_path_grads += [
            n for n, p in supernet.named_parameters() if id(p) not in active and p.grad is not None
        ]
        if comm.is_main_process():
            self.losses.append(self.trainer.storage.history("total_loss").latest())


def _train_worker(cfg, out_dir):
    trainer = DetNASTrainer(cfg)
    record = RecordRank()
    trainer.register_hooks([record])
    trainer.resume_or_load(resume=False)
    trainer.train()
    rank = comm.get_rank()
    torch.save(trainer.model.module.state_dict(), os.path.join(out_dir, f"weights{rank}.pth"))
    summary = {
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "ddp": isinstance(trainer.model, DistributedDataParallel),
        "find_unused": trainer.model.find_unused_parameters,
        "paths": record.paths,
        "losses": record.losses,
        "off_path_grads": record.off_path_grads,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(summary, f)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path of launch")
def test_two_cpu_processes_train_supernet_with_same_paths(tmp_path):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Toy", "det_supernet.yaml"))
    cfg.merge_from_list(
        [
            "OUTPUT_DIR",
            str(tmp_path / "train"),
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            str(NUM_ITER),
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.CHECKPOINT_PERIOD",
            "1000",
        ]
    )
    launch(
        _train_worker, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(cfg, str(tmp_path))
    )

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["local_rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["ddp"] and r["find_unused"] for r in ranks)
    assert ranks[0]["paths"] == ranks[1]["paths"] and len(ranks[0]["paths"]) == NUM_ITER
    assert len({tuple(p) for p in ranks[0]["paths"]}) == NUM_ITER  # a new path every iteration
    assert len(ranks[0]["losses"]) == NUM_ITER and all(
        torch.isfinite(torch.tensor(ranks[0]["losses"]))
    )
    assert ranks[0]["off_path_grads"] == [] and ranks[1]["off_path_grads"] == []

    # Parameters stay identical (BN running statistics are per rank: broadcast_buffers=False).
    weights = [torch.load(tmp_path / f"weights{r}.pth") for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if "running_" not in k)


def test_cuda_launch_resolves_auto_and_uses_nccl(monkeypatch):
    """Detectron2 v0.6's launch takes no "auto"; ours resolves it for CUDA too (checked without a GPU)."""
    launch_module = importlib.import_module(
        "detnas_d2.engine.launch"
    )  # the attribute is the function

    started = {}

    class Context:
        processes = []

        def join(self):
            return True

    def start_processes(fn, args, nprocs, join, daemon, start_method):
        started.update(fn=fn, args=args, nprocs=nprocs, join=join)
        return Context()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(launch_module.mp, "start_processes", start_processes)
    launch(print, 2, num_machines=1, machine_rank=0, dist_url="auto", args=("x",))
    (
        main_func,
        world_size,
        per_machine,
        machine_rank,
        dist_url,
        args,
        _,
        backend,
        launcher,
        messages,
    ) = started["args"]
    assert started["fn"] is launch_module._worker and started["nprocs"] == 2 and not started["join"]
    assert (main_func, world_size, per_machine, machine_rank, args) == (print, 2, 2, 0, ("x",))
    assert dist_url.startswith("tcp://127.0.0.1:") and backend == "nccl" and launcher == os.getpid()
    assert not os.path.exists(messages)  # the workers' message folder goes with the launch
    with pytest.raises(ValueError, match="one machine only"):
        launch(print, 2, num_machines=2, machine_rank=0, dist_url="auto")
    with pytest.raises(UserError, match="--num-gpus 3: this machine has 2 GPU"):
        launch(print, 3, dist_url="auto")


def test_create_ddp_model_single_process_is_identity():
    model = torch.nn.Linear(2, 2)
    assert create_ddp_model(model, find_unused_parameters=True) is model
