"""Classification head of the DetNAS backbones (ImageNet steps): 1x1 conv + norm + ReLU, global average
pool, dropout, linear. `conv_bias`: the official (Megvii) code's conv has a bias besides its norm."""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from fvcore.nn import weight_init
from torch import nn

from .blocks import get_block_norm

__all__ = ["ClassifierHead"]


class ClassifierHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        head_channels: int = 1024,
        dropout: float = 0.0,
        norm="BN",
        conv_bias: bool = False,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        norm_layer = get_block_norm(norm, head_channels)
        self.conv = Conv2d(
            in_channels,
            head_channels,
            1,
            bias=conv_bias or norm_layer is None,
            norm=norm_layer,
            activation=F.relu,
        )
        weight_init.c2_msra_fill(self.conv)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(head_channels, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) feature -> (N, num_classes) logits."""
        x = self.conv(feature).mean(dim=(2, 3))
        return self.linear(self.dropout(x))
