"""`DetNASCheckpointer`, Detectron2's `DetectionCheckpointer` with four additions:

- **safe reading** (`safe_read`): no file runs code when it is read; a missing, empty, text or damaged
  file is one line saying which (for a checkpoint of the run's folder, with the one to resume from
  instead);
- **checked weights** (`weight_checks`): NaN or Inf weights are refused, and with
  `allow_random_heads=False` (evaluations, searches) so is a file that leaves parts of the model random;
- **MMRazor's and the official DetNAS code's layouts** (`convert`): MMRazor 1.x / 0.x DetNAS and SPOS
  checkpoints (supernet or subnet; classifier or MMDetection Faster R-CNN FPN detector) are detected from
  their keys and converted to ours, with a table of what was converted and dropped; MMRazor's RGB stem is
  flipped for a model whose PIXEL_MEAN is in BGR order. Official (Megvii) DetNAS checkpoints
  (ShuffleNet-Series, the DetNAS repository's ImageNet models, supernet and maskrcnn_benchmark detectors)
  load into a model of MODEL.DETNAS.BLOCK_STYLE official, whose input is theirs: BGR 0-255 without
  normalisation (a model that normalises is warned about). A file for another block style than the
  model's is an error naming the setting. A file matching no layout, or of which no tensor fits the
  model, is an error naming the layouts tried.
- **the backbone hand-off** between model forms:
  - step 1 -> 2 and 4 -> 5: a DetNASClassifier checkpoint (`backbone.*`, `head.*`) into a detector
    (`backbone.bottom_up.*` for FPN models, `backbone.*` for a plain backbone); `head.*` is dropped;
  - search -> retrain: a supernet checkpoint (classifier or detector) into a subnet model: the subnet takes
    the chosen path's blocks (`subnet_state_dict_from_supernet`), detector parts of the same name too.
  The mapping is logged as a table, keys that have no place in the model are listed as dropped. A
  checkpoint of another space or width, a subnet checkpoint for a supernet, or a subnet of another arch
  (naming the first layer that differs) raises ValueError. Same-form checkpoints (resume, eval) load
  unchanged.

It also resets Detectron2's `_parsed_url_during_load` when a load raises (Detectron2 main leaves it set,
and the checkpointer could load no other file afterwards).
"""

import io
import os
from collections import Counter
from typing import Dict, Optional
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import _strip_prefix_if_present
from tabulate import tabulate

from ..file_io import atomic_write
from ..modeling.backbone import (
    ShuffleNetV2Supernet,
    find_detnas_backbone,
    subnet_state_dict_from_supernet,
)
from ..search_space import arch_to_str
from .backbone_keys import arch_difference, block_arch, flip_stem_channels
from .convert import conversion_table, convert_checkpoint
from .layouts import (
    DETNAS_STEM,
    LAYOUTS_TRIED,
    Conversion,
    UnknownLayoutError,
    key_group,
    unwrap_state_dict,
)
from .safe_read import (
    CheckpointError,
    UnreadableCheckpointError,
    read_checkpoint,
    require_local_file,
)
from .weight_checks import require_finite, require_whole_model

__all__ = ["DetNASCheckpointer", "model_input_format"]

# ImageNet mean in 0-255 units, in MMRazor's (RGB) and this project's configs' (BGR) channel order.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)


def _holds_tensors(loaded) -> bool:
    """Whether a loaded checkpoint has a state dict of torch tensors (not a Caffe2 / model-zoo pickle)."""
    try:
        unwrap_state_dict(loaded)
    except UnknownLayoutError:
        return False
    return True


def _as_detectron2_pickle(data):
    """Detectron2's reading of a model-zoo / Caffe2 `.pkl` (as DetectionCheckpointer._load_file does)."""
    if isinstance(data, dict) and "model" in data and "__author__" in data:
        return data
    if isinstance(data, dict) and "blobs" in data:
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def model_input_format(model) -> Optional[str]:
    """'RGB' or 'BGR' if the model's PIXEL_MEAN is the ImageNet mean in that order, else None."""
    mean = getattr(getattr(model, "module", model), "pixel_mean", None)
    if not isinstance(mean, torch.Tensor) or mean.numel() != 3:
        return None
    mean = mean.flatten().tolist()
    for name, ref in (("RGB", IMAGENET_MEAN_RGB), ("BGR", IMAGENET_MEAN_RGB[::-1])):
        if all(abs(a - b) < 0.5 for a, b in zip(mean, ref)):
            return name
    return None


def _describe(backbone) -> str:
    space = backbone.space
    kind = (
        "supernet"
        if isinstance(backbone, ShuffleNetV2Supernet)
        else f"subnet {arch_to_str(backbone.arch)}"
    )
    style = f", block style {space.block_style}" if space.official else ""
    return (
        f"space '{space.name}' (width {space.width_mult}, {space.num_layers} layers{style}), {kind}"
    )


