"""The shared sampling loop: reproducibility, oracle recovery, inpainting, errors."""

from __future__ import annotations

import pytest
import torch

from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import (
    PREDICTION_TYPES,
    SCHEDULER_NAMES,
    SchedulerConfig,
    SchedulerLike,
    make_scheduler,
)

SHAPE = (3, 8, 2)


def _x0() -> torch.Tensor:
    # Inside [-1, 1] so clip_sample never changes the oracle's prediction.
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9


def _oracle(scheduler: SchedulerLike, x0: torch.Tensor, prediction_type: str):
    """A denoiser that knows x0 and returns the exact model output for ``prediction_type``."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = scheduler.alphas_cumprod[t].to(x_t.dtype)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0,
        }[prediction_type]

    return denoise


def _toy_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + t.float() / 100


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_oracle_recovers_x0(name: str, prediction_type: str) -> None:
    scheduler = make_scheduler(name, SchedulerConfig(prediction_type=prediction_type))
    x0 = _x0()
    gen = torch.Generator().manual_seed(0)
    out = sample(_oracle(scheduler, x0, prediction_type), scheduler, 10, shape=SHAPE, generator=gen)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_same_noise_and_seed_give_identical_output(name: str) -> None:
    scheduler = make_scheduler(name, SchedulerConfig())

    def run(seed: int) -> torch.Tensor:
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(seed)
        return sample(_toy_denoiser, scheduler, 5, noise=noise, generator=gen)

    first = run(0)
    assert first.shape == SHAPE and torch.isfinite(first).all()
    torch.testing.assert_close(run(0), first, rtol=0, atol=0)
    if name == "ddpm":  # the only stochastic sampler here: the seed must matter
        assert not torch.equal(run(1), first)


def test_generator_seed_determines_initial_noise() -> None:
    scheduler = make_scheduler("ddim", SchedulerConfig())

    def run(seed: int) -> torch.Tensor:
        return sample(_toy_denoiser, scheduler, 4, shape=SHAPE, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.equal(run(3), run(4))
    explicit = sample(
        _toy_denoiser, scheduler, 4, noise=torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    )
    torch.testing.assert_close(run(3), explicit, rtol=0, atol=0)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_inpainting_keeps_known_entries(name: str) -> None:
    scheduler = make_scheduler(name, SchedulerConfig())
    x0 = _x0()
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[:, :2] = True
    known = x0 + 0.5  # deliberately off the oracle's x0: the mask must win at the end
    gen = torch.Generator().manual_seed(0)
    denoiser = _oracle(scheduler, x0, "epsilon")
    out = sample(denoiser, scheduler, 10, shape=SHAPE, generator=gen, known=known, known_mask=mask)
    assert torch.equal(out[mask], known[mask])
    torch.testing.assert_close(out[~mask], x0[~mask], rtol=0, atol=1e-4)


def test_inpainting_feeds_known_noised_to_current_step() -> None:
    scheduler = make_scheduler("ddim", SchedulerConfig())
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    mask = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)) > 0.5
    known = torch.full(SHAPE, 0.3)
    seen = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    gen = torch.Generator().manual_seed(7)
    sample(spy, scheduler, 3, noise=noise, generator=gen, known=known, known_mask=mask)
    first_x, first_t = seen[0]
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    expected = torch.where(mask, scheduler.add_noise(known, eps, first_t.expand(3)), noise)
    assert [int(t) for _, t in seen] == [66, 33, 0]
    torch.testing.assert_close(first_x, expected, rtol=0, atol=0)


def test_soft_mask_moves_entries_part_way() -> None:
    """A float mask w blends x_t toward the noised known by w; w = 1 is exactly the hard mask."""
    scheduler = make_scheduler("ddim", SchedulerConfig())
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    known = torch.full(SHAPE, 0.3)
    weights = torch.linspace(0, 1, SHAPE[1]).reshape(1, -1, 1)  # (1, T, 1) broadcasts over B and Da
    seen = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    out = sample(spy, scheduler, 3, noise=noise, generator=torch.Generator().manual_seed(7),
                 known=known, known_mask=weights)
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    noised = scheduler.add_noise(known, eps, torch.tensor([66]).expand(3))
    torch.testing.assert_close(seen[0], noise + weights * (noised - noise), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, -1], known[:, -1], rtol=0, atol=0)  # weight 1: held exactly
    hard = sample(spy, scheduler, 3, noise=noise, generator=torch.Generator().manual_seed(7),
                  known=known, known_mask=(weights == 1).expand(SHAPE))
    soft = sample(spy, scheduler, 3, noise=noise, generator=torch.Generator().manual_seed(7),
                  known=known, known_mask=(weights == 1).float())
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-6)


def test_argument_errors() -> None:
    scheduler = make_scheduler("ddim", SchedulerConfig())
    noise = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="num_steps=0"):
        sample(_toy_denoiser, scheduler, 0, shape=SHAPE)
    with pytest.raises(ValueError, match="exactly one of shape"):
        sample(_toy_denoiser, scheduler, 2, shape=SHAPE, noise=noise)
    with pytest.raises(ValueError, match="exactly one of shape"):
        sample(_toy_denoiser, scheduler, 2)
    with pytest.raises(ValueError, match="together"):
        sample(_toy_denoiser, scheduler, 2, noise=noise, known=noise)
    with pytest.raises(ValueError, match=r"known_mask \(3, 8\) does not broadcast to the sample shape \(3, 8, 2\)"):
        bad_mask = torch.ones(3, 8, dtype=torch.bool)
        sample(_toy_denoiser, scheduler, 2, noise=noise, known=noise, known_mask=bad_mask)
    with pytest.raises(ValueError, match=r"known_mask \(2, 3, 8, 2\) does not broadcast"):
        sample(_toy_denoiser, scheduler, 2, noise=noise, known=noise, known_mask=torch.ones(2, *SHAPE) > 0)
    with pytest.raises(TypeError, match="torch.int64"):
        sample(_toy_denoiser, scheduler, 2, noise=noise, known=noise, known_mask=torch.ones(SHAPE, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample(_toy_denoiser, scheduler, 2, noise=noise, known=noise, known_mask=torch.full(SHAPE, 1.5))
