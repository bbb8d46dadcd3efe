#!/usr/bin/env python
"""Make tests/fixtures/mmrazor_parity.pt with MMRazor's and MMDetection's own code (run by hand, once).

The fixture holds no weights: every tensor is `tests/fixtures/parity_weights.seeded_tensor(seed, key,
shape)`, so it stores the keys and shapes of MMRazor's state dicts, the seed, and the reference outputs of
MMRazor's / MMDetection's modules on seeded inputs. tests/test_checkpoint_formats.py regenerates the same
state dicts, converts them with detnas_d2.checkpoint and runs detnas-d2 / Detectron2 on the same
inputs. Cases (small search space at full width, 64x64 inputs):

- ``classifier_subnet``: MMRazor 1.0.0 ``SearchableShuffleNetV2`` fixed to the arch of MMRazor's
  DETNAS_SUBNET.yaml (``fix_chosen`` per layer, as ``sub_model`` does) + ``layers.4`` (640->1024) + mmcls
  ``GlobalAveragePooling`` + ``LinearClsHead`` (10 classes): the four stage outputs, the 1024-channel
  output and the logits;
- ``classifier_supernet``: the same supernet unfixed, every layer set to one path: the same outputs;
- ``detector_subnet``: the fixed subnet (``out_indices (0,1,2,3)``, no last layer) + MMDetection 3.3.0 ``FPN``
  (BN, 256 channels, 5 outputs) + ``RPNHead`` + ``Shared4Conv1FCBBoxHead`` (BN, 80 classes), as in MMRazor's
  ``detnas_frcnn_shufflenet_subnet_coco_1x.py`` (SyncBN there; the same tensors and eval outputs): FPN
  outputs, RPN objectness and deltas per level, box-head class scores and deltas on seeded RoI features;
  plus the anchors of MMDetection's ``AnchorGenerator``, boxes encoded and decoded (with and without
  clipping to the image) by its ``DeltaXYWHBBoxCoder`` (RPN stds 1, R-CNN stds 0.1/0.1/0.2/0.2) and the RoI
  levels of ``SingleRoIExtractor.map_roi_levels``.

Side environment (their packages refuse this project's torch/mmcv pins, so everything --no-deps):

    python3 -m venv --system-site-packages /tmp/mmenv
    echo /path/to/detnas-d2/.venv/lib/python3.11/site-packages > /tmp/mmenv/lib/python3.11/site-packages/torch.pth
    /tmp/mmenv/bin/pip install --no-deps mmengine mmrazor==1.0.0 mmcv-lite==2.0.1 mmcls==1.0.0rc6 \\
        mmdet==3.3.0 addict yapf platformdirs termcolor rich markdown-it-py mdurl pygments shapely \\
        terminaltables opencv-python-headless
    /tmp/mmenv/bin/python tools/make_parity_fixtures.py

On torch 2.13, MMRazor's package `__init__` fails in its quantization code, mmcls's at `modelindex`, and
MMDetection's heads import the compiled `mmcv.ops`. So the packages below are imported without running
their `__init__` files (only the module files used here run) and `mmcv.ops` is a stand-in whose classes do
nothing: the RoIAlign of the RoI extractor is never called (the box head is fed RoI features directly).
"""

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_file(name, path):
    """The module of file `path` (tests/fixtures/parity_weights.py: plain torch, loaded by its path, as
    this tool runs in MMRazor's environment, where detnas-d2 is not installed)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parity_weights = _load_file(
    "parity_weights", os.path.join(ROOT, "tests", "fixtures", "parity_weights.py")
)
seeded_input, seeded_state_dict = parity_weights.seeded_input, parity_weights.seeded_state_dict

# Packages whose __init__ is skipped (their submodules import as usual).
SKIP_INIT = {
    "mmrazor",
    "mmrazor.models",
    "mmrazor.models.architectures",
    "mmrazor.models.architectures.ops",
    "mmrazor.models.architectures.backbones",
    "mmrazor.models.mutables",
    "mmrazor.models.mutables.mutable_module",
    "mmcls",
    "mmcls.models",
    "mmcls.models.utils",
    "mmcls.models.backbones",
    "mmcls.models.heads",
    "mmcls.models.necks",
    "mmdet",
    "mmdet.models",
    "mmdet.models.necks",
    "mmdet.models.dense_heads",
    "mmdet.models.roi_heads",
    "mmdet.models.roi_heads.bbox_heads",
    "mmdet.models.roi_heads.roi_extractors",
    "mmdet.models.losses",
}


class _EmptyPackageLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = list(spec.submodule_search_locations)
        module.__file__ = spec.origin
        return module

    def exec_module(self, module):
        pass


class _SkipInitFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in SKIP_INIT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec.loader = _EmptyPackageLoader()
        return spec


class _StandIn(types.ModuleType):
    """`mmcv.ops` without its compiled part: every name is a module class that accepts anything and has no
    forward (it must never run)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(
            name,
            (torch.nn.Module,),
            {"__init__": lambda self, *args, **kwargs: torch.nn.Module.__init__(self)},
        )
        setattr(self, name, cls)
        return cls


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


