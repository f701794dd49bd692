"""Finetuning a diffusion UNet on the ε-prediction loss: progress reports, resumable run state, cancel.

After surgery a UNet has lost activations and convs; LayerMerge finetunes it with DDPM's own
recipe (LAYERMERGE.md §5.2: Adam, lr 4e-4, batch 128, EMA 0.9999, 100K steps on CIFAR-10; Adam with
β₁ = 0.9, eps 1e-8 and no weight decay in §4.2's importance runs). :func:`finetune_unet` is the UNet
family's loop (``UNetFamily.finetune``, run by the finetune workflow for the CLI and the app alike,
and by the importance workers): it never prints, reports through a callback, and follows
``core.finetune``'s conventions: it stops before its next step once a ``threading.Event`` is set,
and its result's ``status`` is "completed" or "cancelled". The data order and the noise are
seeded, so a seeded run is reproducible.

Unlike ``core.finetune`` it trains the module it is given, in place (the callers already hold a
fresh copy, and UNets with replaced blocks need no ``StepNetwork`` wrapper). Given a ``checkpoint``
file it writes the whole run state there every ``checkpoint_every`` steps and when it stops, and a
later call with the same file resumes bit for bit, as if it had never stopped.

Example:
    >>> from core.families.unet.data import load_diffusion_digits
    >>> result = finetune_unet(unet, load_diffusion_digits(), UNetFinetuneConfig(steps=300))
    >>> result.holdout_loss_after < result.holdout_loss_before  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import DataError, LayerMergeError, UnsafeCheckpointError
from core.families.unet.data import DiffusionData
from core.families.unet.loss import epsilon_loss, make_train_scheduler, training_loss
from core.files import atomic_torch_save, read_untrusted_checkpoint
from core.finetune import FinetuneConfigError, resolve_device

__all__ = [
    "UNetFinetuneConfig",
    "UNetFinetuneSettings",
    "UNetFinetuneProgress",
    "UNetFinetuneResult",
    "finetune_unet",
    "unet_learning_rate_at",
]

HOLDOUT_SEED = 0  # epsilon_loss's seed for every holdout evaluation: comparable across runs
_STATS_WINDOW = 20  # steps the reported training loss is averaged over
RUN_STATE_FORMAT = "layermerge-unet-finetune-state"
RUN_STATE_VERSION = 1  # states written before the field are version 1
_NOISE_STREAM = 1_000_003  # offsets the noise generator's seed from the data order's
DEFAULT_CHECKPOINT_EVERY = 50  # steps between run-state checkpoints


@dataclass(frozen=True)
class UNetFinetuneConfig:
    """How to finetune a UNet; the defaults suit a short recovery finetune of the digits UNet.

    The learning rate warms up linearly over ``warmup_steps``, then stays (``cosine=False``, the
    DDPM recipe) or follows a cosine to zero.
    """

    steps: int = 300  # optimizer steps
    lr: float = 4e-4  # the paper's DDPM finetuning lr (LAYERMERGE.md §5.2)
    batch_size: int = 64
    seed: int = 0  # seeds the data order and the noise
    ema_decay: float | None = None  # e.g. 0.999; the result then holds the EMA weights
    eval_every: int = 100  # steps between holdout evaluations (one also at the end)
    warmup_steps: int = 0
    cosine: bool = False
    grad_clip: float | None = None  # max gradient norm; None clips nothing

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, Any]] = [
            (_positive_int(self.steps), "steps must be a positive integer", self.steps),
            (_positive_number(self.lr), "lr must be a positive number", self.lr),
            (
                _positive_int(self.batch_size),
                "batch_size must be a positive integer",
                self.batch_size,
            ),
            (
                _int(self.seed) and 0 <= self.seed < 2**63,
                "seed must be an integer in [0, 2**63)",
                self.seed,
            ),
            (
                self.ema_decay is None or (_number(self.ema_decay) and 0.0 < self.ema_decay < 1.0),
                "ema_decay must be None or in (0, 1)",
                self.ema_decay,
            ),
            (
                _positive_int(self.eval_every),
                "eval_every must be a positive integer",
                self.eval_every,
            ),
            (
                _int(self.warmup_steps)
                and self.warmup_steps >= 0
                and (not _positive_int(self.steps) or self.warmup_steps < self.steps),
                "warmup_steps must be an integer in [0, steps)",
                self.warmup_steps,
            ),
            (isinstance(self.cosine, bool), "cosine must be True or False", self.cosine),
            (
                self.grad_clip is None or _positive_number(self.grad_clip),
                "grad_clip must be None or a positive number",
                self.grad_clip,
            ),
        ]
        for ok, message, value in checks:
            if not ok:
                raise FinetuneConfigError(f"{message} (got {value!r})")


@dataclass(frozen=True)
class UNetFinetuneSettings:
    """A finetune job's settings: the loop's options, and where and how often it saves.

    Only ``config`` must match for a run state to resume (it is stored there); the device and
    the checkpoint interval do not change the result.
    """

    config: UNetFinetuneConfig
    device: str = "cpu"  # resolved: "cpu", "cuda" or "cuda:N"
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        resolve_device(self.device)  # malformed, or CUDA asked for but absent
        if not _positive_int(self.checkpoint_every):
            raise FinetuneConfigError(
                f"checkpoint_every must be a positive integer (got {self.checkpoint_every!r})"
            )

    def to_dict(self) -> dict[str, Any]:
        """The loop's options, as metrics.json records them."""
        return asdict(self.config)


