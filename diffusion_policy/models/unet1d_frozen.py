"""An inference-only snapshot of :class:`ConditionalUnet1D`, laid out for batch-1 speed.

At batch 1 the U-Net is bound by reading its weights (65.8M parameters for the Push-T network), so
the snapshot (a) stores every convolution as one GEMM matrix in a narrow dtype (bf16 by default:
half the bytes, and the AMX units where the CPU has them) and (b) moves the FiLM conditioning out of
the denoising loop. The FiLM input is ``mish(cat(step_features(t), global_cond))`` and Mish acts
elementwise, so each block's FiLM linear splits into a timestep part, computed once per set of
timesteps and cached, and an observation part, computed once per chunk. Activations, GroupNorm and
Mish stay in float32; only the GEMM operands are narrowed.

The snapshot does not follow later changes to the network's weights: take a new one after training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_policy.models.gemm_conv import GemmConv1d, output_length
from diffusion_policy.models.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D, Conv1dBlock


@dataclass
class _Conv:
    """A frozen :class:`GemmConv1d`: ``(B, C_in, T) float32 -> (B, C_out, To) float32``."""

    weight: Tensor  # (C_out, k * C_in), compute dtype
    bias: Tensor  # (C_out, 1), compute dtype (zeros when the layer has none)
    kernel_size: int
    stride: int
    padding: int

    @classmethod
    def of(cls, conv: GemmConv1d, dtype: torch.dtype) -> _Conv:
        weight = conv.gemm_weight(dtype).detach().clone()
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(conv.out_channels)
        return cls(weight, bias.to(dtype).reshape(-1, 1), conv.kernel_size[0], conv.stride[0], conv.padding[0])

    def __call__(self, x: Tensor) -> Tensor:
        batch, channels, length = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        out_len = output_length(length, k, s, p)
        # Transposed, tap-major columns (k * C_in, B * To), built in the compute dtype: two copies.
        padded = x.new_zeros(batch, channels, length + 2 * p, dtype=self.weight.dtype)
        padded[:, :, p : p + length] = x
        cols = padded.as_strided((k, channels, batch, out_len), (1, length + 2 * p, channels * (length + 2 * p), s))
        y = torch.addmm(self.bias, self.weight, cols.reshape(k * channels, batch * out_len))
        return y.view(-1, batch, out_len).transpose(0, 1).float()


@dataclass
class _UpConv:
    """A frozen ``ConvTranspose1d``: ``(B, C_in, T) -> (B, C_out, (T - 1) * s - 2p + k)`` float32."""

    weight: Tensor  # (k * C_out, C_in), compute dtype
    bias: Tensor  # (C_out,) float32
    kernel_size: int
    stride: int
    padding: int

    @classmethod
    def of(cls, conv: nn.ConvTranspose1d, dtype: torch.dtype) -> _UpConv:
        if conv.dilation != (1,) or conv.groups != 1 or conv.output_padding != (0,):
            raise ValueError(f"unsupported transposed convolution {conv}")
        weight = conv.weight.detach().permute(2, 1, 0).reshape(-1, conv.in_channels).to(dtype).contiguous()
        bias = conv.bias.detach().float() if conv.bias is not None else weight.new_zeros(conv.out_channels).float()
        return cls(weight, bias, conv.kernel_size[0], conv.stride[0], conv.padding[0])

    def __call__(self, x: Tensor) -> Tensor:
        batch, _, length = x.shape
        k, s = self.kernel_size, self.stride
        rows = x.transpose(0, 1).reshape(x.shape[1], -1).to(self.weight.dtype)  # (C_in, B * T)
        taps = (self.weight @ rows).float().view(k, -1, batch, length)  # (k, C_out, B, T)
        full = x.new_zeros(taps.shape[1], batch, (length - 1) * s + k)
        last = s * (length - 1) + 1
        for j in range(k):
            full[:, :, j : j + last : s] += taps[j]
        out = full[:, :, self.padding : full.shape[2] - self.padding].transpose(0, 1)
        return out + self.bias.view(1, -1, 1)


@dataclass
class _Block:
    """Frozen Conv1d -> GroupNorm -> Mish."""

    conv: _Conv
    groups: int
    gn_weight: Tensor
    gn_bias: Tensor
    eps: float

    @classmethod
    def of(cls, block: Conv1dBlock, dtype: torch.dtype) -> _Block:
        conv, norm, _ = block
        return cls(_Conv.of(conv, dtype), norm.num_groups, norm.weight.detach().float(),
                   norm.bias.detach().float(), norm.eps)

    def __call__(self, x: Tensor) -> Tensor:
        return F.mish(F.group_norm(self.conv(x), self.groups, self.gn_weight, self.gn_bias, self.eps))


@dataclass
class _ResBlock:
    """Frozen :class:`ConditionalResidualBlock1D` with its FiLM linear split in two."""

    block1: _Block
    block2: _Block
    residual: _Conv | None
    film_step: tuple[Tensor, Tensor]  # weight (F, Dstep), bias (F,)
    film_obs: Tensor | None  # (F, Dc)
    predict_scale: bool

    @classmethod
    def of(cls, res: ConditionalResidualBlock1D, step_dim: int, dtype: torch.dtype) -> _ResBlock:
        linear = res.cond_encoder[1]
        weight = linear.weight.detach().float()
        obs = weight[:, step_dim:].contiguous() if weight.shape[1] > step_dim else None
        residual = _Conv.of(res.residual, dtype) if isinstance(res.residual, GemmConv1d) else None
        return cls(_Block.of(res.block1, dtype), _Block.of(res.block2, dtype), residual,
                   (weight[:, :step_dim].contiguous(), linear.bias.detach().float()), obs, res.predict_scale)

    def __call__(self, x: Tensor, film: Tensor) -> Tensor:
        h = self.block1(x)
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = torch.addcmul(bias, scale, h)
        else:
            h = h + film
        return self.block2(h) + (x if self.residual is None else self.residual(x))


class FrozenUnet1D:
    """Inference snapshot of a :class:`ConditionalUnet1D` (weights copied at construction).

    ``film(global_cond (B, Dc), timesteps (S,)) -> FiLM`` once per chunk, then
    ``denoise(sample (B, T, Da), film, i) -> (B, T, Da)`` for step ``i`` of those timesteps.
    With ``dtype=torch.float32`` it computes what the network computes, up to rounding.
    """

    def __init__(self, network: ConditionalUnet1D, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self.action_dim = network.action_dim
        self.input_dim = network.input_dim
        self.global_cond_dim = network.global_cond_dim
        self.horizon_multiple = network.horizon_multiple
        self._step_embedding = network.step_embedding
        self._step_mlp = network.step_mlp
        step_dim = network.config.step_embed_dim

        def res(block: ConditionalResidualBlock1D, block_dtype: torch.dtype = dtype) -> _ResBlock:
            return _ResBlock.of(block, step_dim, block_dtype)

        # The first block (it reads the noisy actions) and the output head stay float32: their weights
        # are a sliver of the bytes, and closed-loop Push-T lost success when they were bf16.
        self.down = [(res(b1, torch.float32 if i == 0 else dtype), res(b2),
                      _Conv.of(ds, dtype) if isinstance(ds, GemmConv1d) else None)
                     for i, (b1, b2, ds) in enumerate(network.down)]
        self.mid = [res(block) for block in network.mid]
        self.up = [(res(b1), res(b2), _UpConv.of(us, dtype)) for b1, b2, us in network.up]
        self.final = (_Block.of(network.final[0], torch.float32), _Conv.of(network.final[1], torch.float32))
        # In the order denoise() visits them, which is the order of the FiLM list.
        self.blocks = [b for level in self.down for b in level[:2]] + self.mid
        self.blocks += [b for level in self.up for b in level[:2]]
        self._step_cache: dict[tuple[int, ...], list[Tensor]] = {}

    @torch.no_grad()
    def film(self, global_cond: Tensor | None, timesteps: Tensor) -> list[Tensor]:
        """Per residual block, the FiLM vectors ``(S, B, F, 1)`` for each timestep and batch row."""
        step_part = self._step_film(timesteps)
        if self.global_cond_dim == 0 or global_cond is None:
            return [part[:, None, :, None] for part in step_part]
        if tuple(global_cond.shape[1:]) != (self.global_cond_dim,):
            raise ValueError(f"global_cond must have shape (B, {self.global_cond_dim}), got {tuple(global_cond.shape)}")
        obs = F.mish(global_cond.float())
        return [(part[:, None, :] + obs @ block.film_obs.t())[..., None]
                for part, block in zip(step_part, self.blocks)]

    def _step_film(self, timesteps: Tensor) -> list[Tensor]:
        key = tuple(timesteps.reshape(-1).tolist())  # ints for DDPM steps, floats for flow times
        if key not in self._step_cache:
            device = self.final[1].weight.device
            features = self._step_embedding(torch.tensor(key, device=device))
            step = F.mish(self._step_mlp(features).float())
            self._step_cache[key] = [torch.addmm(block.film_step[1], step, block.film_step[0].t())
                                     for block in self.blocks]
        return self._step_cache[key]

    @torch.no_grad()
    def denoise(self, sample: Tensor, film: list[Tensor], index: int) -> Tensor:
        """Model output ``(B, T, Da)`` for ``sample`` ``(B, T, Din)`` at step ``index`` of ``film``."""
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim or sample.shape[1] % self.horizon_multiple:
            raise ValueError(f"sample must be (B, T, {self.input_dim}) with T divisible by "
                             f"{self.horizon_multiple}, got {tuple(sample.shape)}")
        vectors = iter(f[index] for f in film)
        x = sample.transpose(1, 2).float()
        skips = []
        for block1, block2, downsample in self.down:
            x = block1(x, next(vectors))
            x = block2(x, next(vectors))
            skips.append(x)
            x = downsample(x) if downsample is not None else x
        for block in self.mid:
            x = block(x, next(vectors))
        for block1, block2, upsample in self.up:
            x = block1(torch.cat([x, skips.pop()], dim=1), next(vectors))
            x = upsample(block2(x, next(vectors)))
        block, conv = self.final
        return conv(block(x)).transpose(1, 2).to(sample.dtype)