class _OpsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mmcv.ops" or name.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(name, _StandInLoader(), is_package=True)
        return None


def install_import_hooks():
    sys.meta_path.insert(0, _OpsFinder())
    sys.meta_path.insert(0, _SkipInitFinder())
    # mmcls.models.utils.__init__ is skipped: give the package the function MMRazor imports from it.
    from mmcls.models.utils.channel_shuffle import channel_shuffle

    sys.modules["mmcls.models.utils"].channel_shuffle = channel_shuffle
    # mmengine registries import every module of their package on first use ('locations'); the classes
    # used here are registered by importing their own files, so that import-all is switched off.
    import mmcls.registry
    import mmdet.registry
    import mmrazor.registry

    for package in (mmrazor.registry, mmcls.registry, mmdet.registry):
        for name in dir(package):
            registry = getattr(package, name)
            if hasattr(registry, "import_from_location"):
                registry._imported = True


# MMRazor's DetNAS subnet (configs/nas/mmdet/detnas/DETNAS_SUBNET.yaml of MMRazor 1.0.0).
DETNAS_SUBNET = [
    "shuffle_5x5",
    "shuffle_3x3",
    "shuffle_3x3",
    "shuffle_3x3",
    "shuffle_xception",
    "shuffle_3x3",
    "shuffle_xception",
    "shuffle_7x7",
    "shuffle_7x7",
    "shuffle_7x7",
    "shuffle_xception",
    "shuffle_xception",
    "shuffle_3x3",
    "shuffle_7x7",
    "shuffle_5x5",
    "shuffle_xception",
    "shuffle_7x7",
    "shuffle_7x7",
    "shuffle_7x7",
    "shuffle_5x5",
]
# A supernet path that uses every block in every stage.
SUPERNET_PATH = ["shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception"] * 5
CANDIDATES = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")
NORM = dict(type="BN")  # MMRazor's DetNAS configs use SyncBN: same tensors, same eval-mode outputs


def mmrazor_backbone(with_last_layer: bool, out_indices):
    # In this order (the other runs into an import cycle of mmrazor.models.mutables).
    import mmrazor.models.architectures.ops.shufflenet_series  # noqa: F401  (registers the blocks)
    import mmrazor.models.mutables.mutable_module.one_shot_mutable_module  # noqa: F401
    from mmrazor.models.architectures.backbones.searchable_shufflenet_v2 import (
        SearchableShuffleNetV2,
    )

    mutable = dict(
        type="OneShotMutableOP",
        candidates=dict(
            shuffle_3x3=dict(type="ShuffleBlock", kernel_size=3, norm_cfg=NORM),
            shuffle_5x5=dict(type="ShuffleBlock", kernel_size=5, norm_cfg=NORM),
            shuffle_7x7=dict(type="ShuffleBlock", kernel_size=7, norm_cfg=NORM),
            shuffle_xception=dict(type="ShuffleXception", norm_cfg=NORM),
        ),
    )
    arch_setting = [[64, 4, mutable], [160, 4, mutable], [320, 8, mutable], [640, 4, mutable]]
    return SearchableShuffleNetV2(
        arch_setting=arch_setting,
        widen_factor=1.0,
        out_indices=out_indices,
        with_last_layer=with_last_layer,
        norm_cfg=NORM,
    )


