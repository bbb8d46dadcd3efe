"""A block type of a user's own, outside the package: a space file registers it by naming this file in
its `imports` (tests/test_spaces.py, tests/test_pipeline.py)."""

from detectron2.layers import CNNBlockBase
from torch import nn

from detnas_d2.modeling import DETNAS_BLOCK_REGISTRY
from detnas_d2.modeling.blocks import conv_norm_act


@DETNAS_BLOCK_REGISTRY.register()
class PlainConvBlock(CNNBlockBase):
    """kxk conv (stride) + norm + ReLU, then 1x1 conv + norm, then ReLU."""

    def __init__(self, in_channels, out_channels, stride, kernel_size=3, norm="BN"):
        super().__init__(in_channels, out_channels, stride)
        self.conv = conv_norm_act(
            in_channels, out_channels, kernel_size, stride=stride, relu=True, norm=norm
        )
        self.point = conv_norm_act(out_channels, out_channels, 1, relu=False, norm=norm)

    def forward(self, x):
        return nn.functional.relu(self.point(self.conv(x)))
