"""Checkpoints: reading them safely, converting MMRazor's and the official DetNAS code's layouts to ours
and back, and the checkpointer that loads any of them into a model (docs/design.md, "Checkpoint layouts").

- `safe_read`: `read_checkpoint`, which runs no code from the file and says what a file that is no
  checkpoint holds; `CheckpointError`, the base of every error about a checkpoint file;
- `weight_checks`: NaN / Inf weights refused, and (evaluations, searches) weights that leave parts of
  the model random;
- `layouts`: which layout a state dict is in, and the state dict inside a checkpoint's container;
- `backbone_keys`: our layout's ShuffleNetV2 backbone read from its keys (blocks, space, stem);
- `mmrazor`, `official`: MMRazor's layout and the official DetNAS code's, to ours and back;
- `convert`: a checkpoint of any of them in ours;
- `checkpointer`: `DetNASCheckpointer` (safe reading, checked weights, conversion, backbone hand-off
  between model forms);
- `subnet_arch`: the arch of a subnet checkpoint, and MODEL.DETNAS.ARCH taken from it.
"""

from .checkpointer import DetNASCheckpointer, model_input_format
from .convert import conversion_table, convert_checkpoint
from .safe_read import (
    ALLOW_PICKLE_ENV,
    CheckpointError,
    RefusedCheckpointError,
    UnreadableCheckpointError,
    read_checkpoint,
)
from .subnet_arch import arch_opts_from_weights, weights_arch
from .weight_checks import IncompleteWeightsError, NonFiniteWeightsError

__all__ = [
    "ALLOW_PICKLE_ENV",
    "CheckpointError",
    "DetNASCheckpointer",
    "IncompleteWeightsError",
    "NonFiniteWeightsError",
    "RefusedCheckpointError",
    "UnreadableCheckpointError",
    "arch_opts_from_weights",
    "conversion_table",
    "convert_checkpoint",
    "model_input_format",
    "read_checkpoint",
    "weights_arch",
]