@dataclass(frozen=True)
class UNetFinetuneProgress:
    """One report to the progress callback, sent after every optimizer step."""

    step: int  # steps done, 1..steps
    steps: int
    train_loss: float  # mean per-pixel training MSE over the last few steps
    holdout_loss: float | None  # epsilon_loss on the holdout split, at evaluation steps only
    elapsed_s: float  # seconds since the call started
    eta_s: float | None = None  # estimated seconds left (not kept in the run state's history)

    @property
    def total_steps(self) -> int:
        return self.steps

    @property
    def loss(self) -> float:
        return self.train_loss

    def readout(self) -> str:
        """The figures a progress bar shows after ``step/total`` (the family-neutral protocol)."""
        holdout = f" holdout {self.holdout_loss:.3f}" if self.holdout_loss is not None else ""
        return f"loss {self.train_loss:.4f}{holdout}"


@dataclass(frozen=True)
class UNetFinetuneResult:
    """What :func:`finetune_unet` returns; the shared fields are those of ``core.finetune``'s."""

    network: nn.Module  # the module passed in, trained in place, in eval mode
    status: str  # "completed" or "cancelled" (the cancel event ended the run early)
    step: int  # steps done, over every resume
    total_steps: int
    resumed_from: int  # the step this call started from (0 when fresh)
    loss: float  # the last mean training loss (nan when no step was ever taken)
    elapsed_s: float
    device: str
    checkpoint_path: Path | None
    history: list[UNetFinetuneProgress]  # every report, in order, over every resume
    holdout_loss_before: float = math.nan
    holdout_loss_after: float = math.nan

    # The names before the two finetune APIs were unified, kept for pages/_shared/diffusion.py
    # and core/families/unet/demo.py until they move to the workflows.
    @property
    def unet(self) -> nn.Module:
        return self.network

    @property
    def steps_done(self) -> int:
        return self.step

    @property
    def stopped(self) -> bool:
        return self.status == "cancelled"


