"""Checkpoint hand-off between the steps of the pipeline.

`DetNASCheckpointer` is Detectron2's `DetectionCheckpointer` that finds the ShuffleNetV2 backbone in a
checkpoint of another model form and moves it to where the model keeps its backbone:

- step 1 -> 2 and 4 -> 5: a DetNASClassifier checkpoint (`backbone.*`, `head.*`) into a detector
  (`backbone.bottom_up.*` for FPN models, `backbone.*` for a plain backbone); `head.*` is dropped;
- search -> retrain: a supernet checkpoint (classifier or detector) into a subnet model: the subnet takes
  the chosen path's blocks (`subnet_state_dict_from_supernet`), detector parts of the same name too.

The mapping is logged as a table, keys that have no place in the model are listed as dropped. A
checkpoint of another space or width, a subnet checkpoint for a supernet, or a subnet of another arch
raises ValueError naming the mismatch. Checkpoints of the same model form (resume, eval) load unchanged.
"""
import io
import os
from collections import Counter
from typing import Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _strip_prefix_if_present
from tabulate import tabulate

from .file_io import atomic_write
from .modeling.backbone import ShuffleNetV2Supernet, find_detnas_backbone, subnet_state_dict_from_supernet
from .search_space import arch_to_str

__all__ = ["DetNASCheckpointer"]

_STEM_KEY = "stem.conv.weight"


def _group(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth]) + ".*"


def _describe(backbone) -> str:
    space = backbone.space
    kind = "supernet" if isinstance(backbone, ShuffleNetV2Supernet) else f"subnet {arch_to_str(backbone.arch)}"
    return f"space '{space.name}' (width {space.width_mult}, {space.num_layers} layers), {kind}"


def _is_supernet_state(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("layers.") and k.split(".")[2:3] == ["choices"] for k in state)


class DetNASCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that hands a ShuffleNetV2 backbone over between model forms (module doc)."""

    _filename = "checkpoint"  # the file being loaded, for messages

    def save(self, name: str, **kwargs):
        """fvcore's `save`, written atomically: a run killed while saving leaves the previous checkpoint
        and `last_checkpoint` intact, never a truncated file."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        buffer = io.BytesIO()
        torch.save(data, buffer)
        atomic_write(path, buffer.getvalue())
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _load_file(self, filename):
        self._filename = filename
        try:
            return super()._load_file(filename)
        except Exception as e:  # a truncated or foreign file fails anywhere inside the unpickler
            raise RuntimeError(f"{filename} cannot be read as a checkpoint ({type(e).__name__}: {e}).{self._fallback_hint(filename)}") from e

    def _fallback_hint(self, filename: str) -> str:
        """For a file of this run's folder: how to resume from the checkpoint before it."""
        if not self.save_dir or os.path.dirname(os.path.abspath(filename)) != os.path.abspath(self.save_dir):
            return ""
        others = sorted(
            f for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and f != os.path.basename(filename) and f != "model_final.pth"
        )
        if not others:
            return " No other checkpoint is in its folder: start again without --resume."
        return (
            f" To resume from the checkpoint before it, write its name (e.g. '{others[-1]}') into "
            f"{os.path.join(self.save_dir, 'last_checkpoint')} (checkpoints there: {', '.join(others)})."
        )

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            checkpoint["model"] = self._hand_over_backbone(checkpoint["model"])
        return super()._load_model(checkpoint)

    def _hand_over_backbone(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        target_prefix, backbone = find_detnas_backbone(self.model)
        if backbone is None:
            return state
        source = self._filename
        state = dict(state)
        _strip_prefix_if_present(state, "module.")
        stems = [k[: -len(_STEM_KEY)] for k in state if k == _STEM_KEY or k.endswith("." + _STEM_KEY)]
        if len(stems) != 1:
            raise ValueError(
                f"{source}: expected one ShuffleNetV2 backbone (a key '<prefix>{_STEM_KEY}') for the model's "
                f"{_describe(backbone)}, found {len(stems)}: {stems}"
            )
        source_prefix = stems[0]
        source_backbone = {k[len(source_prefix):]: v for k, v in state.items() if k.startswith(source_prefix)}
        source_is_supernet = _is_supernet_state(source_backbone)
        target_is_supernet = isinstance(backbone, ShuffleNetV2Supernet)
        if source_is_supernet and not target_is_supernet:
            try:
                source_backbone = subnet_state_dict_from_supernet(source_backbone, backbone.space, backbone.arch)
            except ValueError as e:
                raise ValueError(f"{source}: supernet weights do not fit the model's {_describe(backbone)}: {e}")
        elif target_is_supernet and not source_is_supernet:
            raise ValueError(
                f"{source}: holds a subnet backbone (no 'layers.<i>.choices.<c>' keys under '{source_prefix}'), "
                f"the model's backbone is a supernet ({_describe(backbone)}); a subnet cannot initialize a supernet"
            )
        self._check_backbone_fits(source_backbone, backbone, source)
        if source_prefix == target_prefix and source_is_supernet == target_is_supernet:
            return state  # same model form: the standard load

        model_state = self.model.state_dict()
        mapped = {target_prefix + k: v for k, v in source_backbone.items()}
        rows = Counter(
            (source_prefix + _group(k, 1), target_prefix + _group(k, 1)) for k in source_backbone
        )
        dropped_keys = []
        for key, value in state.items():
            if key.startswith(source_prefix):
                continue
            if key in model_state and key not in mapped:
                mapped[key] = value
                rows[(_group(key, 2), _group(key, 2))] += 1
            else:
                dropped_keys.append(key)
        # A top-level module dropped as a whole is one row ("head.*"), others are split one level down.
        dropped_set = set(dropped_keys)
        kept_tops = {k.split(".", 1)[0] for k in state if k not in dropped_set}
        dropped = Counter(_group(k, 2 if k.split(".", 1)[0] in kept_tops else 1) for k in dropped_keys)
        table = [(src, dst, n) for (src, dst), n in sorted(rows.items())]
        table += [(src, "(dropped: not in the model)", n) for src, n in sorted(dropped.items())]
        path = f", path {arch_to_str(backbone.arch)}" if source_is_supernet and not target_is_supernet else ""
        self.logger.info(
            f"Backbone hand-off from {source} ({'supernet' if source_is_supernet else 'subnet'}{path}):\n"
            + tabulate(table, headers=["checkpoint", "model", "tensors"], tablefmt="pipe")
        )
        if dropped:
            self.logger.info(f"Dropped {sum(dropped.values())} checkpoint tensors the model has no place for: "
                             + ", ".join(sorted(dropped)))
        return mapped

    @staticmethod
    def _check_backbone_fits(source_backbone, backbone, source):
        # BN step counters come and go with FrozenBN (MODEL.BACKBONE.FREEZE_AT); they carry no weights.
        expected = {k: v.shape for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing = sorted(k for k in expected if k not in source_backbone)
        extra = sorted(k for k in source_backbone if k not in expected and not k.endswith("num_batches_tracked"))
        shapes = [
            (k, tuple(source_backbone[k].shape), tuple(expected[k]))
            for k in sorted(expected)
            if k in source_backbone and tuple(source_backbone[k].shape) != tuple(expected[k])
        ]
        if not (missing or extra or shapes):
            return
        problems = []
        if shapes:
            k, got, want = shapes[0]
            problems.append(f"{len(shapes)} tensors differ in shape (first '{k}': checkpoint {got}, model {want})")
        if missing:
            problems.append(f"{len(missing)} model keys missing (first '{missing[0]}')")
        if extra:
            problems.append(f"{len(extra)} checkpoint keys unknown to the model (first '{extra[0]}')")
        raise ValueError(
            f"{source}: the backbone weights do not fit the model's {_describe(backbone)}: "
            + "; ".join(problems)
            + ". Wrong MODEL.DETNAS.SPACE / WIDTH_MULT / ARCH for this checkpoint?"
        )
