"""The subnet detector as a Detectron2 LazyConfig (configs/LazyConfigs/): the same model as the yacs configs
(same modules and outputs, same training losses), checkpoints exchanged both ways with the yacs trainer,
and Detectron2's LazyConfig loop (tools/lazyconfig_train_net.py) training and evaluating it on the toy
data."""

import json
import os

import detnas_d2  # noqa: F401  (registers the datasets, applies the compat shims)

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from detnas_d2.checkpoint import DetNASCheckpointer
from detnas_d2.config import get_detnas_cfg
from detnas_d2.config_files import config_file
from detnas_d2.engine import DetNASTrainer
from detnas_d2.lazy_train_net import do_train, load_lazy_config
from detnas_d2.lazy_train_net import main as lazy_main
from detnas_d2.output_files import EVAL_RESULTS_FILE
from detnas_d2.train_net import main as yacs_main

# (LazyConfig, yacs config, official arch, yacs score threshold key, LazyConfig score threshold key)
DETECTORS = {
    "FPN": (
        "configs/LazyConfigs/subnet_small_FPN_1x.py",
        "configs/COCO-Detection/subnet_small_FPN_1x.yaml",
        "configs/archs/official/COCO_FPN_300M.yaml",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "model.roi_heads.box_predictor.test_score_thresh",
    ),
    "RetinaNet": (
        "configs/LazyConfigs/subnet_small_RetinaNet_1x.py",
        "configs/COCO-Detection/subnet_small_RetinaNet_1x.yaml",
        "configs/archs/official/COCO_RetinaNet_300M.yaml",
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        "model.test_score_thresh",
    ),
}


def _batch(height=320, width=448, classes=(3, 17), seed=0):
    """One random image with two boxes."""
    generator = torch.Generator().manual_seed(seed)
    instances = Instances((height, width))
    boxes = torch.tensor([[0.05, 0.1, 0.45, 0.8], [0.35, 0.12, 0.9, 0.95]]) * torch.tensor(
        [width, height] * 2
    )
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.tensor(classes)
    image = torch.rand(3, height, width, generator=generator) * 255
    return [{"image": image, "instances": instances, "height": height, "width": width}]


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_lazyconfig_model_is_the_yacs_model(detector):
    """Same state-dict keys and shapes; with the yacs model's random weights, the same detections (score
    threshold 0, so that a random model has some) and, seeded alike, the same training losses."""
    lazy_config, yacs_config, official_arch, yacs_thresh, lazy_thresh = DETECTORS[detector]
    cfg = get_detnas_cfg(
        config_file(yacs_config),
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.DETNAS.ARCH",
            config_file(official_arch),
            yacs_thresh,
            "0.0",
        ],
    )
    lazy = load_lazy_config(lazy_config, [f"{lazy_thresh}=0.0"])
    assert os.path.samefile(lazy.model.backbone.bottom_up.arch, config_file(official_arch))
    torch.manual_seed(0)
    yacs_model = build_model(cfg)
    lazy_model = instantiate(lazy.model)
    yacs_state, lazy_state = yacs_model.state_dict(), lazy_model.state_dict()
    assert list(lazy_state) == list(yacs_state)
    assert all(lazy_state[k].shape == v.shape for k, v in yacs_state.items())
    lazy_model.load_state_dict(yacs_state, strict=True)

    batch = _batch()
    with torch.no_grad():
        yacs_out = yacs_model.eval()(batch)[0]["instances"]
        lazy_out = lazy_model.eval()(batch)[0]["instances"]
    assert len(yacs_out) > 0
    assert torch.equal(yacs_out.pred_classes, lazy_out.pred_classes)
    assert torch.allclose(yacs_out.scores, lazy_out.scores)
    assert torch.allclose(yacs_out.pred_boxes.tensor, lazy_out.pred_boxes.tensor)

    losses = []
    for model in (yacs_model.train(), lazy_model.train()):
        torch.manual_seed(1)
        with EventStorage():
            losses.append({k: v.item() for k, v in model(batch).items()})
    assert losses[0].keys() == losses[1].keys() and len(losses[0]) >= 2
    for key, value in losses[0].items():
        assert losses[1][key] == pytest.approx(value, rel=1e-6), key


def _predictions(output_dir):
    """The detections COCOEvaluator wrote into <output_dir>/inference, in a fixed order."""
    found = json.loads((output_dir / "inference" / "coco_instances_results.json").read_text())
    return sorted((d["image_id"], d["category_id"], d["score"], *d["bbox"]) for d in found)


def _same_detections(a, b):
    assert len(a) == len(b) > 0
    assert torch.allclose(
        torch.tensor([x[1:] for x in a]), torch.tensor([x[1:] for x in b]), atol=1e-4
    )
    assert [x[0] for x in a] == [x[0] for x in b]


