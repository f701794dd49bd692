"""Finetuning the training-form network: progress callbacks, periodic checkpoints, resume, cancel.

After surgery (core.surgery) a network has lost activations and convs; a short finetune recovers
most of the accuracy before merging (LAYERMERGE.md §5.2: SGD, cosine schedule with warm-up, label
smoothing, optionally distillation from the original network as Kim23's ``--distill``).

:func:`finetune` is the classifier family's loop (``ClassifierFamily.finetune``; the finetune
workflow, ``core.workflows.finetune``, runs it for the CLI and the app alike): it never prints,
reports through a callback receiving :class:`FinetuneProgress`, stops cleanly when a
``threading.Event`` is set, and writes a checkpoint every ``checkpoint_every`` steps. The UNet
family's loop (``core.families.unet.finetune``) follows the same conventions: a ``cancel`` event,
a ``status`` of "completed" or "cancelled", reports with ``step``, ``total_steps``, ``eta_s`` and
``readout()``. A checkpoint
is a dict of plain tensors and JSON-able values (nanoGPT's recipe: state_dicts plus plain values,
no pickled classes), loadable with ``torch.load(weights_only=True)``, holding everything a resume
needs: weights, optimizer state, schedule position and RNG states. Batches are a pure function of
(seed, epoch, step), so a seeded run that is killed and resumed ends with exactly the weights of
an uninterrupted run.

Example:
    >>> config = FinetuneConfig(epochs=2, lr=0.02)
    >>> result = finetune(training_net, splits.finetune, config=config,
    ...                   checkpoint_path="out/checkpoint.pt")  # doctest: +SKIP
    >>> evaluate(result.network, splits.test).accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from core.errors import DataError, LayerMergeError, UnsafeCheckpointError
from core.families.classifier.checkpoint import build_network, check_network_state
from core.files import atomic_torch_save, jsonable, library_versions
from core.network import StepNetwork
from core.safe_load import safe_torch_load

__all__ = [
    "FinetuneConfig",
    "FinetuneProgress",
    "FinetuneResult",
    "Evaluation",
    "FinetuneConfigError",
    "finetune",
    "evaluate",
    "load_finetune_checkpoint",
    "network_from_finetune_checkpoint",
    "learning_rate_at",
    "resolve_device",
    "FINETUNE_FORMAT",
    "FINETUNE_FORMAT_VERSION",
]

FINETUNE_FORMAT = "layermerge-finetune"
FINETUNE_FORMAT_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
STATUSES = ("running", "completed", "cancelled")
# Fields a resume may change: where it runs and how often it saves do not change the result.
RESUME_NEUTRAL_FIELDS = frozenset({"device", "checkpoint_every", "channels_last"})
_STATS_WINDOW = 20  # steps the reported loss and accuracy are averaged over
_CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "status": str,
    "step": int,
    "total_steps": int,
    "spec": dict,
    "state_dict": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "config": dict,
    "metadata": dict,
}


class FinetuneConfigError(LayerMergeError, ValueError):
    """A finetune option is out of range, or a checkpoint was written with other options."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How to finetune; every field has a default that suits the digits demo models.

    ``steps``, when given, overrides ``epochs``. The learning rate warms up linearly over
    ``warmup_fraction`` of the steps, then follows a cosine to zero (or stays, ``cosine=False``).
    """

    optimizer: str = "sgd"  # "sgd" (Nesterov momentum, the paper's) or "adamw"
    lr: float = 0.02  # peak learning rate; the paper uses 0.05 at batch 256 for MobileNetV2
    weight_decay: float = 1e-5  # the paper's MobileNetV2 value
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    epochs: int = 1
    steps: int | None = None  # total optimizer steps; overrides epochs
    batch_size: int = 64
    warmup_fraction: float = 0.05  # of the total steps
    cosine: bool = True
    label_smoothing: float = 0.0  # the paper uses 0.1 for ResNet-34 and MobileNetV2-1.4
    distill_alpha: float = 0.0  # weight of the distillation loss; 0 disables (Kim23: 0.3)
    distill_temperature: float = 4.0
    grad_clip: float | None = None  # max gradient norm (the paper: 5 for MobileNetV2-1.4)
    decay_norm_and_bias: bool = False  # weight decay on BN and biases (the paper: none on BN)
    seed: int = 0
    device: str = "auto"  # "auto" is CUDA when present, else CPU
    channels_last: bool = True  # about twice as fast for depthwise convs on CPU
    checkpoint_every: int = 100  # steps between checkpoints (and one at the end)

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (_positive(self.lr), "lr must be a positive number"),
            (_non_negative(self.weight_decay), "weight_decay must be >= 0"),
            (_non_negative(self.momentum) and self.momentum < 1, "momentum must be in [0, 1)"),
            (_positive_int(self.epochs), "epochs must be a positive integer"),
            (self.steps is None or _positive_int(self.steps), "steps must be a positive integer"),
            (_positive_int(self.batch_size), "batch_size must be a positive integer"),
            (
                _non_negative(self.warmup_fraction) and self.warmup_fraction < 1,
                "warmup_fraction must be in [0, 1)",
            ),
            (
                _non_negative(self.label_smoothing) and self.label_smoothing < 1,
                "label_smoothing must be in [0, 1)",
            ),
            (
                _non_negative(self.distill_alpha) and self.distill_alpha <= 1,
                "distill_alpha must be in [0, 1]",
            ),
            (_positive(self.distill_temperature), "distill_temperature must be positive"),
            (self.grad_clip is None or _positive(self.grad_clip), "grad_clip must be positive"),
            (
                _positive_int(self.seed + 1) if isinstance(self.seed, int) else False,
                "seed must be a non-negative integer",
            ),
            (_valid_device(self.device), "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
            (_positive_int(self.checkpoint_every), "checkpoint_every must be a positive integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise FinetuneConfigError(f"{message} (got {self._offending(message)!r})")

    def _offending(self, message: str) -> Any:
        name = message.split(" ", 1)[0]
        return getattr(self, name, None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        """The config from its dict; unknown keys are refused so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FinetuneConfigError(f"unknown finetune options: {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class FinetuneProgress:
    """One report to the progress callback, sent after every optimizer step."""

    step: int  # steps done, 1..total_steps
    total_steps: int
    epoch: int  # 0-based epoch of the step just done
    loss: float  # mean training loss over the last few steps
    accuracy: float  # mean training-batch accuracy (%) over the last few steps
    lr: float  # the learning rate the step used
    eta_s: float | None  # estimated seconds left
    elapsed_s: float  # seconds since this call started (a resume restarts it)

    def readout(self) -> str:
        """The figures a progress bar shows after ``step/total`` (the family-neutral protocol)."""
        return (
            f"epoch {self.epoch + 1} loss {self.loss:.4f} acc {self.accuracy:5.1f}% "
            f"lr {self.lr:.2e}"
        )


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns: the finetuned network and how the run ended."""

    network: StepNetwork  # a new module (CPU, eval mode); the input network is untouched
    status: str  # "completed" or "cancelled"
    step: int  # steps done in total, over every resume
    total_steps: int
    resumed_from: int  # the step the run started from (0 when fresh)
    loss: float  # last mean training loss (from the checkpoint when no step ran in this call)
    accuracy: float  # last reported mean training accuracy (%)
    elapsed_s: float
    checkpoint_path: Path | None
    device: str


@dataclass(frozen=True)
class Evaluation:
    """Top-1 accuracy (%) and mean cross-entropy of a network on a dataset."""

    accuracy: float
    loss: float
    count: int


def finetune(
    network: StepNetwork,
    train_data: Dataset,
    *,
    config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = True,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[FinetuneProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> FinetuneResult:
    """Finetune a copy of ``network`` on ``train_data``, resumable and cancellable.

    Args:
        network: the training-form network (core.surgery); it is copied, never modified.
        train_data: yields ``(image, label)``; a map-style dataset with ``len``.
        config: the options; :class:`FinetuneConfig` defaults when None.
        teacher: the original network, needed when ``config.distill_alpha > 0``; it is copied.
        checkpoint_path: where to write checkpoints; None writes none (no resume possible).
        resume: continue from ``checkpoint_path`` when it exists. The checkpoint must be of the
            same network and options (device and checkpoint interval may differ).
        metadata: JSON-able values stored in every checkpoint (model name, solution, ...).
        progress: called after every step with a :class:`FinetuneProgress`. An exception it
            raises stops the run (as a kill would); the last periodic checkpoint stays.
        cancel: when set, the run stops before its next step, writes a checkpoint and returns
            with status ``"cancelled"``.

    Returns:
        The finetuned network (a new module on the CPU, eval mode) and the run's status.

    Raises:
        FinetuneConfigError: the config does not fit (distillation without a teacher), or the
            checkpoint was written for another network or other options.
        DataError: ``train_data`` is empty.
        UnsafeCheckpointError: the checkpoint to resume from is unreadable or malformed.
    """
    config = config or FinetuneConfig()
    if not isinstance(network, StepNetwork):
        raise LayerMergeError(
            f"finetune takes a StepNetwork (core.surgery's training form), got "
            f"{type(network).__name__}"
        )
    if config.distill_alpha > 0 and teacher is None:
        raise FinetuneConfigError("distill_alpha > 0 needs the original network as teacher")
    count = len(train_data)  # type: ignore[arg-type]
    if count == 0:
        raise DataError("the finetune dataset is empty")
    device = resolve_device(config.device)
    steps_per_epoch = _steps_per_epoch(count, config.batch_size)
    total = config.steps or config.epochs * steps_per_epoch
    warmup = round(config.warmup_fraction * total)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    meta = jsonable(dict(metadata or {}), what="finetune metadata")

    model = copy.deepcopy(network).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher_model = _prepare_teacher(teacher, device) if config.distill_alpha > 0 else None
    optimizer = _make_optimizer(model, config)
    spec = jsonable(model.spec, what="the network spec")
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []

    started = time.perf_counter()
    window: deque[tuple[float, float]] = deque(maxlen=_STATS_WINDOW)
    step, status, order, order_epoch = 0, "completed", None, -1
    saved_stats: dict[str, Any] = {}
    with torch.random.fork_rng(devices=devices):  # the caller's global RNG state is restored
        torch.manual_seed(config.seed)
        if path is not None and resume and path.exists():
            step, saved_stats = _restore(path, model, optimizer, spec, config, total, device)
        resumed_from = step

        def save(state: str) -> None:
            if path is not None:
                _save_checkpoint(
                    path, model, optimizer, spec, config, meta, step, total, warmup, state,
                    window, time.perf_counter() - started,
                )  # fmt: skip

        while step < total:
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                save(status)
                break
            epoch, offset = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = _epoch_order(count, config.seed, epoch), epoch
            indices = order[offset * config.batch_size : (offset + 1) * config.batch_size]
            images, labels = _batch(train_data, indices, device, config.channels_last)
            lr = learning_rate_at(step, total, config.lr, warmup_steps=warmup, cosine=config.cosine)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, correct = _train_step(model, teacher_model, optimizer, images, labels, config)
            step += 1
            window.append((loss, 100.0 * correct / len(labels)))
            if step % config.checkpoint_every == 0 or step == total:
                save("completed" if step == total else "running")
            if progress is not None:
                elapsed = time.perf_counter() - started
                done = step - resumed_from
                progress(
                    FinetuneProgress(
                        step=step,
                        total_steps=total,
                        epoch=epoch,
                        loss=_mean(window, 0),
                        accuracy=_mean(window, 1),
                        lr=lr,
                        eta_s=elapsed / done * (total - step) if done else None,
                        elapsed_s=elapsed,
                    )
                )
        else:
            if step == resumed_from and path is not None:
                save("completed")  # resumed a finished run: mark it so

    result_network = model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    return FinetuneResult(
        network=result_network,
        status=status,
        step=step,
        total_steps=total,
        resumed_from=resumed_from,
        loss=_mean(window, 0) if window else float(saved_stats.get("loss", math.nan)),
        accuracy=_mean(window, 1) if window else float(saved_stats.get("accuracy", math.nan)),
        elapsed_s=time.perf_counter() - started,
        checkpoint_path=path,
        device=device,
    )


@torch.no_grad()
def evaluate(
    network: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    limit: int | None = None,
) -> Evaluation:
    """Top-1 accuracy and mean cross-entropy of ``network`` in eval mode over ``dataset``.

    The network is evaluated as is when it is already in eval mode on ``device``, otherwise on a
    copy, so a module shared with another thread (the app's cache) never changes mode.

    Args:
        network: any classifier mapping ``(B, C, H, W)`` to ``(B, classes)``.
        dataset: yields ``(image, label)``.
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        limit: evaluate only the first ``limit`` images (quick previews).

    Raises:
        DataError: the dataset is empty.
    """
    device = resolve_device(device)
    count = len(dataset)  # type: ignore[arg-type]
    if limit is not None:
        count = min(count, limit)
    if count == 0:
        raise DataError("cannot evaluate on an empty dataset")
    model = network
    if network.training or _device_of(network) != torch.device(device):
        model = copy.deepcopy(network).to(device).eval()
    correct, total_loss = 0, 0.0
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        images, labels = _batch(dataset, indices, device, channels_last=False)
        logits = model(images)  # (B, classes)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    return Evaluation(accuracy=100.0 * correct / count, loss=total_loss / count, count=count)


def load_finetune_checkpoint(source: str | Path) -> dict[str, Any]:
    """Read a finetune checkpoint with ``weights_only=True`` and validate its structure.

    Raises:
        UnsafeCheckpointError: the file is missing, unreadable, would need unsafe unpickling, is
            not a finetune checkpoint of this version, or its spec and tensors do not match.
    """
    path = Path(source)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UnsafeCheckpointError(f"finetune checkpoint {path} {what}")
    name = str(path)
    try:
        with path.open("rb") as handle:
            loaded = safe_torch_load(handle, name)
    except OSError as exc:
        raise UnsafeCheckpointError(f"finetune checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(loaded, dict) or loaded.get("format") != FINETUNE_FORMAT:
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise UnsafeCheckpointError(
            f"{name} is not a finetune checkpoint (format {found!r}, expected {FINETUNE_FORMAT!r})"
        )
    if loaded.get("format_version") != FINETUNE_FORMAT_VERSION:
        raise UnsafeCheckpointError(
            f"{name}: finetune checkpoint version {loaded.get('format_version')!r} is not "
            f"supported (this version reads {FINETUNE_FORMAT_VERSION})"
        )
    for key, kind in _CHECKPOINT_KEYS.items():
        if key not in loaded:
            raise UnsafeCheckpointError(f"{name}: the finetune checkpoint lacks {key!r}")
        if not isinstance(loaded[key], kind) or isinstance(loaded[key], bool):
            raise UnsafeCheckpointError(f"{name}: {key!r} is a {type(loaded[key]).__name__}")
    if loaded["status"] not in STATUSES:
        raise UnsafeCheckpointError(f"{name}: unknown status {loaded['status']!r}")
    if not 0 <= loaded["step"] <= loaded["total_steps"]:
        raise UnsafeCheckpointError(f"{name}: step {loaded['step']} is out of range")
    check_network_state(loaded["spec"], loaded["state_dict"], name=name)
    return loaded


def network_from_finetune_checkpoint(checkpoint: Mapping[str, Any]) -> StepNetwork:
    """The finetuned training-form network held by a (validated) finetune checkpoint."""
    return build_network(checkpoint["spec"], checkpoint["state_dict"], name="finetune checkpoint")


def learning_rate_at(
    step: int, total_steps: int, peak: float, *, warmup_steps: int = 0, cosine: bool = True
) -> float:
    """The learning rate of 0-based ``step``: linear warm-up, then cosine decay to zero.

    1) warm-up: ``peak * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps;
    2) then ``peak * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 to 1 over the rest
       (``peak`` throughout when ``cosine`` is False).
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if not cosine:
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is present, else ``"cpu"``.

    Raises:
        FinetuneConfigError: the device is malformed, or CUDA is asked for but absent.
    """
    if not _valid_device(device):
        raise FinetuneConfigError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FinetuneConfigError(f"device {device!r} was asked for, but CUDA is not available")
    return device


# --------------------------------------------------------------------------- training helpers


def _train_step(
    model: nn.Module,
    teacher: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: FinetuneConfig,
) -> tuple[float, int]:
    model.train()
    logits = model(images)  # (B, classes)
    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher is not None:
        # Hinton et al.: KL between softened distributions, scaled by T^2 to keep gradients
        # comparable across temperatures.
        temperature = config.distill_temperature
        with torch.no_grad():
            target = F.softmax(teacher(images) / temperature, dim=1)
        distill = F.kl_div(
            F.log_softmax(logits / temperature, dim=1), target, reduction="batchmean"
        ) * (temperature**2)
        loss = (1 - config.distill_alpha) * loss + config.distill_alpha * distill
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    correct = int((logits.detach().argmax(dim=1) == labels).sum())
    return float(loss.detach()), correct


def _make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        # 1-D parameters are BN affine weights and biases
        (decay if parameter.ndim > 1 or config.decay_norm_and_bias else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
    )


def _prepare_teacher(teacher: nn.Module | None, device: str) -> nn.Module | None:
    if teacher is None:
        return None
    model = copy.deepcopy(teacher).to(device).eval()
    model.requires_grad_(False)
    return model


def _steps_per_epoch(count: int, batch_size: int) -> int:
    # The last incomplete batch is dropped (BN dislikes tiny batches), unless it is the only one.
    return max(1, count // batch_size)


def _epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of ``epoch``: a pure function, so a resume sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def _batch(
    dataset: Dataset, indices: Sequence[int], device: str, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = default_collate([dataset[i] for i in indices])
    images = images.to(device)  # (B, C, H, W)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.as_tensor(labels).long().to(device)


def _mean(window: deque[tuple[float, float]], index: int) -> float:
    return sum(item[index] for item in window) / len(window) if window else float("nan")


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# --------------------------------------------------------------------------- checkpoint helpers


def _save_checkpoint(
    path: Path,
    model: StepNetwork,
    optimizer: torch.optim.Optimizer,
    spec: dict[str, Any],
    config: FinetuneConfig,
    metadata: dict[str, Any],
    step: int,
    total: int,
    warmup: int,
    status: str,
    window: deque[tuple[float, float]],
    elapsed_s: float,
) -> None:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and any(p.is_cuda for p in model.parameters()):
        rng["cuda"] = torch.cuda.get_rng_state_all()
    checkpoint = {
        "format": FINETUNE_FORMAT,
        "format_version": FINETUNE_FORMAT_VERSION,
        "status": status,
        "step": step,
        "total_steps": total,
        "spec": spec,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": step, "total_steps": total, "warmup_steps": warmup},
        "rng": rng,
        "config": config.to_dict(),
        "metadata": metadata,
        "stats": {"loss": _mean(window, 0), "accuracy": _mean(window, 1), "elapsed_s": elapsed_s},
        "versions": library_versions(),
    }
    atomic_torch_save(checkpoint, path)


def _restore(
    path: Path,
    model: StepNetwork,
    optimizer: torch.optim.Optimizer,
    spec: dict[str, Any],
    config: FinetuneConfig,
    total: int,
    device: str,
) -> tuple[int, dict[str, Any]]:
    checkpoint = load_finetune_checkpoint(path)
    if checkpoint["spec"] != spec:
        raise FinetuneConfigError(
            f"checkpoint {path} was written for another network (another model or solution); "
            "write to a new place, or start afresh"
        )
    saved = checkpoint["config"]
    for key, value in config.to_dict().items():
        if key not in RESUME_NEUTRAL_FIELDS and saved.get(key) != value:
            raise FinetuneConfigError(
                f"checkpoint {path} was written with {key}={saved.get(key)!r}, not {value!r}; "
                "resume with the same options, or start afresh"
            )
    if checkpoint["total_steps"] != total:
        raise FinetuneConfigError(
            f"checkpoint {path} plans {checkpoint['total_steps']} steps, this run {total} (a "
            "different dataset size?); resume with the same data, or start afresh"
        )
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UnsafeCheckpointError(f"{path}: optimizer state does not fit: {exc}") from exc
    rng = checkpoint["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or rng["torch"].dtype != torch.uint8:
        raise UnsafeCheckpointError(f"{path}: the RNG state is malformed")
    torch.set_rng_state(rng["torch"])
    cuda_states = rng.get("cuda")
    if device.startswith("cuda") and isinstance(cuda_states, list) and cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    stats = checkpoint.get("stats")
    return int(checkpoint["step"]), stats if isinstance(stats, dict) else {}


def _positive(value: Any) -> bool:
    return _non_negative(value) and value > 0


def _non_negative(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _valid_device(device: Any) -> bool:
    if not isinstance(device, str):
        return False
    if device in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
