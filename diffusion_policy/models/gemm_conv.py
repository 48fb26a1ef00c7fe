"""1-D convolutions as one matrix multiply each (im2col + GEMM), drop-ins for ``nn.Conv1d`` and
``nn.ConvTranspose1d``.

On CPU, PyTorch's 1-D convolutions are slow: bf16 ones are no faster than fp32 (~100-200 GFLOP/s
here) and their backward dominates the U-Net's training step. Unfolding the input into columns turns
each convolution into one GEMM, which oneDNN runs on the AMX units in bf16 (~350-500 GFLOP/s
measured here for the U-Net's shapes); on the paper-size U-Net it beats the direct convolution in
fp32 too (`docs/performance.md`).

Columns are laid out tap-major, ``(B * To, k * C)``, so that the backward scatter (col2im) adds
contiguous channel rows. The weights are *stored* tap-major as well: the parameter keeps its usual
shape ``(C_out, C_in, k)`` (state dicts are unchanged) but its memory is ``(C_out, k, C_in)``, so the
GEMM matrix ``(C_out, k * C_in)`` is a view, the per-step bf16 cast reads contiguous memory, and the
weight gradient lands in the parameter's own layout with no transposing copy.
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


def tap_major(weight: Tensor) -> Tensor:
    """``(A, B, k)`` -> the same values with memory laid out ``(A, k, B)`` (strides ``(k*B, 1, B)``)."""
    return weight.permute(0, 2, 1).contiguous().permute(0, 2, 1)


class _GemmConvTranspose1dFunction(torch.autograd.Function):
    """``(x (B, C_in, T), weight (C_in, k * C_out), bias (C_out,) | None) -> (B, C_out, (T-1)*s - 2p + k)``.

    A transposed convolution is the adjoint of a convolution: one GEMM to tap-major columns, then
    :func:`col2im`; its backward is :func:`im2col` and two GEMMs.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, k: int, s: int, p: int) -> Tensor:
        batch, _, length = x.shape
        rows = x.transpose(1, 2).reshape(batch * length, -1)
        out_len = (length - 1) * s - 2 * p + k
        y = col2im(rows @ weight, out_len, k, s, p)
        ctx.save_for_backward(rows, weight)
        ctx.geometry = (batch, length, k, s, p, bias is not None)
        return y if bias is None else y + bias[:, None]

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        batch, length, k, s, p, has_bias = ctx.geometry
        cols = im2col(grad_out, k, s, p)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (cols @ weight.t()).view(batch, length, -1).transpose(1, 2).contiguous()
        grad_w = rows.t() @ cols if ctx.needs_input_grad[1] else None
        grad_b = grad_out.sum((0, 2)) if has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


class _TapMajorWeight:
    """Shared by the two layers: the ``(A, B, k)`` weight as the GEMM matrix ``(A, k * B)``."""

    weight: nn.Parameter

    def gemm_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight as a tap-major matrix ``(A, k * B)``: a view when stored tap-major and not
        cast, otherwise one copy."""
        weight = self.weight.permute(0, 2, 1)
        return weight.to(dtype or weight.dtype, memory_format=torch.contiguous_format).reshape(weight.shape[0], -1)

    def _gemm_setup(self, x: Tensor) -> tuple[str, torch.dtype, Tensor | None]:
        """The device type, the GEMM's dtype (autocast's, else the input's) and the bias cast to it."""
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return device, dtype, bias


class GemmConv1d(_TapMajorWeight, nn.Conv1d):
    """``nn.Conv1d`` (same parameters and state dict) that runs as im2col + one GEMM.

    ``(B, C_in, T) -> (B, C_out, To)``. Supports stride and zero padding; not dilation or groups.
    Under ``torch.autocast`` the GEMM runs in the autocast dtype, otherwise in the input's dtype.
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
        self.weight = nn.Parameter(tap_major(self.weight.detach()))

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C_in, T) -> (B, C_out, To)``."""
        device, dtype, bias = self._gemm_setup(x)
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        with torch.autocast(device, enabled=False):
            return _GemmConv1dFunction.apply(x.to(dtype), self.gemm_weight(dtype), bias, k, s, p)


class GemmConvTranspose1d(_TapMajorWeight, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` (same parameters and state dict) that runs as one GEMM + col2im.

    ``(B, C_in, T) -> (B, C_out, (T - 1) * s - 2p + k)``. Supports stride and zero padding; not
    dilation, groups or output padding. Dtype as :class:`GemmConv1d`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dilation != (1,) or self.groups != 1 or self.output_padding != (0,):
            raise ValueError(
                f"GemmConvTranspose1d supports dilation 1, groups 1 and no output padding; got "
                f"dilation={self.dilation}, groups={self.groups}, output_padding={self.output_padding}"
            )
        self.weight = nn.Parameter(tap_major(self.weight.detach()))

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        """``x (B, C_in, T) -> (B, C_out, (T - 1) * s - 2p + k)``."""
        if output_size is not None:
            raise ValueError(f"GemmConvTranspose1d does not take output_size, got {output_size}")
        device, dtype, bias = self._gemm_setup(x)
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        with torch.autocast(device, enabled=False):
            return _GemmConvTranspose1dFunction.apply(x.to(dtype), self.gemm_weight(dtype), bias, k, s, p)