class _Args:
    """The command line of train_net.py / tools/lazyconfig_train_net.py, as parse_args returns it."""

    def __init__(self, config, opts, eval_only=False):
        self.config_file, self.opts = config_file(config), list(opts)
        self.eval_only, self.resume = eval_only, False
        self.num_gpus, self.num_machines, self.machine_rank = 1, 1, 0


def test_lazy_and_yacs_training_share_checkpoints(tmp_path):
    """The yacs trainer's checkpoint starts a LazyConfig training (no key missing or left over), whose
    checkpoint the yacs train_net.py evaluates with the LazyConfig loop's numbers; and the LazyConfig
    loop evaluates the yacs checkpoint with the yacs trainer's numbers (toy data, score threshold 0)."""
    # two yacs iterations of the toy subnet detector, evaluated at the end
    yacs_dir = tmp_path / "yacs"
    cfg = get_detnas_cfg(
        config_file("configs/Toy/det_subnet.yaml"),
        [
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(yacs_dir),
        ],
    )
    trainer = DetNASTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    yacs_final = yacs_dir / "model_final.pth"
    yacs_results = json.loads((yacs_dir / EVAL_RESULTS_FILE).read_text())

    # the LazyConfig loop from it: every tensor of the file, and only those, fill the model
    lazy_dir = tmp_path / "lazy"
    lazy = load_lazy_config(
        "configs/LazyConfigs/Toy/subnet_FPN.py",
        [
            f"train.output_dir={lazy_dir}",
            f"train.init_checkpoint={yacs_final}",
            "train.max_iter=2",
            "dataloader.train.total_batch_size=2",
            "lr_multiplier.warmup_length=0.0",
            "model.roi_heads.box_predictor.test_score_thresh=0.0",
        ],
    )
    yacs_weights = torch.load(yacs_final, map_location="cpu", weights_only=False)["model"]
    model = instantiate(lazy.model)
    assert set(yacs_weights) == set(model.state_dict())
    DetNASCheckpointer(model, allow_random_heads=False).load(str(yacs_final))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in yacs_weights.items())
    trainer = do_train(lazy)
    assert trainer.iter == 2  # iterations 0 and 1 ran
    lazy_final = lazy_dir / "model_final.pth"
    lazy_results = json.loads((lazy_dir / EVAL_RESULTS_FILE).read_text())
    assert set(lazy_results["bbox"]) >= {"AP", "AP50"}

    # its checkpoint in the yacs model: every key, and train_net.py's evaluation gives the same numbers
    lazy_weights = torch.load(lazy_final, map_location="cpu", weights_only=False)["model"]
    assert set(lazy_weights) == set(yacs_weights)
    # it trained
    assert not all(torch.equal(lazy_weights[k], yacs_weights[k]) for k in yacs_weights)
    results = yacs_main(
        _Args(
            "configs/Toy/det_subnet.yaml",
            [
                "MODEL.WEIGHTS",
                str(lazy_final),
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                "0.0",
                "OUTPUT_DIR",
                str(tmp_path / "yacs_eval"),
            ],
            eval_only=True,
        )
    )
    assert results["bbox"] == pytest.approx(lazy_results["bbox"], nan_ok=True)
    _same_detections(_predictions(tmp_path / "yacs_eval"), _predictions(lazy_dir))

    # the LazyConfig loop's --eval-only of the yacs checkpoint
    eval_dir = tmp_path / "lazy_eval"
    results = lazy_main(
        _Args(
            "configs/LazyConfigs/Toy/subnet_FPN.py",
            [
                f"train.output_dir={eval_dir}",
                f"train.init_checkpoint={yacs_final}",
                "model.roi_heads.box_predictor.test_score_thresh=0.0",
            ],
            eval_only=True,
        )
    )
    assert results["bbox"] == pytest.approx(yacs_results["bbox"], nan_ok=True)
    _same_detections(_predictions(eval_dir), _predictions(yacs_dir))
    written = json.loads((eval_dir / EVAL_RESULTS_FILE).read_text())
    assert written["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


def test_toy_retinanet_lazyconfig_is_the_toy_yacs_config():
    """The toy RetinaNet LazyConfig builds configs/Toy/det_subnet_retinanet.yaml's model."""
    cfg = get_detnas_cfg(
        config_file("configs/Toy/det_subnet_retinanet.yaml"), ["MODEL.DEVICE", "cpu"]
    )
    lazy = load_lazy_config("configs/LazyConfigs/Toy/subnet_RetinaNet.py")
    torch.manual_seed(0)
    yacs_model = build_model(cfg).eval()
    lazy_model = instantiate(lazy.model).eval()
    assert list(lazy_model.state_dict()) == list(yacs_model.state_dict())
    lazy_model.load_state_dict(yacs_model.state_dict(), strict=True)
    batch = _batch(128, 128, classes=(0, 4))
    losses = []
    for model in (yacs_model.train(), lazy_model.train()):
        torch.manual_seed(1)
        with EventStorage():
            losses.append({k: v.item() for k, v in model(batch).items()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert lazy.train.device == "cpu" and lazy.dataloader.train.dataset.names == "toy_det_train"
