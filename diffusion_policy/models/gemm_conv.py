"""1-D convolution as one matrix multiply (im2col + GEMM) under autocast, a drop-in for ``nn.Conv1d``.

On CPU, PyTorch's bf16 1-D convolutions are no faster than fp32 ones (~100-200 GFLOP/s here), and
their backward dominates the U-Net's training step. Unfolding the input into columns turns each
convolution into one GEMM, which oneDNN runs on the AMX units (~350-500 GFLOP/s measured here for
the U-Net's shapes). Outside autocast the layer is exactly ``nn.Conv1d``, so fp32 training and
inference keep PyTorch's kernels.

Columns are laid out tap-major, ``(B * To, k * C)``, so that the backward scatter (col2im) adds
contiguous channel rows; the weight ``(C_out, C_in, k)`` is viewed as ``(C_out, k * C_in)`` to match.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def output_length(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """Length of a 1-D convolution's output: ``(T + 2p - k) // s + 1``."""
    return (length + 2 * padding - kernel_size) // stride + 1


def im2col(x: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """``x (B, C, T)`` -> columns ``(B * To, k * C)``, zero-padded by ``padding`` on both sides.

    Row ``b * To + t`` holds the taps ``x[b, :, t*s - p + j]`` for ``j = 0..k-1``, tap-major.
    """
    batch, channels, length = x.shape
    out_len = output_length(length, kernel_size, stride, padding)
    padded = x.new_zeros(batch, length + 2 * padding, channels)
    padded[:, padding : padding + length] = x.transpose(1, 2)
    windows = padded.as_strided(
        (batch, out_len, kernel_size, channels),
        ((length + 2 * padding) * channels, stride * channels, channels, 1),
    )
    return windows.reshape(batch * out_len, kernel_size * channels)


def col2im(cols: Tensor, length: int, kernel_size: int, stride: int, padding: int) -> Tensor:
    """Adjoint of :func:`im2col`: columns ``(B * To, k * C)`` -> ``(B, C, T)``, overlaps summed."""
    channels = cols.shape[1] // kernel_size
    out_len = output_length(length, kernel_size, stride, padding)
    taps = cols.view(-1, out_len, kernel_size, channels)
    padded = cols.new_zeros(taps.shape[0], length + 2 * padding, channels)
    last = stride * (out_len - 1) + 1
    for j in range(kernel_size):
        padded[:, j : j + last : stride] += taps[:, :, j]
    return padded[:, padding : padding + length].transpose(1, 2).contiguous()


class _GemmConv1dFunction(torch.autograd.Function):
    """``(x (B, C, T), weight (C_out, k * C), bias (C_out,) | None) -> (B, C_out, To)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, k: int, s: int, p: int) -> Tensor:
        cols = im2col(x, k, s, p)
        y = cols @ weight.t() if bias is None else torch.addmm(bias, cols, weight.t())
        ctx.save_for_backward(cols, weight)
        ctx.geometry = (x.shape[2], k, s, p, bias is not None)
        return y.view(x.shape[0], -1, weight.shape[0]).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        cols, weight = ctx.saved_tensors
        length, k, s, p, has_bias = ctx.geometry
        grad = grad_out.transpose(1, 2).reshape(-1, weight.shape[0])
        grad_x = col2im(grad @ weight, length, k, s, p) if ctx.needs_input_grad[0] else None
        grad_w = grad.t() @ cols if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


class GemmConv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters and state dict) that runs as im2col + GEMM under autocast.

    ``(B, C_in, T) -> (B, C_out, To)``. Supports stride and zero padding; not dilation or groups.
    Under ``torch.autocast`` the GEMM runs in the autocast dtype; otherwise ``nn.Conv1d.forward``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dilation != (1,) or self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError(
                f"GemmConv1d supports dilation 1, groups 1 and zero padding; got dilation={self.dilation}, "
                f"groups={self.groups}, padding_mode={self.padding_mode!r}"
            )
        if isinstance(self.padding, str):
            raise ValueError(f"GemmConv1d needs an integer padding, got {self.padding!r}")

    def gemm_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight as a tap-major matrix ``(C_out, k * C_in)``, optionally cast (one copy)."""
        weight = self.weight.permute(0, 2, 1)
        return weight.to(dtype or weight.dtype, memory_format=torch.contiguous_format).reshape(self.out_channels, -1)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C_in, T) -> (B, C_out, To)``."""
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return super().forward(x)
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        dtype = torch.get_autocast_dtype(device)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return _GemmConv1dFunction.apply(x.to(dtype), self.gemm_weight(dtype), bias, k, s, p)