def mutables(backbone):
    from mmrazor.models.mutables.mutable_module.one_shot_mutable_module import OneShotMutableOP

    found = [m for m in backbone.modules() if isinstance(m, OneShotMutableOP)]
    assert len(found) == 20, len(found)
    return found


def fill(module, seed, prefix=""):
    """Seeded weights into `module` (keys as they appear in the checkpoint: `prefix` + module keys)."""
    own = module.state_dict()
    keys = [prefix + k for k in own]
    shapes = [list(v.shape) for v in own.values()]
    state = seeded_state_dict(seed, keys, shapes)
    module.load_state_dict({k[len(prefix) :]: v for k, v in state.items()}, strict=True)
    return keys, shapes


def classifier_case(seed, fixed: bool):
    import mmcls.models.losses.cross_entropy_loss  # noqa: F401  (LinearClsHead builds its loss)
    import mmcls.models.losses.label_smooth_loss  # noqa: F401
    from mmcls.models.heads.linear_head import LinearClsHead
    from mmcls.models.necks.gap import GlobalAveragePooling

    backbone = mmrazor_backbone(with_last_layer=True, out_indices=(0, 1, 2, 3, 4))
    arch = DETNAS_SUBNET if fixed else SUPERNET_PATH
    for mutable, name in zip(mutables(backbone), arch):
        if fixed:
            mutable.fix_chosen(name)
        else:
            mutable.current_choice = name
    neck = GlobalAveragePooling()
    head = LinearClsHead(num_classes=10, in_channels=1024)
    keys, shapes = fill(backbone, seed, "architecture.backbone.")
    head_keys, head_shapes = fill(head, seed, "architecture.head.")
    for m in (backbone, neck, head):
        m.eval()
    image = seeded_input(seed, "image", (1, 3, 64, 64))
    with torch.no_grad():
        feats = backbone(image)
        logits = head(neck(feats))
    outputs = {f"stage{i}": feats[i] for i in range(4)}
    outputs["last_conv"] = feats[4]
    outputs["logits"] = logits
    return dict(
        arch=list(arch),
        keys=keys + head_keys,
        shapes=shapes + head_shapes,
        outputs=outputs,
        num_classes=10,
        input="image",
        input_shape=[1, 3, 64, 64],
    )


