"""One whole DDIM chunk (FiLM conditioning + every denoising step) replayed as a single CUDA graph.

At batch 1 a chunk of the 65.8M U-Net is a few hundred small kernels; on a GPU their launch cost,
not the arithmetic, sets the latency. :class:`GraphedChunk` captures the fast path
(:class:`~diffusion_policy.models.unet1d_frozen.FrozenUnet1D` + :class:`~diffusion_policy.core.ddim_plan.DDIMPlan`,
whose coefficients are Python floats baked into the kernels) once, reading from static input buffers;
each call copies ``cond`` and ``noise`` in, replays the graph and copies the chunk out.

Without capture (``capture=False``, the only mode on a CPU) it runs the same static-buffer code
eagerly, which is how its equivalence with the fast path is tested on machines without a GPU.
Inpainting (``known`` / ``known_mask``) draws noise inside the loop and is not graphed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.models.unet1d_frozen import FrozenUnet1D

WARMUP_RUNS = 3  # on a side stream before capture, as CUDA graphs require (cuBLAS/cuDNN workspaces)


class GraphedChunk:
    """``(cond (B, Dc) or None, noise (B, T, Da)) -> chunk (B, T, Da)`` for one fixed ``B, T, Da``.

    Args:
        frozen: the network snapshot (its weights are read by the graph; take a new
            ``GraphedChunk`` when the snapshot changes).
        plan: the DDIM steps.
        noise_shape: ``(B, T, Da)``.
        cond_dim: ``Dc``, or 0 for an unconditional network.
        device: where the buffers live.
        capture: record a CUDA graph (default: on CUDA devices). True on a non-CUDA device raises.
    """

    def __init__(
        self,
        frozen: FrozenUnet1D,
        plan: DDIMPlan,
        noise_shape: tuple[int, int, int],
        cond_dim: int,
        device: torch.device,
        capture: bool | None = None,
    ) -> None:
        capture = device.type == "cuda" if capture is None else capture
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graph capture needs a CUDA device, got {device}")
        self.noise_shape = tuple(noise_shape)
        self._frozen, self._plan = frozen, plan
        self._noise = torch.zeros(self.noise_shape, device=device)
        self._cond = torch.zeros(self.noise_shape[0], cond_dim, device=device) if cond_dim else None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: Tensor | None = None
        if capture:
            self._capture()

    def _run(self) -> Tensor:
        film = self._frozen.film(self._cond, self._plan.timesteps)
        return self._plan.sample(lambda x, i: self._frozen.denoise(x, film, i), self._noise)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):  # also fills the snapshot's per-schedule FiLM cache
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self._run()

    @property
    def captured(self) -> bool:
        """Whether calls replay a CUDA graph."""
        return self._graph is not None

    @torch.no_grad()
    def __call__(self, cond: Tensor | None, noise: Tensor) -> Tensor:
        """The denoised chunk ``(B, T, Da)`` (a new tensor) for ``cond`` ``(B, Dc)`` and ``noise`` ``(B, T, Da)``."""
        if tuple(noise.shape) != self.noise_shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; this graph was built for {self.noise_shape}")
        if (cond is None) != (self._cond is None) or (cond is not None and cond.shape != self._cond.shape):
            expected = None if self._cond is None else tuple(self._cond.shape)
            raise ValueError(f"cond has shape {None if cond is None else tuple(cond.shape)}; expected {expected}")
        self._noise.copy_(noise)
        if cond is not None:
            self._cond.copy_(cond)
        if self._graph is None:
            return self._run()
        self._graph.replay()
        return self._out.clone()
