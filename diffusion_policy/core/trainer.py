"""The generic trainer shared by policies and image baselines.

It knows nothing about robots or images: it trains any `nn.Module` with a `compute_loss(batch)`
method on any map-style dataset, with AdamW (fused), cosine learning rate with warm-up, gradient
clipping, EMA, bf16 autocast (on GPU by default, on CPU on request), periodic validation, callbacks,
atomic checkpoints and exact resume. Launched by `torchrun` it trains with DistributedDataParallel
(`core/distributed.py`): `batch_size` is the global batch, split across ranks and `grad_accum`
micro-batches; rank 0 alone writes checkpoints, metrics and evaluations. With `max_minutes` it
trains for a wall-clock budget instead of a step count: the step rate measured over the first steps
fixes the number of steps (and with it the learning-rate schedule), so networks of different speeds
can be compared at equal training time.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from diffusion_policy.core.checkpoint import (
    CheckpointError,
    atomic_directory,
    load_tensors,
    load_torch,
    save_tensors,
    save_text,
    save_torch,
    verify_manifest,
)
from diffusion_policy.core.cpu_features import native_bf16
from diffusion_policy.core.cpu_malloc import keep_freed_memory
from diffusion_policy.core.distributed import (
    BACKENDS,
    broadcast_from_main,
    gather_to_main,
    init_distributed,
    rank_device,
    shutdown,
)
from diffusion_policy.core.ema import EMA, EMAConfig
from diffusion_policy.core.fused_adamw import FusedAdamW
from diffusion_policy.core.resumable_sampler import ResumableBatchSampler
from diffusion_policy.core.run_logger import RunLogger, WandbConfig

MIXED_PRECISION = ("auto", "no", "bf16")


@runtime_checkable
class Trainable(Protocol):
    """What the trainer needs of a model: a scalar loss for a batch (the batch is on the model's device)."""

    def compute_loss(self, batch: Any) -> torch.Tensor: ...


@runtime_checkable
class Exportable(Protocol):
    """A model that can write itself as a self-contained artifact (e.g. a policy directory)."""

    def save(self, path: str | Path) -> None: ...


@dataclass
class TrainerConfig:
    max_steps: int = 10_000
    max_minutes: float | None = None
    calibration_steps: int = 20
    batch_size: int = 256  # the global batch: split across ranks and accumulation steps
    grad_accum: int = 1  # micro-batches accumulated per optimisation step (per rank)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    grad_clip_norm: float | None = 10.0
    use_ema: bool = True
    ema: EMAConfig = field(default_factory=EMAConfig)
    mixed_precision: str = "auto"
    fused_optimizer: bool = True
    keep_freed_memory: bool = True  # CPU: glibc keeps freed tensor memory between steps (cpu_malloc.py)
    device: str = "auto"
    num_workers: int = 0
    val_every: int = 1000
    val_batches: int = 8
    log_every: int = 50
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    seed: int = 42
    progress: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    distributed_backend: str = "auto"  # under torchrun: nccl on CUDA, gloo on CPU
    distributed_timeout_s: float = 300.0  # a collective waiting longer ends the job (a rank died)
    allow_world_size_change: bool = False  # resume a checkpoint written by another number of processes

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "val_every", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes={self.max_minutes} must be > 0 (or None: train max_steps)")
        if self.calibration_steps < 2:
            raise ValueError(f"calibration_steps={self.calibration_steps} must be >= 2")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.distributed_backend not in BACKENDS:
            raise ValueError(f"distributed_backend={self.distributed_backend!r} is not one of {BACKENDS}")
        if self.distributed_timeout_s <= 0:
            raise ValueError(f"distributed_timeout_s={self.distributed_timeout_s} must be > 0")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of {MIXED_PRECISION}")
        self.betas = tuple(self.betas)


class Callback:
    """Hooks called by the trainer; override what you need. Returned dicts are logged as metrics."""

    def on_train_start(self, trainer: Trainer) -> None:
        return None

    def on_step_end(self, trainer: Trainer) -> dict[str, float] | None:
        return None

    def on_train_end(self, trainer: Trainer) -> None:
        return None


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's `random` (call it before building a model, so its init repeats)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    """LR multiplier: linear 0 -> 1 over `warmup_steps`, then half a cosine down to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def rank_seed(seed: int, rank: int) -> int:
    """The RNG seed of `rank`: `seed` itself on rank 0 (a single process), distinct on every other rank."""
    return seed + 1_000_003 * rank


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a nested dict/list batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class Trainer:
    """Trains `model` on `train_dataset`; `fit()` runs to `max_steps` (resuming if asked).

    `max_steps` is `config.max_steps`, or with `config.max_minutes` the number of steps that fit the
    budget (at most `config.max_steps`), fixed after `config.calibration_steps` steps.

    Under torchrun every rank runs this class alike; the model is wrapped in DistributedDataParallel
    and each rank draws its share of the global batch (`ResumableBatchSampler`). The weights, the
    optimizer and the EMA stay equal across ranks; each rank's RNG is seeded from `(seed, rank)` and
    saved in the checkpoint. Only rank 0 writes files, logs, validates and runs the callbacks.

    Run directory layout: `metrics.jsonl`, `checkpoints/step_XXXXXXXX/` (`model.safetensors`,
    `ema.safetensors`, `train_state.pt`, and `policy/` when the model is `Exportable`),
    `checkpoints/latest` naming the newest complete checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        config: TrainerConfig,
        run_dir: str | Path,
        val_dataset: Dataset | None = None,
        callbacks: Sequence[Callback] = (),
        log_config: dict[str, Any] | None = None,
    ):
        if not isinstance(model, Trainable):
            raise TypeError(f"{type(model).__name__} has no compute_loss(batch) method")
        self.config = config
        self.run_dir = Path(run_dir)
        device = resolve_device(config.device)
        self.dist = init_distributed(device, config.distributed_backend, config.distributed_timeout_s)
        self.device = rank_device(device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.mixed_precision == "bf16" and self.device.type == "cpu" and not native_bf16():
            warnings.warn("mixed_precision='bf16' on a CPU without native bf16 (no AVX512-BF16 / AMX): every "
                          "bf16 operation is emulated, which was measured 37x slower than float32 "
                          "for a training step on an AVX2-only EPYC; use mixed_precision='auto'", stacklevel=2)
        if config.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.model = model.to(self.device)
        self.callbacks = list(callbacks) if self.dist.is_main else []
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.last_metrics: dict[str, float] = {}
        self.max_steps = config.max_steps
        self._fit_started: float | None = None
        self._saved_step: int | None = None
        self.ema = EMA(self.model, config.ema) if config.use_ema else None
        # Fused AdamW: one kernel over all parameters instead of ~10 passes of foreach ops, gradient
        # clipping folded into it (CPU and CUDA).
        self.fused_optimizer = config.fused_optimizer and self.device.type in ("cpu", "cuda")
        # A model may split its parameters into groups (e.g. no weight decay on norms and biases).
        groups = getattr(self.model, "parameter_groups", None)
        params = groups(config.weight_decay) if callable(groups) else self.model.parameters()
        if self.fused_optimizer:
            self.optimizer: torch.optim.AdamW = FusedAdamW(
                params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                max_grad_norm=config.grad_clip_norm,
            )
        else:
            self.optimizer = torch.optim.AdamW(
                params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )
        # The schedule reads `self.max_steps` at every step: a time budget may still change it.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_with_warmup(config.warmup_steps, self.max_steps)(step)
        )
        # After the optimizer (which holds the plain parameters): DDP broadcasts rank 0's weights.
        self.loss_module: nn.Module = _LossOf(self.model)
        if self.dist.enabled:
            # Kernel-size-1 convolution weights get gradients whose size-1 dimension has another stride
            # than the parameter's: the same memory layout, which DDP flags without need.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.loss_module = DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.sampler = ResumableBatchSampler(len(train_dataset), config.batch_size, config.seed, self.dist.rank,
                                             self.dist.world_size, config.grad_accum)
        self.loader = self._loader(train_dataset, self.sampler)
        self.batches_per_epoch = self.sampler.batches_per_epoch
        has_val = self.dist.is_main and val_dataset is not None and len(val_dataset) > 0
        self.val_loader = self._loader(val_dataset) if has_val else None
        self.logger = RunLogger(self.run_dir, config.wandb, log_config) if self.dist.is_main else None
        seed_everything(rank_seed(config.seed, self.dist.rank))

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and deploy: the EMA copy when EMA is on."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _loader(self, dataset: Dataset, batches: ResumableBatchSampler | None = None) -> DataLoader:
        """Training batches from `batches` (persistent workers), or validation batches in order.

        A dataset with `__getitems__` gathers each batch in one read per key. Worker seeds are fixed by
        `(seed, rank)` for the run; the datasets of this package draw no random numbers (augmentation
        runs in the model, on the training RNG), so resume stays exact with workers.
        """
        workers = self.config.num_workers
        options: dict[str, Any] = dict(num_workers=workers, collate_fn=collate_batch,
                                       pin_memory=self.device.type == "cuda",
                                       generator=torch.Generator().manual_seed(rank_seed(self.config.seed,
                                                                                         self.dist.rank)))
        if batches is None:
            size = self.config.batch_size // self.config.grad_accum
            return DataLoader(dataset, batch_size=size, shuffle=False, **options)
        return DataLoader(dataset, batch_sampler=batches, persistent_workers=workers > 0, **options)

    def _autocast(self) -> torch.autocast:
        mode = self.config.mixed_precision
        enabled = mode == "bf16" or (mode == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, *micro_batches: Any) -> float:
        """One optimisation step on this rank's `micro_batches` (`grad_accum` of them); returns their mean loss.

        Each micro-batch's loss is scaled by `1 / grad_accum` and DDP averages the gradients over ranks,
        so the step follows the mean loss of the whole global batch.
        """
        if len(micro_batches) != self.config.grad_accum:
            raise ValueError(f"train_step got {len(micro_batches)} micro-batches, grad_accum={self.config.grad_accum}")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = self.loss_module.no_sync() if self.dist.enabled and not last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss = self.loss_module(move_to(batch, self.device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {self.step} "
                                             f"(rank {self.dist.rank}, micro-batch {i})")
                (loss / len(micro_batches)).backward()
            total += loss.item()
        if self.config.grad_clip_norm is not None and not self.fused_optimizer:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return total / len(micro_batches)

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss of the evaluation weights over up to `val_batches` validation batches.

        The noise and timesteps are drawn from a fixed seed inside a forked RNG, so the number is
        comparable across steps and does not perturb the training RNG stream.
        """
        if self.val_loader is None:
            return None
        model = self.eval_model
        model.eval()
        losses = []
        with torch.random.fork_rng(devices=[]), self._autocast():
            torch.manual_seed(self.config.seed)
            for i, batch in enumerate(self.val_loader):
                if i >= self.config.val_batches:
                    break
                losses.append(model.compute_loss(move_to(batch, self.device)).item())
        return float(np.mean(losses))

    def fit(self) -> dict[str, float]:
        """Train until `max_steps`; returns the last logged metrics. A distributed run leaves its process
        group at the end (after the final checkpoint)."""
        cfg = self.config
        for callback in self.callbacks:
            callback.on_train_start(self)
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
                   desc="train", unit="step")
        self._fit_started = time.perf_counter() if self.step == 0 else None
        try:
            while self.step < self.max_steps:
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                micro_batches = []
                for batch in self.loader:
                    micro_batches.append(batch)
                    if len(micro_batches) < cfg.grad_accum:
                        continue
                    loss = self.train_step(*micro_batches)
                    micro_batches = []
                    self.step += 1
                    self.batch_in_epoch += 1
                    self._after_step(loss, bar)
                    if self.step >= self.max_steps:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
            if self._saved_step != self.step:
                self.save_checkpoint()
            shutdown(self.dist)  # the last collective is behind us; rank 0 may still save and evaluate
            for callback in self.callbacks:
                callback.on_train_end(self)
        finally:
            bar.close()
            if self.logger is not None:
                self.logger.close()
        return self.last_metrics

    def _fit_budget(self, bar: tqdm) -> None:
        """With `max_minutes`, fix `max_steps` once the first `calibration_steps` steps of a run are timed.

        A resumed run keeps the `max_steps` its checkpoint recorded.
        """
        cfg = self.config
        if cfg.max_minutes is None or self._fit_started is None or self.step != cfg.calibration_steps:
            return
        elapsed = time.perf_counter() - self._fit_started
        remaining = cfg.max_minutes * 60.0 - elapsed
        steps = min(cfg.max_steps, self.step + max(0, int(remaining * cfg.calibration_steps / elapsed)))
        self.max_steps = broadcast_from_main(steps, self.dist)  # every rank stops at rank 0's count
        bar.total = self.max_steps
        bar.refresh()

    def _after_step(self, loss: float, bar: tqdm) -> None:
        cfg = self.config
        self._fit_budget(bar)
        metrics: dict[str, float] = {}
        if self.step % cfg.log_every == 0 or self.step == self.max_steps:
            metrics.update(loss=loss, lr=self.lr_scheduler.get_last_lr()[0], epoch=self.epoch)
        if self.dist.is_main and (self.step % cfg.val_every == 0 or self.step == self.max_steps):
            val = self.validation_loss()
            if val is not None:
                metrics["val_loss"] = val
        for callback in self.callbacks:
            metrics.update(callback.on_step_end(self) or {})
        if metrics and self.logger is not None:
            self.logger.log(metrics, self.step)
            self.last_metrics.update(metrics)
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "val_loss")})
        if self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        bar.update(1)

    def _training_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step,
            "max_steps": self.max_steps,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "world_size": self.dist.world_size,
            "grad_accum": self.config.grad_accum,
            "rng": rng,  # one entry per rank
        }

    def save_checkpoint(self) -> Path:
        """Write the complete training state to `checkpoints/step_XXXXXXXX/` atomically, with a manifest.

        Every rank calls it (their RNG states are gathered); rank 0 alone writes.
        """
        target = self.checkpoint_dir / f"step_{self.step:08d}"
        rng = gather_to_main(_rng_state(), self.dist)
        self._saved_step = self.step
        if not self.dist.is_main:
            return target
        with atomic_directory(target, manifest=True) as tmp:
            save_tensors(self.model.state_dict(), tmp / "model.safetensors")
            if self.ema is not None:
                save_tensors(self.ema.state_dict(), tmp / "ema.safetensors")
            save_torch(self._training_state(rng), tmp / "train_state.pt")
            if isinstance(self.eval_model, Exportable):
                self.eval_model.save(tmp / "policy")
        save_text(target.name + "\n", self.checkpoint_dir / "latest")
        self._prune_checkpoints()
        return target

    def _prune_checkpoints(self) -> None:
        for old in self.checkpoints()[self.config.keep_checkpoints:]:
            shutil.rmtree(old)

    def checkpoints(self) -> list[Path]:
        """This run's checkpoint directories, newest first."""
        return sorted((p for p in self.checkpoint_dir.glob("step_*") if p.is_dir()), reverse=True)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run directory, if any."""
        pointer = self.checkpoint_dir / "latest"
        return self.checkpoint_dir / pointer.read_text().strip() if pointer.is_file() else None

    def resume(self, checkpoint: str | Path | None = None) -> bool:
        """Restore weights, EMA, optimizer, LR schedule, RNG and position; False if nothing to resume.

        Without `checkpoint`, the newest one is taken; if it is damaged (a file missing, truncated or
        differing from its manifest) the next older intact one is, with a warning naming the damage.
        """
        if checkpoint is not None:
            self._restore(Path(checkpoint))
            return True
        latest = self.latest_checkpoint()
        candidates = ([latest] if latest is not None and latest.is_dir() else []) + \
            [p for p in self.checkpoints() if p != latest]
        failures = []
        for path in candidates:
            try:
                self._restore(path)
            except (CheckpointError, FileNotFoundError, KeyError) as exc:
                failures.append(f"{path}: {exc}")
                continue
            if failures:
                warnings.warn(f"resumed from {path.name}, not the newest checkpoint: " + "; ".join(failures),
                              stacklevel=2)
            return True
        if failures:
            raise CheckpointError(f"no intact checkpoint in {self.checkpoint_dir}: " + "; ".join(failures))
        return False

    def _restore(self, path: Path) -> None:
        verify_manifest(path)
        self.model.load_state_dict(load_tensors(path / "model.safetensors", self.device))
        if self.ema is not None:
            self.ema.load_state_dict(load_tensors(path / "ema.safetensors", self.device))
        state = load_torch(path / "train_state.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self._saved_step = self.step
        if self.config.max_minutes is not None:
            self.max_steps = state.get("max_steps", self.max_steps)
        rng = state.get("rng", [state])  # a checkpoint from before distributed training: one process
        saved = (len(rng), state.get("grad_accum", 1))
        if saved != (self.dist.world_size, self.config.grad_accum):
            change = (f"{path} was written by {saved[0]} process(es) with grad_accum={saved[1]}; this run has "
                      f"{self.dist.world_size} with grad_accum={self.config.grad_accum}")
            if not self.config.allow_world_size_change:
                raise ValueError(f"{change}. Resume with the same numbers, or set training.allow_world_size_change"
                                 f"=true to continue anyway")
            warnings.warn(f"{change}: the global batches stay the same, but each rank's random stream (noise, "
                          f"timesteps) starts afresh from (seed, rank, step), so the run is no longer "
                          f"bit-identical to an uninterrupted one", stacklevel=3)
            seed_everything(rank_seed(self.config.seed, self.dist.rank) + self.step)
        else:
            _set_rng_state(rng[self.dist.rank])


def collate_batch(items: Any) -> Any:
    """The loaders' `collate_fn`: a batch a dataset gathered itself (`__getitems__` returning a dict)
    passes through; a list of items is stacked by PyTorch's default collate."""
    return items if isinstance(items, Mapping) else default_collate(items)


class _LossOf(nn.Module):
    """`model.compute_loss` as a forward pass, so DistributedDataParallel sees it (it hooks `forward`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> torch.Tensor:
        return self.model.compute_loss(batch)


def _rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states (numpy's key array as a tensor)."""
    np_state = np.random.get_state()
    return {
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "rng_python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    name, keys, *rest = state["rng_numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["rng_python"])
