"""AdamW as one fused kernel over every parameter in any dense memory layout, with gradient clipping
folded into the same pass.

``torch.optim.AdamW(fused=True)`` copies every non-contiguous parameter to a contiguous buffer and
back at each step. The U-Net's convolution weights are stored tap-major (see
:mod:`diffusion_policy.models.gemm_conv`), so for the 65.8M Push-T network that copy cost ~75 ms per
step on the 2-core CPU. A parameter, its gradient and both moment buffers share one dense layout, so
this optimizer hands the fused kernel the same contiguous permutation of each (views: no copy).

Clipping by global norm (``max_grad_norm``) is done the way ``nn.utils.clip_grad_norm_`` does it,
with the same factor ``max_norm / (norm + 1e-6)`` capped at 1, but instead of a separate pass that
multiplies every gradient, the kernel divides by the inverse factor as it reads the gradient (its
``grad_scale`` input, the one AMP's gradient scaler uses).

State and state dict are ``torch.optim.AdamW``'s, so checkpoints move between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

CLIP_EPS = 1e-6  # as nn.utils.clip_grad_norm_


def dense_view(tensor: Tensor, order: list[int]) -> Tensor:
    """``tensor.permute(order)``, which must be contiguous (a view of the same memory)."""
    view = tensor.permute(order)
    if not view.is_contiguous():
        raise ValueError(
            f"tensor of shape {tuple(tensor.shape)} and strides {tensor.stride()} is not dense in the "
            f"dimension order {order} of its parameter"
        )
    return view


def layout_order(tensor: Tensor) -> list[int]:
    """The dimension order, outermost first, in which a dense tensor's memory is contiguous."""
    return sorted(range(tensor.dim()), key=lambda d: (-tensor.stride(d), d))


class FusedAdamW(torch.optim.AdamW):
    """AdamW (decoupled weight decay) in one fused kernel per parameter group, CPU or CUDA.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.AdamW``.
        max_grad_norm: clip gradients to this global L2 norm inside the update (None: no clipping).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.

    After a step, ``last_grad_norm`` holds the gradients' global norm before clipping (a 0-d tensor,
    only when ``max_grad_norm`` is set).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        max_grad_norm: float | None = None,
    ) -> None:
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm} must be > 0 (or None: no clipping)")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: Tensor | None = None

    def _state_of(self, param: Tensor) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        for key in ("exp_avg", "exp_avg_sq"):  # e.g. loaded from a checkpoint of another layout
            if state[key].stride() != param.stride():
                state[key] = torch.empty_like(param, memory_format=torch.preserve_format).copy_(state[key])
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = None
        if self.max_grad_norm is not None:
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            if not grads:
                return loss
            self.last_grad_norm = nn.utils.get_total_norm(grads)
            grad_scale = torch.clamp((self.last_grad_norm + CLIP_EPS) / self.max_grad_norm, min=1.0)
        for group in self.param_groups:
            # One kernel call per (device, dtype), as torch's AdamW groups them.
            buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FusedAdamW does not support sparse gradients")
                state = self._state_of(p)
                order = layout_order(p)
                grad = p.grad if p.grad.stride() == p.stride() else torch.empty_like(p).copy_(p.grad)
                lists = buckets.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for bucket, tensor in zip(lists, (p, grad, state["exp_avg"], state["exp_avg_sq"])):
                    bucket.append(dense_view(tensor, order))
                lists[4].append(state["step"])
            beta1, beta2 = group["betas"]
            for (device, _), (params, grads_, exp_avgs, exp_avg_sqs, steps) in buckets.items():
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(
                    params, grads_, exp_avgs, exp_avg_sqs, [], steps,
                    lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                    amsgrad=False, maximize=False,
                    grad_scale=None if grad_scale is None else grad_scale.to(device, torch.float32), found_inf=None,
                )
        return loss
