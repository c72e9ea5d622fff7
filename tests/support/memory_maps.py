"""Whether a tensor's bytes lie in a memory mapping of a given file (``/proc/self/maps``): how the
weights tests see that a checkpoint was memory-mapped rather than copied."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def is_mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """True if ``tensor``'s storage starts inside a mapping of ``path``; skips the test where the
    process has no ``/proc/self/maps``."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps to see memory mappings")
    ptr = tensor.untyped_storage().data_ptr()
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= ptr < end:
                return True
    return False