def finetune_unet(
    unet: nn.Module,
    data: DiffusionData,
    config: UNetFinetuneConfig | None = None,
    *,
    progress: Callable[[UNetFinetuneProgress], None] | None = None,
    cancel: threading.Event | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    should_stop: Callable[[], bool] | None = None,
) -> UNetFinetuneResult:
    """Train ``unet`` in place on ``data.train`` with the ε-prediction loss.

    Args:
        unet: a UNet called as ``unet(noisy, timesteps).sample``, on any device; it trains there.
        data: the splits; trains on ``train``, evaluates on ``holdout``
            (``epsilon_loss(unet, data.holdout, seed=0)``) before, every ``eval_every`` steps,
            and at the end.
        config: the options; :class:`UNetFinetuneConfig` defaults when None.
        progress: called after every step with a :class:`UNetFinetuneProgress`. An exception it
            raises stops the run and propagates; the last periodic checkpoint stays.
        cancel: checked before every step; once set, the run saves its state and ends with
            status ``"cancelled"`` and the weights of the steps done (EMA weights, if EMA is on).
        checkpoint: a file the whole run state (weights, optimizer, EMA, data order, noise
            generators, history) is written to atomically every ``checkpoint_every`` steps and
            when the run stops. If it exists when the call starts, and was written with the same
            config for the same network, the run resumes from it, bit for bit as if never stopped.
        checkpoint_every: steps between checkpoints.
        should_stop: the former cancel convention (a callable polled before every step), kept
            only for pages/_shared/diffusion.py until it moves to the workflows; use ``cancel``.

    Returns:
        The trained UNet (the same module, eval mode), how the run ended, every progress report
        (over every resume), and the holdout loss before and after.

    Raises:
        FinetuneConfigError: ``config`` is not a :class:`UNetFinetuneConfig`, or the run state
            was written with other options or for another network.
        UnsafeCheckpointError: the run state is unreadable, unsafe, damaged or malformed.
        DataError: the train or holdout split is empty.
        LayerMergeError: the UNet has no trainable parameters.
    """
    config = config if config is not None else UNetFinetuneConfig()
    if not isinstance(config, UNetFinetuneConfig):
        raise FinetuneConfigError(
            f"finetune_unet takes a UNetFinetuneConfig, got {type(config).__name__}"
        )
    if len(data.train) == 0 or len(data.holdout) == 0:
        raise DataError(
            f"diffusion data {data.name!r} needs non-empty train and holdout splits, got "
            f"{len(data.train)} and {len(data.holdout)} images"
        )
    parameters = [p for p in unet.parameters() if p.requires_grad]
    if not parameters:
        raise LayerMergeError("the UNet has no trainable parameters to finetune")
    device = parameters[0].device
    scheduler = make_train_scheduler()
    optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    ema = _Ema(unet, config.ema_decay) if config.ema_decay is not None else None

    def cancelled() -> bool:
        return (cancel is not None and cancel.is_set()) or (
            should_stop is not None and should_stop()
        )

    started = time.perf_counter()
    order_generator = torch.Generator().manual_seed(config.seed)
    noise_generator = torch.Generator().manual_seed(config.seed + _NOISE_STREAM)
    order = torch.empty(0, dtype=torch.long)
    window: deque[float] = deque(maxlen=_STATS_WINDOW)
    history: list[UNetFinetuneProgress] = []
    step, status = 0, "completed"
    count = len(data.train)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = _read_run_state(path, unet, config, count=count)
        where = f"finetune state {path}"
        try:
            unet.load_state_dict(state["unet"], strict=True)
            optimizer.load_state_dict(state["optimizer"])
            order_generator.set_state(state["order_generator"])
            noise_generator.set_state(state["noise_generator"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            message = " ".join(str(exc).split())[:200]
            raise UnsafeCheckpointError(f"{where} does not fit this run: {message}") from exc
        if ema is not None:
            ema.shadow = {k: v.clone() for k, v in state["ema"].items()}
            ema.updates = int(state["ema_updates"])
        order = state["order"]
        step = int(state["step"])
        window.extend(float(v) for v in state["window"])
        history = [UNetFinetuneProgress(**h) for h in state["history"]]
        holdout_before = float(state["holdout_before"])
    else:
        holdout_before = epsilon_loss(unet, data.holdout, seed=HOLDOUT_SEED)
    resumed_from = step

    def save_state() -> None:
        if path is None:
            return
        run_state = {
            "format": RUN_STATE_FORMAT,
            "format_version": RUN_STATE_VERSION,
            "config": asdict(config),
            "parameters": sorted(unet.state_dict()),
            "unet": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "ema": ema.shadow if ema is not None else {},
            "ema_updates": ema.updates if ema is not None else 0,
            "order_generator": order_generator.get_state(),
            "noise_generator": noise_generator.get_state(),
            "order": order,
            "step": step,
            "window": list(window),
            "history": [_history_entry(h) for h in history],
            "holdout_before": holdout_before,
        }
        atomic_torch_save(run_state, path)

    unet.train()
    while step < config.steps:
        if cancelled():
            status = "cancelled"
            save_state()
            break
        if len(order) < config.batch_size:  # a fresh epoch, without dropping any image
            order = torch.cat([order, torch.randperm(count, generator=order_generator)])
        indices, order = order[: config.batch_size], order[config.batch_size :]
        images = data.train[indices].to(device=device, dtype=torch.float32)
        lr = unet_learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(unet, images, noise_generator, scheduler)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(unet)
        step += 1
        window.append(float(loss.detach()))
        holdout = None
        if step % config.eval_every == 0 or step == config.steps:
            holdout = epsilon_loss(unet, data.holdout, seed=HOLDOUT_SEED)
        elapsed = time.perf_counter() - started
        report = UNetFinetuneProgress(
            step=step,
            steps=config.steps,
            train_loss=sum(window) / len(window),
            holdout_loss=holdout,
            elapsed_s=elapsed,
            eta_s=elapsed / (step - resumed_from) * (config.steps - step),
        )
        history.append(report)
        if step % checkpoint_every == 0 or step == config.steps:
            save_state()
        if progress is not None:
            progress(report)

    if ema is not None and step > 0:
        ema.copy_to(unet)
    unet.eval()
    holdout_after = epsilon_loss(unet, data.holdout, seed=HOLDOUT_SEED)
    last_loss = history[-1].train_loss if history else math.nan
    progress_fields = {"step": step, "total_steps": config.steps, "resumed_from": resumed_from}
    return UNetFinetuneResult(
        network=unet,
        status=status,
        loss=last_loss,
        elapsed_s=time.perf_counter() - started,
        device=str(device),
        checkpoint_path=path,
        history=history,
        holdout_loss_before=holdout_before,
        holdout_loss_after=holdout_after,
        **progress_fields,
    )


def _history_entry(report: UNetFinetuneProgress) -> dict[str, Any]:
    """A report as the run state's history keeps it: the estimate of time left belongs to one
    call, not to the run, so the state keeps the fields it has always had."""
    entry = asdict(report)
    del entry["eta_s"]
    return entry


def _read_run_state(
    path: Path, unet: nn.Module, config: UNetFinetuneConfig, *, count: int
) -> dict[str, Any]:
    """A run state written by :func:`finetune_unet` for this network, config and data, read
    safely and validated as strictly as a classifier's finetune checkpoint
    (``core.finetune.load_finetune_checkpoint``): every field's type, every tensor's shape and
    dtype against this network, finite weights, step counts in range, the data order's indices
    within the training split.

    Args:
        path: the run state file.
        unet: the network being finetuned (its parameters' names and shapes).
        config: this run's options (the state's must be the same).
        count: the size of the training split (the data order indexes it).

    Raises:
        UnsafeCheckpointError: unreadable, unsafe, damaged, or malformed (names the field).
        FinetuneConfigError: written with other options or for another network.
    """
    state, _ = read_untrusted_checkpoint(path)
    name = f"finetune state {path}"
    if not isinstance(state, dict) or state.get("format") != RUN_STATE_FORMAT:
        raise UnsafeCheckpointError(f"{path} is not a UNet finetune state")
    version = state.get("format_version", RUN_STATE_VERSION)
    if version != RUN_STATE_VERSION or isinstance(version, bool):
        raise UnsafeCheckpointError(
            f"{name}: version {version!r} is not supported (this version reads {RUN_STATE_VERSION})"
        )
    missing = [key for key in _RUN_STATE_KEYS if key not in state]
    if missing:
        raise UnsafeCheckpointError(f"{name} lacks {', '.join(missing)}")
    if state["config"] != asdict(config):
        raise FinetuneConfigError(
            f"{path} was written with other finetune options ({state.get('config')}); use the "
            "same options to resume, or another checkpoint file"
        )
    expected = unet.state_dict()
    if state["parameters"] != sorted(expected):
        raise FinetuneConfigError(f"{path} was written for another network")
    _check_tensors(state["unet"], expected, f"{name}: unet")
    if config.ema_decay is None:
        if state["ema"] != {} or state["ema_updates"] != 0:
            raise UnsafeCheckpointError(f"{name}: holds an EMA, but this run keeps none")
    else:
        floating = {k: v for k, v in expected.items() if v.is_floating_point()}
        _check_tensors(state["ema"], floating, f"{name}: ema")
        _require(_int(state["ema_updates"]) and state["ema_updates"] >= 0, name, "ema_updates")
    _check_optimizer(state["optimizer"], unet, name)
    for key in ("order_generator", "noise_generator"):
        value = state[key]
        ok = isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
        _require(ok, name, key)
    order = state["order"]
    _require(
        isinstance(order, torch.Tensor)
        and order.dtype == torch.long
        and order.dim() == 1
        and len(order) <= 2 * count + config.batch_size
        and (len(order) == 0 or (int(order.min()) >= 0 and int(order.max()) < count)),
        name,
        "order",
        f"indices of the {count} training images",
    )
    step = state["step"]
    _require(_int(step) and 0 <= step <= config.steps, name, "step", f"0..{config.steps}")
    window = state["window"]
    _require(
        isinstance(window, list)
        and len(window) <= _STATS_WINDOW
        and all(_number(v) for v in window),
        name,
        "window",
    )
    history = state["history"]
    _require(
        isinstance(history, list)
        and len(history) == step
        and all(_valid_history(h, i + 1, config.steps) for i, h in enumerate(history)),
        name,
        "history",
        "one report per step done",
    )
    _require(_number(state["holdout_before"]), name, "holdout_before", "a finite number")
    return state


_RUN_STATE_KEYS = (
    "config",
    "parameters",
    "unet",
    "optimizer",
    "ema",
    "ema_updates",
    "order_generator",
    "noise_generator",
    "order",
    "step",
    "window",
    "history",
    "holdout_before",
)
_HISTORY_KEYS = frozenset({"step", "steps", "train_loss", "holdout_loss", "elapsed_s"})


def _require(ok: bool, name: str, field: str, wanted: str = "") -> None:
    if not ok:
        detail = f" (expected {wanted})" if wanted else ""
        raise UnsafeCheckpointError(f"{name}: {field!r} is malformed{detail}")


def _check_tensors(given: Any, expected: dict[str, torch.Tensor], name: str) -> None:
    """``given`` holds exactly ``expected``'s names, with their shapes and dtypes, all finite."""
    if not isinstance(given, dict) or set(given) != set(expected):
        raise UnsafeCheckpointError(f"{name} does not hold this network's tensors")
    for key, reference in expected.items():
        value = given[key]
        if (
            not isinstance(value, torch.Tensor)
            or value.shape != reference.shape
            or value.dtype != reference.dtype
        ):
            raise UnsafeCheckpointError(f"{name}: {key!r} does not fit this network")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UnsafeCheckpointError(
                f"{name}: {key!r} holds NaN or infinity (a diverged or damaged run); start afresh"
            )


def _check_optimizer(saved: Any, unet: nn.Module, name: str) -> None:
    """Adam's state: one entry per trainable parameter, moments of its shape, finite."""
    parameters = [p for p in unet.parameters() if p.requires_grad]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    entries = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(entries, dict) or len(groups) != 1:
        raise UnsafeCheckpointError(f"{name}: 'optimizer' is not this run's Adam state")
    indices = groups[0].get("params") if isinstance(groups[0], dict) else None
    if indices != list(range(len(parameters))):
        raise UnsafeCheckpointError(f"{name}: 'optimizer' is for another set of parameters")
    for index, entry in entries.items():
        if not _int(index) or not 0 <= index < len(parameters) or not isinstance(entry, dict):
            raise UnsafeCheckpointError(f"{name}: 'optimizer' holds a malformed entry")
        shape = parameters[index].shape
        for key in ("exp_avg", "exp_avg_sq"):
            value = entry.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != shape:
                raise UnsafeCheckpointError(f"{name}: optimizer {key} of parameter {index}")
            if not bool(torch.isfinite(value).all()):
                raise UnsafeCheckpointError(
                    f"{name}: optimizer {key} of parameter {index} holds NaN or infinity"
                )
        step = entry.get("step")
        if not (isinstance(step, torch.Tensor) and step.numel() == 1) and not _number(step):
            raise UnsafeCheckpointError(f"{name}: optimizer step of parameter {index}")


def _valid_history(entry: Any, step: int, steps: int) -> bool:
    if not isinstance(entry, dict) or set(entry) != _HISTORY_KEYS:
        return False
    holdout = entry["holdout_loss"]
    return (
        entry["step"] == step
        and _int(entry["step"])
        and entry["steps"] == steps
        and _int(entry["steps"])
        and _number(entry["train_loss"])
        and (holdout is None or _number(holdout))
        and _number(entry["elapsed_s"])
        and entry["elapsed_s"] >= 0
    )


def unet_learning_rate_at(step: int, config: UNetFinetuneConfig) -> float:
    """The learning rate of 0-based ``step``: linear warm-up, then constant or cosine to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if not config.cosine:
        return config.lr
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class _Ema:
    """An exponential moving average of a module's floating-point parameters and buffers.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so a short run's
    average is not dominated by the initial weights.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {
            name: value.detach().clone()
            for name, value in module.state_dict().items()
            if value.is_floating_point()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for name, value in module.state_dict().items():
            if name in self.shadow:
                self.shadow[name].lerp_(value.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict(self.shadow, strict=False)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _int(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any) -> bool:
    return _number(value) and value > 0
