"""BatchNorm folding: every BatchNorm (BN, SyncBN, naiveSyncBN, FrozenBN) that directly follows a conv
is folded into it, `W' = W * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta`, with the
eval-mode (running) statistics. Deployment export and latency tables time and ship folded models."""

import copy
from typing import Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["BatchNormFoldError", "count_batchnorms", "fold_batchnorm"]

# _BatchNorm: BatchNorm2d, naiveSyncBN (a BatchNorm2d) and nn.SyncBatchNorm (not a BatchNorm2d)
_BN_TYPES = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


class BatchNormFoldError(RuntimeError):
    """A model that cannot be folded: in training mode, or a BatchNorm of another width than its conv."""


def _is_foldable_bn(module) -> bool:
    if not isinstance(module, _BN_TYPES):
        return False
    return (
        getattr(module, "running_mean", None) is not None
        and getattr(module, "running_var", None) is not None
    )


def _fold_into(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold `bn` (eval-mode statistics) into `conv`'s weight and bias, in place."""
    if bn.running_mean.shape[0] != conv.out_channels:
        raise BatchNormFoldError(
            f"cannot fold {type(bn).__name__}({bn.running_mean.shape[0]}) into a conv with "
            f"{conv.out_channels} output channels"
        )
    with torch.no_grad():
        w = conv.weight
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = (
            bn.weight.double() if getattr(bn, "weight", None) is not None else torch.ones_like(std)
        )
        beta = bn.bias.double() if getattr(bn, "bias", None) is not None else torch.zeros_like(std)
        scale = gamma / std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
        new_w = (w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        new_b = ((bias - bn.running_mean.double()) * scale + beta).to(w.dtype)
        conv.weight.copy_(new_w)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b, requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(new_b)


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm-type modules (BN, SyncBN, naiveSyncBN, FrozenBN) in `model`."""
    return sum(1 for m in model.modules() if isinstance(m, _BN_TYPES))


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> Tuple[nn.Module, int]:
    """`model` with every BatchNorm that directly follows a conv folded into it; returns (model, count).

    Handles Detectron2's `Conv2d(..., norm=BN)` (the norm is removed) and `nn.Sequential` runs of a conv
    followed by a BN (the BN becomes `nn.Identity`). Eval-mode semantics: the model must be in eval mode
    (folding uses the running statistics). Without `inplace`, `model` is deep-copied first.
    """
    if model.training:
        raise BatchNormFoldError(
            "fold_batchnorm needs an eval-mode model (call model.eval()): it folds running statistics"
        )
    if not inplace:
        model = copy.deepcopy(model)
    folded = 0
    for module in list(model.modules()):
        norm = getattr(module, "norm", None) if isinstance(module, nn.Conv2d) else None
        if norm is not None and _is_foldable_bn(norm):
            _fold_into(module, norm)
            module.norm = None
            folded += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for prev, name in zip(names, names[1:]):
                conv, bn = module._modules[prev], module._modules[name]
                if (
                    isinstance(conv, nn.Conv2d)
                    and getattr(conv, "norm", None) is None
                    and getattr(conv, "activation", None) is None
                    and _is_foldable_bn(bn)
                ):
                    _fold_into(conv, bn)
                    module._modules[name] = nn.Identity()
                    folded += 1
    return model, folded
