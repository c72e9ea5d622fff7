"""sd3d.models.attention: PyTorch's attention without cuDNN's kernel (its module docstring says why)."""

from __future__ import annotations

import math

import torch
from torch.nn.attention import SDPBackend

from sd3d.models import attention as A


def test_attention_is_softmax_attention_and_leaves_the_backend_flags_as_they_were():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    want = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ v
    flags = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled())
    torch.testing.assert_close(A.attention(q, k, v), want, rtol=1e-10, atol=1e-10)
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()) == flags


def test_cudnn_attention_is_not_among_the_backends():
    assert SDPBackend.CUDNN_ATTENTION not in A.BACKENDS
    assert SDPBackend.MATH in A.BACKENDS  # every input has a kernel
