"""Checkpoints: reading them safely, converting MMRazor's and the official DetNAS code's layouts to ours
and back, and the checkpointer that loads any of them into a model (docs/design.md, "Checkpoint layouts").

- `safe_read`: `read_checkpoint`, which runs no code from the file;
- `layouts`: which layout a state dict is in, and the state dict inside a checkpoint's container;
- `backbone_keys`: our layout's ShuffleNetV2 backbone read from its keys (blocks, space, stem);
- `mmrazor`, `official`: MMRazor's layout and the official DetNAS code's, to ours and back;
- `convert`: a checkpoint of any of them in ours;
- `checkpointer`: `DetNASCheckpointer` (safe reading, conversion, backbone hand-off between model forms)
  and the arch of a subnet checkpoint.
"""

from .checkpointer import (
    DetNASCheckpointer,
    arch_opts_from_weights,
    model_input_format,
    weights_arch,
)
from .convert import conversion_table, convert_checkpoint
from .safe_read import ALLOW_PICKLE_ENV, RefusedCheckpointError, read_checkpoint

__all__ = [
    "ALLOW_PICKLE_ENV",
    "DetNASCheckpointer",
    "RefusedCheckpointError",
    "arch_opts_from_weights",
    "conversion_table",
    "convert_checkpoint",
    "model_input_format",
    "read_checkpoint",
    "weights_arch",
]
