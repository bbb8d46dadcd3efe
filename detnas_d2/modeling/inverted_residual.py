"""MobileNetV2's inverted residual block, registered as block type `InvertedResidual`: the candidates of
the mobile spaces of SPOS and ProxylessNAS (kernel 3/5/7 x expansion 3/6), and of the shipped example
space configs/spaces/mobilenetv2.yaml (docs/spaces.md).

1x1 conv `in -> in * expansion` + norm + ReLU6 (none at expansion 1), depthwise kxk with the stride +
norm + ReLU6, 1x1 conv to `out` + norm (linear: no activation); the input is added when the stride is
1 and `in == out`.
"""

from detectron2.layers import CNNBlockBase
from torch import nn

from .blocks import DETNAS_BLOCK_REGISTRY, conv_norm_act

__all__ = ["InvertedResidual"]


@DETNAS_BLOCK_REGISTRY.register()
class InvertedResidual(CNNBlockBase):
    def __init__(self, in_channels, out_channels, stride, kernel_size=3, expansion=6, norm="BN"):
        super().__init__(in_channels, out_channels, stride)
        if stride not in (1, 2):
            raise ValueError(f"an inverted residual block has stride 1 or 2, got {stride}")
        if kernel_size not in (1, 3, 5, 7, 9) or not expansion >= 1:
            raise ValueError(
                f"kernel_size must be an odd 1-9 and expansion >= 1, got {kernel_size}, {expansion}"
            )
        mid = int(round(in_channels * expansion))
        self.expand = (
            conv_norm_act(in_channels, mid, 1, relu=True, relu6=True, norm=norm)
            if mid != in_channels
            else nn.Identity()
        )
        self.depthwise = conv_norm_act(
            mid, mid, kernel_size, stride=stride, depthwise=True, relu=True, relu6=True, norm=norm
        )
        self.project = conv_norm_act(mid, out_channels, 1, relu=False, norm=norm)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out
