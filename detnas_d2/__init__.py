"""detnas-d2: DetNAS backbone search for Detectron2."""
from . import compat

compat.apply()

from .config import add_detnas_config  # noqa: E402
from .search_space import BLOCKS, SPACES, get_space  # noqa: E402

__all__ = ["add_detnas_config", "BLOCKS", "SPACES", "get_space"]
__version__ = "0.1.0"
from . import modeling  # noqa: E402,F401  (registers the DetNAS backbones)
from . import data  # noqa: E402,F401  (registers the toy and ImageNet datasets)
