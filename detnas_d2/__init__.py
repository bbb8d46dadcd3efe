"""detnas-d2: DetNAS backbone search for Detectron2."""

from . import compat

compat.apply()  # before anything imports Detectron2 (see compat)

from . import data, modeling  # noqa: E402,F401  (register the toy and ImageNet datasets, the backbones)
from .config import add_detnas_config  # noqa: E402
from .modeling import DETNAS_BLOCK_REGISTRY  # noqa: E402
from .search_space import get_space, shipped_spaces  # noqa: E402

__all__ = ["add_detnas_config", "DETNAS_BLOCK_REGISTRY", "get_space", "shipped_spaces"]
__version__ = "0.1.0"
