"""The arch of a subnet checkpoint (any supported layout), and MODEL.DETNAS.ARCH taken from it when a
subnet config leaves it empty."""

import logging
from typing import List, Optional, Sequence, Tuple

from detectron2.utils.file_io import PathManager

from ..arch_io import load_arch
from ..config import get_detnas_cfg
from ..search_space import arch_to_str, space_from_cfg
from ..user_errors import UserError
from .backbone_keys import arch_difference
from .convert import convert_checkpoint
from .safe_read import read_checkpoint

__all__ = ["weights_arch", "arch_opts_from_weights"]

logger = logging.getLogger(__name__)


def weights_arch(filename: str) -> Optional[Tuple[int, ...]]:
    """The arch of the subnet in a checkpoint of any supported layout, or None (a supernet, no backbone)."""
    _, conversion = convert_checkpoint(read_checkpoint(filename))
    return conversion.arch


def _subnet_builder(name: str) -> bool:
    return name.startswith("build_detnas_subnet")


def arch_opts_from_weights(config_file: str, opts: Sequence[str]) -> List[str]:
    """`opts` with MODEL.DETNAS.ARCH added when the config builds a subnet, leaves ARCH empty and
    MODEL.WEIGHTS holds a subnet (its arch read from the file). Both given and different: ValueError
    naming the first layer that differs. Otherwise `opts` unchanged."""
    opts = list(opts)
    cfg = get_detnas_cfg(config_file, opts)
    weights, arch = cfg.MODEL.WEIGHTS, cfg.MODEL.DETNAS.ARCH.strip()
    if (
        not weights
        or not _subnet_builder(cfg.MODEL.BACKBONE.NAME)
        or not PathManager.exists(weights)
    ):
        return opts
    try:
        file_arch = weights_arch(weights)
    # unreadable, refused or foreign: the checkpointer reports it when it loads the file
    except Exception:
        return opts
    space = space_from_cfg(cfg)
    if file_arch is None or not space.is_paper:  # the weights' arch is read as the paper's blocks
        return opts
    if not arch:
        logger.warning(
            f"MODEL.DETNAS.ARCH is empty: using the arch of {weights}: {arch_to_str(file_arch)}"
        )
        return opts + ["MODEL.DETNAS.ARCH", arch_to_str(file_arch)]
    difference = arch_difference(file_arch, load_arch(arch, space), space)
    if difference:
        raise UserError(
            f"MODEL.DETNAS.ARCH ({arch}) and MODEL.WEIGHTS ({weights}) disagree: {difference}. The file's arch is "
            f"{arch_to_str(file_arch)}; leave MODEL.DETNAS.ARCH empty to use it"
        )
    return opts