def detector_case(seed):
    import mmdet.models.dense_heads.rpn_head as rpn_head_module
    import mmdet.models.losses.cross_entropy_loss  # noqa: F401
    import mmdet.models.losses.smooth_l1_loss  # noqa: F401
    import mmdet.models.task_modules  # noqa: F401  (anchor generator, box coders)
    from mmdet.models.necks.fpn import FPN
    from mmdet.models.roi_heads.bbox_heads.convfc_bbox_head import Shared4Conv1FCBBoxHead
    from mmdet.models.roi_heads.roi_extractors.single_level_roi_extractor import SingleRoIExtractor
    from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import DeltaXYWHBBoxCoder
    from mmdet.models.task_modules.prior_generators.anchor_generator import AnchorGenerator

    backbone = mmrazor_backbone(with_last_layer=False, out_indices=(0, 1, 2, 3))
    for mutable, name in zip(mutables(backbone), DETNAS_SUBNET):
        mutable.fix_chosen(name)
    neck = FPN(in_channels=[64, 160, 320, 640], out_channels=256, num_outs=5, norm_cfg=NORM)
    anchor_cfg = dict(
        type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
    )
    rpn = rpn_head_module.RPNHead(
        in_channels=256,
        feat_channels=256,
        anchor_generator=anchor_cfg,
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    )
    rcnn_stds = [0.1, 0.1, 0.2, 0.2]
    bbox_head = Shared4Conv1FCBBoxHead(
        in_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        norm_cfg=NORM,
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=rcnn_stds),
        reg_class_agnostic=False,
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    )
    keys, shapes = [], []
    for module, prefix in (
        (backbone, "architecture.backbone."),
        (neck, "architecture.neck."),
        (rpn, "architecture.rpn_head."),
        (bbox_head, "architecture.roi_head.bbox_head."),
    ):
        k, s = fill(module, seed, prefix)
        keys += k
        shapes += s
        module.eval()

    image = seeded_input(seed, "image", (1, 3, 64, 64))
    roi_feats = seeded_input(seed, "roi_feats", (4, 256, 7, 7))
    with torch.no_grad():
        feats = neck(backbone(image))
        cls_scores, bbox_preds = rpn(feats)
        box_cls, box_reg = bbox_head(roi_feats)
    outputs = {f"fpn{i}": f for i, f in enumerate(feats)}
    outputs.update({f"rpn_cls{i}": c for i, c in enumerate(cls_scores)})
    outputs.update({f"rpn_reg{i}": r for i, r in enumerate(bbox_preds)})
    outputs["box_cls"] = box_cls
    outputs["box_reg"] = box_reg

    # Anchors, box coding and RoI levels: MMDetection's own classes, on seeded boxes.
    generator = AnchorGenerator(**{k: v for k, v in anchor_cfg.items() if k != "type"})
    sizes = [tuple(f.shape[-2:]) for f in feats]
    for i, anchors in enumerate(generator.grid_priors(sizes, device="cpu")):
        outputs[f"anchors{i}"] = anchors
    centers = seeded_input(seed, "box_centers", (32, 2)).abs() * 300 + 50
    extents = seeded_input(seed, "box_sizes", (32, 2)).abs() * 200 + 4
    boxes = torch.cat([centers - extents / 2, centers + extents / 2], dim=1)
    deltas = seeded_input(seed, "deltas", (32, 4))
    shifts = seeded_input(seed, "box_shifts", (32, 4))
    target_centers = centers + shifts[:, :2] * extents * 0.2
    target_extents = extents * torch.exp(shifts[:, 2:] * 0.3)
    targets = torch.cat(
        [target_centers - target_extents / 2, target_centers + target_extents / 2], dim=1
    )
    max_shape = (600, 800)
    for name, stds in (("rpn", [1.0] * 4), ("rcnn", rcnn_stds)):
        coder = DeltaXYWHBBoxCoder(target_means=[0.0] * 4, target_stds=stds)
        outputs[f"decoded_{name}"] = coder.decode(boxes, deltas)
        outputs[f"decoded_clipped_{name}"] = coder.decode(boxes, deltas, max_shape=max_shape)
        outputs[f"encoded_{name}"] = coder.encode(boxes, targets)
    extractor = SingleRoIExtractor(
        roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
        out_channels=256,
        featmap_strides=[4, 8, 16, 32],
    )
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    outputs["roi_levels"] = extractor.map_roi_levels(rois, 4)
    outputs["boxes"] = boxes
    outputs["targets"] = targets
    return dict(
        arch=list(DETNAS_SUBNET),
        keys=keys,
        shapes=shapes,
        outputs=outputs,
        num_classes=80,
        input="image",
        input_shape=[1, 3, 64, 64],
        roi_feats_shape=[4, 256, 7, 7],
        max_shape=list(max_shape),
        rpn_stds=[1.0] * 4,
        rcnn_stds=rcnn_stds,
    )


def versions():
    from importlib.metadata import version

    names = ("mmrazor", "mmcls", "mmdet", "mmcv-lite", "mmengine")
    return dict({name: version(name) for name in names}, torch=str(torch.__version__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "tests", "fixtures", "mmrazor_parity.pt")
    )
    args = parser.parse_args()
    install_import_hooks()
    torch.manual_seed(0)
    fixture = {
        "seed": args.seed,
        "made_with": versions(),
        "cases": {
            "classifier_subnet": classifier_case(args.seed, fixed=True),
            "classifier_supernet": classifier_case(args.seed, fixed=False),
            "detector_subnet": detector_case(args.seed),
        },
    }
    torch.save(fixture, args.output)
    size = os.path.getsize(args.output)
    print(f"wrote {args.output} ({size / 1e6:.2f} MB): {fixture['made_with']}")
    for name, case in fixture["cases"].items():
        print(f"  {name}: {len(case['keys'])} tensors, outputs {sorted(case['outputs'])}")


if __name__ == "__main__":
    main()
