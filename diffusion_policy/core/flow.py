"""Flow matching (rectified flow): the straight path between data and noise, its velocity target,
the training-time distributions of t, and the Euler and Heun samplers behind the scheduler interface
that the one sampling loop (`core/sampling.py`) drives.

Convention: ``x_t = (1 - t) x0 + t noise`` for ``t`` in [0, 1], so ``t = 1`` is pure noise and
``t = 0`` the data (Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2022, "Flow Matching
for Generative Modeling"; the orientation of Esser et al. 2024). The network regresses the velocity
``v = dx_t / dt = noise - x0`` and sampling integrates ``dx/dt = v`` from ``t = 1`` down to 0.
The network reads ``t * TIME_SCALE``: its sinusoidal embedding was made for DDPM step numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

FLOW_SAMPLERS = ("euler", "heun")
TIME_SAMPLINGS = ("uniform", "logit_normal", "beta")
TIME_SCALE = 1000.0


@dataclass
class FlowConfig:
    """How training draws t (the step count and sampler are the policy's inference settings).

    - ``uniform``: t ~ U(0, 1).
    - ``logit_normal``: t = sigmoid(n), n ~ N(``logit_mean``, ``logit_std``) (Esser et al. 2024): more
      weight on the middle of the path.
    - ``beta``: pi0's choice (Black et al. 2024, "pi0", sec. 4), which favours the noisy end: with
      their tau = 1 - t (tau = 0 noise), tau = ``beta_max`` * (1 - u), u ~ Beta(``beta_alpha``,
      ``beta_beta``) = Beta(1.5, 1); here t = 1 - ``beta_max`` (1 - u), in [1 - beta_max, 1].
    """

    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    beta_alpha: float = 1.5
    beta_beta: float = 1.0
    beta_max: float = 0.999

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"flow time_sampling={self.time_sampling!r} is not one of {TIME_SAMPLINGS}")
        if self.logit_std <= 0:
            raise ValueError(f"flow logit_std={self.logit_std} must be > 0")
        if self.beta_alpha <= 0 or self.beta_beta <= 0:
            raise ValueError(f"flow beta_alpha={self.beta_alpha} and beta_beta={self.beta_beta} must be > 0")
        if not 0 < self.beta_max <= 1:
            raise ValueError(f"flow beta_max={self.beta_max} must be in (0, 1]")


def sample_times(n: int, config: FlowConfig, device: torch.device | str | None = None) -> Tensor:
    """``(n,)`` float32 training times in [0, 1], drawn from torch's global RNG as ``config`` says."""
    if config.time_sampling == "uniform":
        return torch.rand(n, device=device)
    if config.time_sampling == "logit_normal":
        return torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(n, device=device))
    concentration = torch.tensor([config.beta_alpha, config.beta_beta], device=device)
    u = torch.distributions.Beta(concentration[0], concentration[1]).sample((n,))
    return 1.0 - config.beta_max * (1.0 - u)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x0 + t noise`` for ``x0, noise (B, ...)`` and ``t`` ``(B,)`` or a scalar."""
    t = t.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1))) if t.ndim else t.to(x0.dtype)
    return x0 + t * (noise - x0)


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The flow's velocity ``noise - x0`` ``(B, ...)``, what the network regresses."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} != noise shape {tuple(noise.shape)}")
    return noise - x0


class FlowMatchScheduler:
    """Integrates ``dx/dt = v`` from t = 1 to 0 on a uniform grid of ``num_steps`` steps, with the
    scheduler interface of :func:`~diffusion_policy.core.sampling.sample` (so inpainting works alike).

    ``euler``: one network call per step, ``x <- x + (t' - t) v(x, t)``. ``heun`` (second order, the
    trapezoid rule): two calls per step, ``timesteps`` lists each step's two times and ``step``
    alternates between the predictor and the corrector. Timesteps are network times (``t * 1000``).
    ``clip_sample`` clamps the final sample to [-1, 1], as the DDPM samplers clip their x0.
    """

    def __init__(self, sampler: str = "euler", clip_sample: bool = True):
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"flow sampler={sampler!r} is not one of {FLOW_SAMPLERS}")
        self.sampler = sampler
        self.clip_sample = clip_sample
        self.timesteps = torch.empty(0)
        self._grid = torch.empty(0)
        self._calls = 0
        self._held: tuple[Tensor, Tensor] | None = None

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be >= 1")
        self._grid = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64)
        times = self._grid[:-1] if self.sampler == "euler" else torch.stack([self._grid[:-1], self._grid[1:]], 1)
        self.timesteps = (times.reshape(-1) * TIME_SCALE).to(torch.float32).to(device)
        self._calls, self._held = 0, None

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t`` of the path at network times ``timesteps`` ``(B,)`` (for inpainting)."""
        return interpolate(original_samples, noise, timesteps.to(torch.float32) / TIME_SCALE)

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: Any = None,
             **_: Any) -> SimpleNamespace:
        """One call's update: ``prev_sample`` is x at the next time (Euler / Heun predictor) or the
        corrected step (Heun corrector)."""
        per_step = 1 if self.sampler == "euler" else 2
        index, phase = divmod(self._calls, per_step)
        if index >= len(self._grid) - 1:
            raise RuntimeError(f"step called {self._calls + 1} times for {len(self._grid) - 1} steps; "
                               f"call set_timesteps first")
        self._calls += 1
        dt = float(self._grid[index + 1] - self._grid[index])
        if phase == 0:
            out = sample + dt * model_output
            if per_step == 2:
                self._held = (sample, model_output)
                return SimpleNamespace(prev_sample=out)
        else:
            assert self._held is not None
            start, velocity = self._held
            out = start + dt * 0.5 * (velocity + model_output)
            self._held = None
        if index == len(self._grid) - 2 and self.clip_sample:
            out = out.clamp(-1.0, 1.0)
        return SimpleNamespace(prev_sample=out)