def _is_supernet_state(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("layers.") and k.split(".")[2:3] == ["choices"] for k in state)


class DetNASCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads safely, converts MMRazor's and the official DetNAS code's
    layouts and hands a ShuffleNetV2 backbone over between model forms (module doc). `allow_pickle`:
    read `.pkl` files (default: the DETNAS_ALLOW_PICKLE environment variable). `allow_random_heads`
    False: refuse a file that leaves tensors of the model at their initialisation (evaluations and
    searches: MODEL.DETNAS.ALLOW_RANDOM_HEADS); True (training from an earlier step's backbone):
    Detectron2's warning naming them."""

    _filename = "checkpoint"  # the file being loaded, for messages

    def __init__(
        self,
        model,
        save_dir="",
        *,
        save_to_disk=None,
        allow_pickle: Optional[bool] = None,
        allow_random_heads: bool = True,
        **checkpointables,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_pickle = allow_pickle
        self.allow_random_heads = allow_random_heads

    def load(self, path, *args, **kwargs):
        """Detectron2's `load`; a local file that is not there is one line (for a checkpoint of this
        run's folder, naming the one to resume from instead) instead of fvcore's AssertionError."""
        if path:
            local = urlparse(path)._replace(query="").geturl()  # Detectron2 main's URL options
            hint = self._fallback_hint(local) if "://" not in local else ""
            require_local_file(local, f".{hint}" if hint else "; check the path")
        try:
            return super().load(path, *args, **kwargs)
        except BaseException:
            # Detectron2 main sets it for the load and resets it only when the load returns
            if getattr(self, "_parsed_url_during_load", None) is not None:
                self._parsed_url_during_load = None
            raise

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
            loaded = read_checkpoint(filename, self.allow_pickle)
        except UnreadableCheckpointError as e:
            raise UnreadableCheckpointError(f"{e}.{self._fallback_hint(filename)}") from None
        if filename.endswith(".pkl") and not _holds_tensors(loaded):
            return _as_detectron2_pickle(loaded)
        # pycls
        if filename.endswith(".pyth") and isinstance(loaded, dict) and "model_state" in loaded:
            state = {
                k: v
                for k, v in loaded["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        try:
            checkpoint, conversion = convert_checkpoint(loaded)
        except UnknownLayoutError as e:
            if find_detnas_backbone(self.model)[1] is not None:
                raise CheckpointError(f"{filename}: {e}") from None
            # Not a DetNAS model: Detectron2's plain load (the check in _load_model still applies).
            return loaded if isinstance(loaded, dict) and "model" in loaded else {"model": loaded}
        except ValueError as e:
            raise CheckpointError(f"{filename}: {e}") from None
        backbone = find_detnas_backbone(self.model)[1]
        if (
            conversion.format != "detnas-d2"
            and backbone is not None
            and not backbone.space.is_paper
        ):
            raise CheckpointError(
                f"{filename} holds {conversion.format} weights, of the DetNAS paper's ShuffleNetV2 "
                f"spaces; the model's space '{backbone.space.ref}' is another network: give weights "
                "of this space (a detnas-d2 checkpoint) or none"
            )
        if conversion.format != "detnas-d2":
            self.logger.info(
                f"Converted {filename} from {conversion.format} ({conversion.form}, "
                + (
                    "supernet"
                    if conversion.is_supernet
                    else f"subnet {arch_to_str(conversion.arch or ())}"
                )
                + (f", prefix '{conversion.prefix}'" if conversion.prefix else "")
                + "):\n"
                + conversion_table(conversion)
            )
        self._check_block_style(conversion, filename)
        source = checkpoint.get("converted_from") or {}
        if source.get("pixel_mean") is not None:
            self._check_raw_input(source, filename)
        elif source.get("input_format") and source["input_format"] != model_input_format(
            self.model
        ):
            model_format = model_input_format(self.model)
            if model_format is None:
                self.logger.warning(
                    f"{filename} holds {source.get('format', 'converted')} weights for {source['input_format']} "
                    "input; the model's PIXEL_MEAN is not the ImageNet mean in RGB or BGR order, so its stem is "
                    "left as it is: set INPUT.FORMAT / PIXEL_MEAN / PIXEL_STD to the weights' own"
                )
            else:
                checkpoint["model"] = flip_stem_channels(checkpoint["model"])
                self.logger.info(
                    f"{filename}: weights for {source['input_format']} input, the model takes {model_format} "
                    "(PIXEL_MEAN): stem conv input channels reversed (exact)"
                )
        return checkpoint

    def _check_block_style(self, conversion: Conversion, filename: str):
        """Weights for another network than the model's (search_space.py, block styles): an error naming the
        setting; only the stride-1 split of the official code differing (not in the file): a warning."""
        backbone = find_detnas_backbone(self.model)[1]
        theirs = conversion.block_style
        if backbone is None or theirs is None or theirs == backbone.space.block_style:
            return
        ours = backbone.space.block_style
        what = f"{filename} holds {conversion.format} weights of block style '{theirs}'"
        if (theirs == "mmrazor") != (ours == "mmrazor"):
            raise CheckpointError(
                f"{what}, the model is MODEL.DETNAS.BLOCK_STYLE '{ours}': another network (search_space.py). Set "
                f"MODEL.DETNAS.BLOCK_STYLE {theirs}"
                + (
                    " (configs/ImageNet/official_*.yaml, configs/COCO-Detection/official_*.yaml)"
                    if theirs != "mmrazor"
                    else ""
                )
            )
        self.logger.warning(
            f"{what} (the official {'supernet' if conversion.is_supernet else 'searched models'}' code splits a "
            f"stride-1 unit's channels so; the file does not say), the model '{ours}': its outputs equal the "
            "official network's only if the weights were trained with the model's split"
        )

    def _check_raw_input(self, source: dict, filename: str):
        """The official weights take BGR 0-255 pixels without normalisation: warn a model that normalises."""
        model = getattr(self.model, "module", self.model)
        mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
        if mean is None or std is None:
            return
        if torch.allclose(
            mean.flatten().cpu(), torch.tensor(source["pixel_mean"])
        ) and torch.allclose(std.flatten().cpu(), torch.tensor(source["pixel_std"])):
            return
        self.logger.warning(
            f"{filename} holds {source.get('format')} weights for {source['input_format']} pixels in 0-255 "
            f"without normalisation (PIXEL_MEAN {source['pixel_mean']}, PIXEL_STD {source['pixel_std']}); the model "
            f"normalises with PIXEL_MEAN {mean.flatten().tolist()}, PIXEL_STD {std.flatten().tolist()}, so its "
            "outputs are not the official network's: set MODEL.PIXEL_MEAN / PIXEL_STD to the weights' (the "
            "configs/*/official_*.yaml configs do)"
        )

    def _fallback_hint(self, filename: str) -> str:
        """For a file of this run's folder: how to resume from the checkpoint before it."""
        if (
            not self.save_dir
            or not os.path.isdir(self.save_dir)
            or os.path.dirname(os.path.abspath(filename)) != os.path.abspath(self.save_dir)
        ):
            return ""
        name = os.path.basename(filename)
        others = sorted(
            f
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and f != name and f != "model_final.pth"
        )
        if not others:
            return " No other checkpoint is in its folder: start again without --resume."
        before = [f for f in others if f < name] or others
        return (
            f" To resume from the checkpoint before it, write its name (e.g. '{before[-1]}') into "
            f"{os.path.join(self.save_dir, 'last_checkpoint')} (checkpoints there: {', '.join(others)})."
        )

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["matching_heuristics"] = False  # done: the standard load below
        else:
            checkpoint["model"] = self._hand_over_backbone(checkpoint["model"])
        self._require_some_tensor_fits(checkpoint["model"])
        require_finite(checkpoint["model"], self._filename, self._fallback_hint(self._filename))
        if not self.allow_random_heads:
            require_whole_model(self.model.state_dict(), checkpoint["model"], self._filename)
        return super()._load_model(checkpoint)

    def _require_some_tensor_fits(self, state):
        """Never a silent 0-of-N load."""
        model_state = self.model.state_dict()
        fits = sum(
            1
            for k, v in model_state.items()
            if k in state and tuple(state[k].shape) == tuple(v.shape)
        )
        if fits or not model_state:
            return
        keys = list(state)
        raise CheckpointError(
            f"{self._filename}: none of its {len(keys)} tensors fits the model's {len(model_state)} (same name "
            f"and shape), e.g. '{keys[0] if keys else ''}' vs the model's '{next(iter(model_state))}'. Layouts "
            "tried: "
            + "; ".join(LAYOUTS_TRIED)
            + ", and Detectron2's name matching for .pkl / .pyth files"
        )

    def _hand_over_backbone(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        target_prefix, backbone = find_detnas_backbone(self.model)
        if backbone is None:
            return state
        source = self._filename
        state = dict(state)
        _strip_prefix_if_present(state, "module.")
        stems = [
            k[: -len(DETNAS_STEM)]
            for k in state
            if k == DETNAS_STEM or k.endswith("." + DETNAS_STEM)
        ]
        if len(stems) != 1:
            raise CheckpointError(
                f"{source}: expected one ShuffleNetV2 backbone (a key '<prefix>{DETNAS_STEM}') for the model's "
                f"{_describe(backbone)}, found {len(stems)}: {stems}. Layouts tried: "
                + "; ".join(LAYOUTS_TRIED)
            )
        source_prefix = stems[0]
        source_backbone = {
            k[len(source_prefix) :]: v for k, v in state.items() if k.startswith(source_prefix)
        }
        source_is_supernet = _is_supernet_state(source_backbone)
        target_is_supernet = isinstance(backbone, ShuffleNetV2Supernet)
        if source_is_supernet and not target_is_supernet:
            try:
                source_backbone = subnet_state_dict_from_supernet(
                    source_backbone, backbone.space, backbone.arch
                )
            except ValueError as e:
                raise CheckpointError(
                    f"{source}: supernet weights do not fit the model's {_describe(backbone)}: {e}"
                )
        elif target_is_supernet and not source_is_supernet:
            raise CheckpointError(
                f"{source}: holds a subnet backbone (no 'layers.<i>.choices.<c>' keys under '{source_prefix}'), "
                f"the model's backbone is a supernet ({_describe(backbone)}); a subnet cannot initialize a supernet"
            )
        elif not target_is_supernet:
            self._check_same_arch(source_backbone, backbone, source)
        self._check_backbone_fits(source_backbone, backbone, source)
        if source_prefix == target_prefix and source_is_supernet == target_is_supernet:
            return state  # same model form: the standard load

        model_state = self.model.state_dict()
        mapped = {target_prefix + k: v for k, v in source_backbone.items()}
        rows = Counter(
            (source_prefix + key_group(k, 1), target_prefix + key_group(k, 1))
            for k in source_backbone
        )
        dropped_keys = []
        for key, value in state.items():
            if key.startswith(source_prefix):
                continue
            if key in model_state and key not in mapped:
                mapped[key] = value
                rows[(key_group(key, 2), key_group(key, 2))] += 1
            else:
                dropped_keys.append(key)
        # A top-level module dropped as a whole is one row ("head.*"), others are split one level down.
        dropped_set = set(dropped_keys)
        kept_tops = {k.split(".", 1)[0] for k in state if k not in dropped_set}
        dropped = Counter(
            key_group(k, 2 if k.split(".", 1)[0] in kept_tops else 1) for k in dropped_keys
        )
        table = [(src, dst, n) for (src, dst), n in sorted(rows.items())]
        table += [(src, "(dropped: not in the model)", n) for src, n in sorted(dropped.items())]
        path = (
            f", path {arch_to_str(backbone.arch)}"
            if source_is_supernet and not target_is_supernet
            else ""
        )
        self.logger.info(
            f"Backbone hand-off from {source} ({'supernet' if source_is_supernet else 'subnet'}{path}):\n"
            + tabulate(table, headers=["checkpoint", "model", "tensors"], tablefmt="pipe")
        )
        if dropped:
            self.logger.info(
                f"Dropped {sum(dropped.values())} checkpoint tensors the model has no place for: "
                + ", ".join(sorted(dropped))
            )
        return mapped

    @staticmethod
    def _check_same_arch(source_backbone, backbone, source):
        """A subnet checkpoint of another arch: name the first layer that differs."""
        try:
            file_arch = block_arch(source_backbone)
        except ValueError:
            return  # not our blocks: _check_backbone_fits says what does not fit
        if not backbone.space.is_paper:  # block_arch reads the paper spaces' blocks
            return
        if file_arch is None or len(file_arch) != len(backbone.arch):
            return
        difference = arch_difference(file_arch, backbone.arch, backbone.space)
        if difference:
            raise CheckpointError(
                f"{source}: the backbone weights do not fit the model's {_describe(backbone)}: {difference}. "
                f"The file's arch is {arch_to_str(file_arch)}: set MODEL.DETNAS.ARCH to it, or leave it empty "
                "to read it from MODEL.WEIGHTS"
            )

    @staticmethod
    def _check_backbone_fits(source_backbone, backbone, source):
        # BN step counters come and go with FrozenBN (MODEL.BACKBONE.FREEZE_AT); they carry no weights.
        expected = {
            k: v.shape
            for k, v in backbone.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        missing = sorted(k for k in expected if k not in source_backbone)
        extra = sorted(
            k
            for k in source_backbone
            if k not in expected and not k.endswith("num_batches_tracked")
        )
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
            problems.append(
                f"{len(shapes)} tensors differ in shape (first '{k}': checkpoint {got}, model {want})"
            )
        if missing:
            problems.append(f"{len(missing)} model keys missing (first '{missing[0]}')")
        if extra:
            problems.append(
                f"{len(extra)} checkpoint keys unknown to the model (first '{extra[0]}')"
            )
        raise CheckpointError(
            f"{source}: the backbone weights do not fit the model's {_describe(backbone)}: "
            + "; ".join(problems)
            + ". Wrong MODEL.DETNAS.SPACE / WIDTH_MULT / ARCH / BLOCK_STYLE for this checkpoint?"
        )
