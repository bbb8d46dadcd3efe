"""The BN layers of a model that hold running statistics (recalibrated per path by the search and by
supernet evaluation)."""

from typing import List

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["bn_layers"]


def bn_layers(model: nn.Module) -> List[_BatchNorm]:
    """BN layers with running statistics (BatchNorm*, SyncBatchNorm, NaiveSyncBatchNorm), in model order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
