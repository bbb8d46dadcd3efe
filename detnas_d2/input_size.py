"""Network input sizes (height, width) as the command lines and files spell them: "HxW" or one number."""

from typing import Sequence, Tuple

__all__ = ["parse_input_size", "format_input_size"]


def parse_input_size(size) -> Tuple[int, int]:
    """(H, W) from an int (square), "HxW", "H,W", "S" (square), or a pair; ValueError otherwise."""
    if isinstance(size, int):
        parts = [size, size]
    elif isinstance(size, str):
        try:
            parts = [int(p) for p in size.lower().replace(",", "x").split("x")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts = parts * 2
    else:
        parts = [int(p) for p in size]
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(
            f"an input size is HxW or one number (square), e.g. 224x224 or 800x1333; got {size!r}"
        )
    return int(parts[0]), int(parts[1])


def format_input_size(size: Sequence[int]) -> str:
    """(800, 1333) -> '800x1333'."""
    return f"{size[0]}x{size[1]}"
