"""The importance look-up table: how much accuracy each (segment, kernel option) costs (LAYERMERGE.md §4).

For every entry (i, j, option) we build the network that differs from the original in that one
segment only: the segment collapsed with the option's kept convs and no activation inside it,
every other conv its own length-1 segment, every boundary keeping its activation
(:func:`entry_solution`, then :func:`core.surgery.build_training_network`). Then, per §4.1:

1. finetune it briefly on the ``finetune`` split (SGD, Nesterov momentum, cosine decay to 0 within
   the run; steps, lr and batch in :class:`ImportanceConfig`, defaults scaled to the dataset);
2. evaluate it on the ``holdout`` split, which is disjoint from the finetune split;
3. store Δacc (percentage points) and Δloss against the unmodified network evaluated the same way;
4. normalise: ``importance = exp(Δacc / 100)`` by default; ``"loss"`` gives ``exp(-Δloss / loss₀)``
   (the paper's DDPM rule), for loss-driven tasks.

Removal entries (kernel 0: one reducible conv dropped, from
``find_segments(include_removals=True)``) are scored the same way; the layer-only baseline needs
them.

**The "re-init single-layer entries" convention.** The original code re-initialises the conv and
BN of every single-layer entry (j = i + 1) before finetuning it, so those entries measure how well a
layer relearns from scratch. We do NOT do that by default (``reinit_single=False``): a single-layer
entry that keeps its conv IS the original network, so its importance is simply that of the
finetuned original, and the removal entries measure what dropping a layer costs directly. A brief
finetune on little data cannot retrain a layer from scratch, and doing so would charge every kept
boundary a noisy penalty. Because all those entries are the same network, they share ONE finetune
run. ``reinit_single=True`` reproduces the paper (then each runs separately). Under the default
``exp(Δ/100)`` normalisation a shift common to all entries scales every importance by the same
factor, so the choice of baseline (finetuned or not) does not change the DP's answer.

**Distortion mode**, for a first look in seconds: no finetuning; each modified network's logits on
a fixed calibration batch of holdout images are compared with the original's, and
``importance = exp(-relative MSE)`` (``"distortion"``) or ``exp(-KL)`` (``"kl"``). Δacc and Δloss are
then those of the unfinetuned network on the calibration batch.

**Execution.** Entries run through joblib: ``jobs`` local processes (loky), or a dask.distributed
cluster through joblib's dask backend. Workers rebuild the model from its recipe (registry name,
width, input size, weights file or bytes) and the data from its spec, once per process, and check
the weights, chain and data digests; each entry is seeded from its key, so every backend gives the
same numbers (bitwise at the same thread count). Each finished entry is written at once
(atomically) to a partial store in the output directory: a killed run resumes where it stopped,
and an identical rerun (same chain, weights, data and settings digests, recorded in meta.json) reads
the finished table and computes nothing.

Example:
    >>> bundle = build_model("digits_resnet")
    >>> chain = trace_chain(bundle.model, bundle.input_size)
    >>> table = estimate_importance(bundle, chain, "digits", out="tables/digits", jobs=2)
"""

from __future__ import annotations

import abc
import datetime
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from core.chain import Chain, trace_chain
from core.data import DataSplits, load_data
from core.errors import DataError, LayerMergeError, TableMismatchError
from core.latency import (
    PartialStore,
    ProgressCallback,
    check_table_directory,
    library_versions,
    torch_threads,
    update_meta,
)
from core.models import ModelBundle, build_model, load_state_dict_bytes
from core.segments import find_segments, keep_everything_solution
from core.solution import Solution, SolutionSegment
from core.surgery import build_training_network, original_network
from core.tables import (
    EntryKey,
    TableEntry,
    file_digest,
    read_importance_csv,
    write_importance_csv,
)

__all__ = [
    "ImportanceConfig",
    "EntryScore",
    "ImportanceTable",
    "ImportanceEstimator",
    "FinetuneEstimator",
    "DistortionEstimator",
    "ModelRecipe",
    "MODES",
    "NORMALIZATIONS",
    "estimate_importance",
    "entry_solution",
    "entry_seed",
    "normalize_importance",
    "importance_key",
]

IMPORTANCE_VERSION = 1  # bump when what an entry measures changes: it invalidates cached tables
MODES = ("finetune", "distortion")
NORMALIZATIONS = ("acc", "loss", "distortion", "kl")
DEFAULT_NORMALIZATION = {"finetune": "acc", "distortion": "distortion"}
# Default finetune length: a quarter epoch of the finetune split, within [MIN_STEPS, MAX_STEPS].
# The paper finetunes one epoch of a 50K-image subset per entry on GPUs; a quarter epoch of the
# digits demo (25 steps of 64) already separates good from bad entries on 2 CPU cores.
DEFAULT_EPOCH_FRACTION = 0.25
MIN_STEPS = 10
MAX_STEPS = 500
PAPER_LR = 0.1  # at batch 256 (§4.1); scaled linearly with the batch size
PAPER_BATCH = 256
EVAL_BATCH = 256
IDENTITY_JOB = "identity"  # the job shared by every entry that is the original network

_WORKER_CACHE: dict[str, tuple[Chain, ImportanceEstimator]] = {}  # per process: the last context


@dataclass(frozen=True)
class ImportanceConfig:
    """How importance is estimated; every field is part of the cache key.

    Args:
        mode: ``finetune`` (§4.1) or ``distortion`` (no training, seconds).
        steps: finetune steps per entry; None: a quarter epoch of the finetune split, 10 to 500.
        lr: peak SGD learning rate; None: the paper's 0.1 at batch 256, scaled to ``batch_size``.
        batch_size: finetune batch.
        momentum: SGD (Nesterov) momentum.
        weight_decay: SGD weight decay (the paper's 1e-5).
        normalization: ``acc`` exp(Δacc/100), ``loss`` exp(-Δloss/loss₀), ``distortion``
            exp(-relative MSE), ``kl`` exp(-KL); None: ``acc`` (finetune) or ``distortion``.
        reinit_single: re-initialise single-layer entries before finetuning (the paper's
            convention; see the module docstring for why it is off by default).
        eval_images: holdout images evaluated (the first of the seeded split); None: all.
        calibration_images: holdout images whose logits distortion mode compares.
        channels_last: train in channels-last memory format (about 1.5x faster on CPU).
        seed: seeds every entry's finetune (with its key), so results do not depend on order.
        data_seed: the seed of the data splits (``core.data.load_data``).
    """

    mode: str = "finetune"
    steps: int | None = None
    lr: float | None = None
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-5
    normalization: str | None = None
    reinit_single: bool = False
    eval_images: int | None = None
    calibration_images: int = 256
    channels_last: bool = True
    seed: int = 0
    data_seed: int = 0
    version: int = IMPORTANCE_VERSION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LayerMergeError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise LayerMergeError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalization!r}"
            )
        if self.mode == "finetune" and self.normalization in ("distortion", "kl"):
            raise LayerMergeError(
                f"normalization {self.normalization!r} needs --mode distortion; finetune mode "
                "gives 'acc' or 'loss'"
            )
        for name in ("steps", "eval_images"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise LayerMergeError(f"{name} must be a positive integer, got {value!r}")
        for name in ("batch_size", "calibration_images"):
            if not _positive_int(getattr(self, name)):
                raise LayerMergeError(
                    f"{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        if self.lr is not None and not (_number(self.lr) and 0 < self.lr < 10):
            raise LayerMergeError(f"lr must be a positive number below 10, got {self.lr!r}")
        if not (_number(self.momentum) and 0 <= self.momentum < 1):
            raise LayerMergeError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (_number(self.weight_decay) and self.weight_decay >= 0):
            raise LayerMergeError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LayerMergeError(f"{name} must be a non-negative integer, got {value!r}")

    def resolved(self, finetune_size: int) -> ImportanceConfig:
        """The config with the dataset-scaled defaults filled in (what is keyed and recorded)."""
        steps = self.steps
        if steps is None:
            per_epoch = max(1, finetune_size // self.batch_size)
            steps = min(MAX_STEPS, max(MIN_STEPS, round(DEFAULT_EPOCH_FRACTION * per_epoch)))
        lr = self.lr if self.lr is not None else PAPER_LR * self.batch_size / PAPER_BATCH
        normalization = self.normalization or DEFAULT_NORMALIZATION[self.mode]
        if self.mode == "distortion":
            # nothing is trained: keep the key independent of the training settings
            return replace(
                self,
                steps=None,
                lr=None,
                batch_size=1,
                momentum=0.0,
                weight_decay=0.0,
                reinit_single=False,
                eval_images=None,
                normalization=normalization,
            )
        return replace(self, steps=steps, lr=lr, normalization=normalization)


@dataclass(frozen=True)
class EntryScore:
    """What one modified network scored on the holdout split (or the calibration batch)."""

    accuracy: float  # %
    loss: float
    delta_acc: float  # percentage points vs the unmodified network
    delta_loss: float
    base_accuracy: float
    base_loss: float
    distortion: float = float("nan")  # relative MSE of the logits (distortion mode)
    kl: float = float("nan")  # KL(original || modified) of the softmax (distortion mode)
    steps: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class ImportanceTable:
    """An importance table and what the run did.

    ``computed`` counts entries scored by this call, ``cached`` those read from a finished table or
    a partial store; ``networks_trained`` the distinct networks this call finetuned or evaluated.
    """

    entries: tuple[TableEntry, ...]
    meta: dict[str, Any]
    computed: int
    cached: int
    networks_trained: int
    complete: bool
    seconds: float


@dataclass(frozen=True)
class ModelRecipe:
    """What a worker needs to rebuild the model: small, picklable, checked by digest.

    Weights travel as a file path (local workers can read it) or as the file's bytes (remote
    workers, or a state_dict that never was a file); None rebuilds the seeded or shipped weights.
    """

    name: str
    width: float
    input_size: int
    num_classes: int
    in_channels: int
    weights_digest: str
    weights_path: str | None = None
    weights_bytes: bytes | None = None
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_bundle(
        cls, bundle: ModelBundle, *, in_channels: int = 3, portable: bool = False
    ) -> ModelRecipe:
        """The recipe of ``bundle``; ``portable`` sends weights as bytes (for remote workers)."""
        path = str(bundle.weights_path) if bundle.weights_path is not None else None
        data: bytes | None = None
        if bundle.weights_source == "state_dict" or (
            portable and bundle.weights_source != "seeded"
        ):
            buffer = io.BytesIO()
            torch.save(bundle.model.state_dict(), buffer)
            data, path = buffer.getvalue(), None
        return cls(
            name=bundle.name,
            width=bundle.width,
            input_size=bundle.input_size,
            num_classes=bundle.num_classes,
            in_channels=in_channels,
            weights_digest=bundle.weights_digest,
            weights_path=path,
            weights_bytes=data,
            model_kwargs=tuple(sorted(bundle.model_kwargs.items())),
        )

    def build(self) -> ModelBundle:
        """Rebuild the model and check it has the recorded weights.

        Raises:
            TableMismatchError: the rebuilt weights differ (the file changed since).
        """
        weights: Any = self.weights_path
        if self.weights_bytes is not None:
            weights = load_state_dict_bytes(self.weights_bytes, f"{self.name} weights")
        bundle = build_model(
            self.name,
            width=self.width,
            num_classes=self.num_classes,
            weights=weights,
            input_size=self.input_size,
            model_kwargs=dict(self.model_kwargs) or None,
        )
        if bundle.weights_digest != self.weights_digest:
            raise TableMismatchError(
                f"a worker rebuilt {self.name} with weights {bundle.weights_digest}, not "
                f"{self.weights_digest}: did the weights file change during the run?"
            )
        return bundle


class ImportanceEstimator(abc.ABC):
    """Scores one table entry of a chain (STYLE.md convention 6: a callable behind a small base).

    Subclasses get the unmodified model, its chain, the data splits and a resolved config; the
    base metrics (the unmodified network evaluated the same way) are computed once, lazily.
    """

    mode: ClassVar[str] = ""

    def __init__(
        self, model: nn.Module, chain: Chain, data: DataSplits, config: ImportanceConfig
    ) -> None:
        self.model = model
        self.chain = chain
        self.data = data
        self.config = config
        self._base: tuple[float, float] | None = None

    @property
    def base(self) -> tuple[float, float]:
        """Accuracy (%) and loss of the unmodified network, evaluated as entries are."""
        if self._base is None:
            network = original_network(self.model, self.chain).eval()
            self._base = self._evaluate(self._prepare(network))
        return self._base

    @abc.abstractmethod
    def __call__(self, chain: Chain, entry: TableEntry, *, seed: int = 0) -> EntryScore:
        """Score the network modified in ``entry``'s segment only."""

    @abc.abstractmethod
    def _evaluate(self, network: nn.Module) -> tuple[float, float]:
        """Accuracy (%) and mean loss of ``network`` on this estimator's evaluation images."""

    def _prepare(self, network: nn.Module) -> nn.Module:
        if self.config.channels_last:
            return network.to(memory_format=torch.channels_last)
        return network

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _check_chain(self, chain: Chain) -> None:
        if chain.digest() != self.chain.digest():
            raise TableMismatchError(
                f"entry of chain {chain.digest()} given to an estimator of chain "
                f"{self.chain.digest()}"
            )


class FinetuneEstimator(ImportanceEstimator):
    """LAYERMERGE.md §4.1: brief finetune on the finetune split, evaluation on the holdout split."""

    mode = "finetune"

    def __init__(
        self, model: nn.Module, chain: Chain, data: DataSplits, config: ImportanceConfig
    ) -> None:
        super().__init__(model, chain, data, config)
        self._eval_indices = _first(len(data.holdout), config.eval_images)
        # In-memory tensors are sliced once and kept; files (folders) are read at each
        # evaluation instead, so a large holdout split never sits in memory decoded.
        self._eval_cache = (
            list(_batches(data.holdout, self._eval_indices, EVAL_BATCH))
            if isinstance(data.holdout, TensorDataset)
            else None
        )

    def __call__(self, chain: Chain, entry: TableEntry, *, seed: int = 0) -> EntryScore:
        self._check_chain(chain)
        base_accuracy, base_loss = self.base
        started = time.perf_counter()
        config = self.config
        steps = int(config.steps or 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout and random augmentations of this entry
            network = build_training_network(self.model, chain, entry_solution(chain, entry))
            if config.reinit_single and entry.end - entry.start == 1 and not entry.is_removal:
                _reinitialize(network, entry.end)
            network = self._prepare(network).train()
            optimizer = torch.optim.SGD(
                network.parameters(),
                lr=float(config.lr or 0.0),
                momentum=config.momentum,
                nesterov=config.momentum > 0,
                weight_decay=config.weight_decay,
            )
            generator = torch.Generator().manual_seed(seed)
            for step, (images, labels) in enumerate(
                _random_batches(self.data.finetune, config.batch_size, steps, generator)
            ):
                # cosine decay per step from lr to 0 within the run (§4.1)
                lr = float(config.lr or 0.0) * 0.5 * (1 + math.cos(math.pi * step / steps))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = F.cross_entropy(network(self._input(images)), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        accuracy, loss_value = self._evaluate(network.eval())
        return EntryScore(
            accuracy=accuracy,
            loss=loss_value,
            delta_acc=accuracy - base_accuracy,
            delta_loss=loss_value - base_loss,
            base_accuracy=base_accuracy,
            base_loss=base_loss,
            steps=steps,
            seconds=time.perf_counter() - started,
        )

    @torch.inference_mode()
    def _evaluate(self, network: nn.Module) -> tuple[float, float]:
        was_training = network.training
        network.eval()
        correct, total_loss, count = 0, 0.0, 0
        batches = self._eval_cache or _batches(self.data.holdout, self._eval_indices, EVAL_BATCH)
        for images, labels in batches:
            logits = network(self._input(images))
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            count += len(labels)
        network.train(was_training)
        if count == 0:
            raise DataError("the holdout split is empty: importance cannot be evaluated")
        return 100.0 * correct / count, total_loss / count


class DistortionEstimator(ImportanceEstimator):
    """No finetuning: how far a modified network's logits move from the original's.

    On a fixed calibration batch (the first ``calibration_images`` holdout images), the relative
    MSE ``‖z - z₀‖² / ‖z₀‖²`` and ``KL(softmax z₀ ‖ softmax z)`` are recorded, with accuracy and
    loss on the batch's labels.
    """

    mode = "distortion"

    def __init__(
        self, model: nn.Module, chain: Chain, data: DataSplits, config: ImportanceConfig
    ) -> None:
        super().__init__(model, chain, data, config)
        indices = _first(len(data.holdout), config.calibration_images)
        images, labels = _collate(data.holdout, indices)
        self._images, self._labels = images, labels
        network = original_network(model, chain).eval()
        with torch.inference_mode():
            self._base_logits = self._prepare(network)(self._input(images)).float()

    def __call__(self, chain: Chain, entry: TableEntry, *, seed: int = 0) -> EntryScore:
        self._check_chain(chain)
        base_accuracy, base_loss = self.base
        started = time.perf_counter()
        network = build_training_network(self.model, chain, entry_solution(chain, entry))
        network = self._prepare(network).eval()
        with torch.inference_mode():
            logits = network(self._input(self._images)).float()
        reference = self._base_logits
        mse = float(((logits - reference) ** 2).sum() / (reference**2).sum().clamp_min(1e-12))
        kl = float(
            F.kl_div(
                F.log_softmax(logits, dim=1),
                F.log_softmax(reference, dim=1),
                log_target=True,
                reduction="batchmean",
            )
        )
        accuracy, loss = _scores(logits, self._labels)
        return EntryScore(
            accuracy=accuracy,
            loss=loss,
            delta_acc=accuracy - base_accuracy,
            delta_loss=loss - base_loss,
            base_accuracy=base_accuracy,
            base_loss=base_loss,
            distortion=mse,
            kl=max(kl, 0.0),
            seconds=time.perf_counter() - started,
        )

    def _evaluate(self, network: nn.Module) -> tuple[float, float]:
        with torch.inference_mode():
            return _scores(network.eval()(self._input(self._images)).float(), self._labels)


_ESTIMATORS: dict[str, type[ImportanceEstimator]] = {
    FinetuneEstimator.mode: FinetuneEstimator,
    DistortionEstimator.mode: DistortionEstimator,
}


def estimate_importance(
    bundle: ModelBundle,
    chain: Chain,
    data: str | DataSplits,
    config: ImportanceConfig | None = None,
    *,
    out: str | Path | None = None,
    jobs: int = 1,
    cluster: str | None = None,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    entries: Collection[EntryKey] | int | None = None,
) -> ImportanceTable:
    """Build the importance table of ``chain``: one brief finetune (or one distortion) per entry.

    Args:
        bundle: the model with the weights whose importance is measured.
        chain: its traced chain; entries come from ``find_segments(chain, include_removals=True)``.
        data: a ``--data`` spec string, or splits loaded with ``config.data_seed`` (workers reload
            them from ``data.name``; the digest must match).
        config: the estimation settings.
        out: table directory. ``importance.csv`` and meta.json are written there when every
            entry is done; finished entries go to a partial store there at once. None: memory only.
        jobs: local worker processes (joblib's loky backend); 1 runs in this process.
        cluster: a dask.distributed scheduler address (``tcp://host:8786``): entries run there
            through joblib's dask backend, and ``jobs`` is ignored.
        threads: torch threads per job; None: cores / jobs locally, 1 on a cluster.
        progress: called as ``progress(done, total, eta_s)`` in entries; an exception raised by it
            stops the run with finished entries saved.
        entries: only these keys, or only the first n entries (tests, previews). A restricted run
            fills the partial store but writes no table.

    Returns:
        The entries with ``importance``, ``delta_acc`` and ``delta_loss`` filled, and the metadata.

    Raises:
        LayerMergeError: bad settings, or an unreachable cluster.
        DataError: the data cannot be used with this model.
        TableMismatchError: ``out`` holds tables of another chain.
    """
    started = time.perf_counter()
    if not _positive_int(jobs):
        raise LayerMergeError(f"jobs must be a positive integer, got {jobs!r}")
    if threads is not None and not _positive_int(threads):
        raise LayerMergeError(f"threads must be a positive integer, got {threads!r}")
    config = config or ImportanceConfig()
    splits = data if isinstance(data, DataSplits) else None
    spec = data.name if isinstance(data, DataSplits) else data
    if splits is None:
        splits = load_data(spec, input_size=bundle.input_size, seed=config.data_seed)
    if splits.num_classes != bundle.num_classes:
        raise DataError(
            f"{bundle.name} has {bundle.num_classes} outputs but data {spec!r} has "
            f"{splits.num_classes} classes; give weights trained on this data (--weights)"
        )
    if splits.input_size != bundle.input_size:
        raise DataError(
            f"data {spec!r} is {splits.input_size}x{splits.input_size} but the chain was traced "
            f"at {bundle.input_size}x{bundle.input_size}"
        )
    config = config.resolved(len(splits.finetune))
    key = importance_key(chain, bundle.weights_digest, splits.digest, config)
    all_entries = [
        TableEntry(s.start, s.end, o.kernel, o.depthwise, o.stride, o.kept_convs)
        for s in find_segments(chain, include_removals=True)
        for o in s.options
    ]
    chosen = _select(all_entries, entries)
    restricted = len(chosen) != len(all_entries)
    directory = Path(out) if out is not None else None

    if directory is not None:
        existing = check_table_directory(directory, chain)
        if not restricted and existing.get("importance_key") == key:
            cached = _read_finished(directory, existing, [e.key for e in all_entries])
            if cached is not None:
                return ImportanceTable(cached, existing, 0, len(cached), 0, True, 0.0)

    store = PartialStore(directory, f"importance-{key}", {"importance_key": key})
    done = store.entries  # job id -> asdict(EntryScore)
    job_of = {e.key: _job_id(e, config) for e in chosen}
    representative: dict[str, TableEntry] = {}
    for entry in chosen:
        representative.setdefault(job_of[entry.key], entry)
    pending = [job for job in representative if job not in done]
    total = len(chosen)
    cached_count = sum(1 for e in chosen if job_of[e.key] in done)
    entries_per_job: dict[str, int] = {}
    for job in job_of.values():
        entries_per_job[job] = entries_per_job.get(job, 0) + 1

    context = _Context(
        recipe=ModelRecipe.from_bundle(
            bundle, in_channels=chain.input_shape[0], portable=cluster is not None
        ),
        data_spec=str(spec),
        data_digest=splits.digest,
        chain_digest=chain.digest(),
        config=config,
    )
    if threads is None:
        threads = 1 if cluster is not None else max(1, (os.cpu_count() or 1) // jobs)
    runner = _describe_runner(jobs, cluster)
    # Connect before reporting any progress: an unreachable scheduler is one clear error.
    client = _dask_client(cluster) if cluster is not None and pending else None
    finished, computed, job_seconds = cached_count, 0, 0.0
    try:
        if progress is not None:
            progress(cached_count, total, None)
        loop_started = time.perf_counter()
        for count, (job_id, score) in enumerate(
            _run_jobs(
                context,
                [(j, representative[j]) for j in pending],
                jobs,
                client,
                threads,
                (bundle, chain, splits),
            ),
            start=1,
        ):
            done[job_id] = score
            store.save()
            computed += entries_per_job[job_id]
            finished += entries_per_job[job_id]
            job_seconds += float(score["seconds"])
            if progress is not None:
                # elapsed wall time per finished job already accounts for the parallelism
                per_job = (time.perf_counter() - loop_started) / count
                progress(finished, total, per_job * (len(pending) - count))
    finally:
        if client is not None:
            client.close()

    base = next(iter(done.values()), None)
    table_entries = tuple(
        replace(
            entry,
            importance=normalize_importance(done[job_of[entry.key]], config.normalization or ""),
            delta_acc=float(done[job_of[entry.key]]["delta_acc"]),
            delta_loss=float(done[job_of[entry.key]]["delta_loss"]),
        )
        for entry in chosen
    )
    seconds = time.perf_counter() - started
    meta = {
        "model": bundle.name,
        "width": bundle.width,
        "input_size": bundle.input_size,
        "input_shape": list(chain.input_shape),
        "chain_digest": chain.digest(),
        "weights_digest": bundle.weights_digest,
        "weights": bundle.weights_source,  # seeded, shipped, file or state_dict
        "weights_file": bundle.weights_path.name if bundle.weights_path else None,
        "data": splits.name,
        "data_digest": splits.digest,
        "importance_key": key,
        "importance_mode": config.mode,
        "importance_normalization": config.normalization,
        "importance_settings": _settings(config),
        "importance_settings_digest": _digest(_settings(config)),
        "importance_base_accuracy": base["base_accuracy"] if base else None,
        "importance_base_loss": base["base_loss"] if base else None,
        "importance_entries": len(table_entries),
        "importance_networks": len(representative),
        "importance_runner": runner,
        "importance_threads_per_job": threads,
        "importance_seconds": round(seconds, 2),
        "importance_job_seconds": round(job_seconds, 2),
        "importance_created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    if directory is not None and not restricted:
        write_importance_csv(directory / "importance.csv", table_entries)
        meta["importance_csv_digest"] = file_digest(directory / "importance.csv")
        meta = update_meta(directory, chain, meta, owner="importance")
        store.remove()
    return ImportanceTable(
        entries=table_entries,
        meta=meta,
        computed=computed,
        cached=cached_count,
        networks_trained=len(pending),
        complete=not restricted,
        seconds=seconds,
    )


def entry_solution(chain: Chain, entry: TableEntry) -> Solution:
    """The keep-everything solution with only ``entry``'s segment collapsed (§4.1 step 2).

    Every other conv is its own length-1 segment and every boundary keeps its activation, so the
    network differs from the original in that one segment: its inner activations are gone and
    only the option's kept convs remain.
    """
    keep = keep_everything_solution(chain)
    target = SolutionSegment(
        entry.start, entry.end, entry.kernel, entry.depthwise, entry.stride, entry.kept_convs
    )
    segments = [s for s in keep.segments if s.end <= entry.start or s.start >= entry.end]
    segments.append(target)
    segments.sort(key=lambda s: s.start)
    boundaries = tuple(sorted({0, *(s.end for s in segments)}))
    return Solution("importance_entry", 0.0, 0.0, 0.0, tuple(segments), boundaries)


def entry_seed(seed: int, job_id: str) -> int:
    """The deterministic seed of one job: the same on every worker, in every order."""
    blob = hashlib.sha256(f"{seed}:{job_id}".encode()).digest()
    return int.from_bytes(blob[:4], "little")


def normalize_importance(score: dict[str, Any] | EntryScore, normalization: str) -> float:
    """Turn a score into the importance the DP sums (§4.1 step 5, §4.2).

    Raises:
        LayerMergeError: an unknown normalization, or one the score has no value for.
    """
    values = asdict(score) if isinstance(score, EntryScore) else score
    if normalization == "acc":
        return math.exp(float(values["delta_acc"]) / 100.0)
    if normalization == "loss":
        base = float(values["base_loss"])
        return math.exp(-float(values["delta_loss"]) / max(base, 1e-12))
    if normalization in ("distortion", "kl"):
        value = float(values.get(normalization, float("nan")))
        if not math.isfinite(value):
            raise LayerMergeError(f"normalization {normalization!r} needs --mode distortion")
        return math.exp(-value)
    raise LayerMergeError(
        f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}"
    )


def importance_key(
    chain: Chain, weights_digest: str, data_digest: str, config: ImportanceConfig
) -> str:
    """Cache key of an importance table: chain, weights, data and settings digests."""
    fields = {
        "chain": chain.digest(),
        "weights": weights_digest,
        "data": data_digest,
        "settings": _digest(_settings(config)),
    }
    return _digest(fields)


# --------------------------------------------------------------------------- private helpers


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, shipped once per task (or scattered once on a cluster)."""

    recipe: ModelRecipe
    data_spec: str
    data_digest: str
    chain_digest: str
    config: ImportanceConfig

    @property
    def digest(self) -> str:
        return _digest(
            {
                "recipe": self.recipe.weights_digest,
                "name": self.recipe.name,
                "data": self.data_digest,
                "chain": self.chain_digest,
                "settings": _settings(self.config),
            }
        )


def _run_job(context: _Context, job_id: str, entry: TableEntry, threads: int) -> tuple[str, dict]:
    """Score one job in a worker (or in this process): rebuilds what it needs once per process."""
    with torch_threads(threads):
        chain, estimator = _worker_estimator(context)
        score = estimator(chain, entry, seed=entry_seed(context.config.seed, job_id))
    return job_id, asdict(score)


def _worker_estimator(context: _Context) -> tuple[Chain, ImportanceEstimator]:
    cached = _WORKER_CACHE.get(context.digest)
    if cached is not None:
        return cached
    bundle = context.recipe.build()
    chain = trace_chain(bundle.model, bundle.input_size, in_channels=context.recipe.in_channels)
    if chain.digest() != context.chain_digest:
        raise TableMismatchError(
            f"a worker traced {bundle.name} into chain {chain.digest()}, not "
            f"{context.chain_digest}: is the same code installed on every worker?"
        )
    data = load_data(context.data_spec, input_size=bundle.input_size, seed=context.config.data_seed)
    if data.digest != context.data_digest:
        raise TableMismatchError(
            f"a worker loaded data {context.data_spec!r} with digest {data.digest}, not "
            f"{context.data_digest}: workers must see the same files"
        )
    estimator = _ESTIMATORS[context.config.mode](bundle.model, chain, data, context.config)
    _WORKER_CACHE.clear()  # one context per process at a time: models can be large
    _WORKER_CACHE[context.digest] = (chain, estimator)
    return chain, estimator


def _run_jobs(
    context: _Context,
    work: list[tuple[str, TableEntry]],
    jobs: int,
    client: Any,
    threads: int,
    local: tuple[ModelBundle, Chain, DataSplits],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (job id, score) as jobs finish: in process, on loky processes, or on dask."""
    if not work:
        return
    if client is None and jobs == 1:
        # In this process: score with the caller's model and splits, nothing rebuilt or kept.
        bundle, chain, splits = local
        estimator = _ESTIMATORS[context.config.mode](bundle.model, chain, splits, context.config)
        for job_id, entry in work:
            with torch_threads(threads):
                score = estimator(chain, entry, seed=entry_seed(context.config.seed, job_id))
            yield job_id, asdict(score)
        return
    import joblib

    tasks = (joblib.delayed(_run_job)(context, job_id, entry, threads) for job_id, entry in work)
    if client is None:
        with tempfile.TemporaryDirectory(prefix="layermerge-weights-") as scratch:
            if context.recipe.weights_bytes is not None:
                # Local workers read the weights from a file once each, instead of receiving
                # the bytes pickled with every task.
                path = Path(scratch) / "weights.pt"
                path.write_bytes(context.recipe.weights_bytes)
                recipe = replace(context.recipe, weights_bytes=None, weights_path=str(path))
                context = replace(context, recipe=recipe)
            tasks = (
                joblib.delayed(_run_job)(context, job_id, entry, threads) for job_id, entry in work
            )
            parallel = joblib.Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")
            yield from parallel(tasks)
        return
    # joblib's dask backend runs on the current client; the context is scattered once.
    with joblib.parallel_config(backend="dask", scatter=[context]):
        parallel = joblib.Parallel(n_jobs=-1, return_as="generator_unordered")
        yield from parallel(tasks)


def _dask_client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError as exc:
        raise LayerMergeError(
            "--cluster needs dask.distributed (pip install 'dask[distributed]')"
        ) from exc
    try:
        return Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise LayerMergeError(f"cannot reach the dask scheduler at {address!r}: {exc}") from exc


def _describe_runner(jobs: int, cluster: str | None) -> str:
    if cluster is not None:
        return f"dask:{cluster}"
    return "in-process" if jobs == 1 else f"loky:{jobs}"


def _job_id(entry: TableEntry, config: ImportanceConfig) -> str:
    is_original = entry.end - entry.start == 1 and not entry.is_removal and entry.keeps_all_convs
    if is_original and not config.reinit_single:
        return IDENTITY_JOB
    start, end, kernel, depthwise, stride = entry.key
    return f"{start},{end},{kernel},{int(depthwise)},{stride}"


def _select(
    entries: list[TableEntry], wanted: Collection[EntryKey] | int | None
) -> list[TableEntry]:
    if wanted is None:
        return entries
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        if wanted < 1:
            raise LayerMergeError(f"entries limit must be positive, got {wanted}")
        return entries[:wanted]
    keys = {tuple(k) for k in wanted}
    chosen = [e for e in entries if e.key in keys]
    unknown = keys - {e.key for e in chosen}
    if unknown:
        raise LayerMergeError(f"entries {sorted(unknown)[:3]} are not entries of this chain")
    return chosen


def _read_finished(
    directory: Path, meta: dict[str, Any], expected: list[EntryKey]
) -> tuple[TableEntry, ...] | None:
    """The finished importance table when it is the one meta.json records, intact and complete."""
    path = directory / "importance.csv"
    if not path.is_file() or meta.get("importance_csv_digest") != file_digest(path):
        return None  # made with other settings, or edited since: computed again, never used
    try:
        rows = read_importance_csv(path)
    except TableMismatchError:
        return None  # damaged: computed again, never used
    by_key = {e.key: e for e in rows}
    if set(by_key) != set(expected) or not all(math.isfinite(e.importance) for e in rows):
        return None
    return tuple(by_key[key] for key in expected)  # the order a fresh run returns


def _settings(config: ImportanceConfig) -> dict[str, Any]:
    return asdict(config)


def _digest(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reinitialize(network: nn.Module, position: int) -> None:
    """The paper's ``reset_layers``: fresh initial weights for conv ``position`` and its BN."""
    for name in (f"conv{position}", f"bn{position}"):
        layer = network.layers[name] if name in network.layers else None
        if layer is not None:
            layer.reset_parameters()


def _first(size: int, limit: int | None) -> list[int]:
    return list(range(size if limit is None else min(size, limit)))


def _collate(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset):
        index = torch.as_tensor(indices, dtype=torch.long)
        images, labels = dataset.tensors
        return images[index].contiguous(), labels[index]
    images, labels = default_collate([dataset[i] for i in indices])
    return images, torch.as_tensor(labels)


def _batches(
    dataset: Dataset, indices: list[int], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for begin in range(0, len(indices), batch_size):
        yield _collate(dataset, indices[begin : begin + batch_size])


def _random_batches(
    dataset: Dataset, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches drawn without replacement, epoch after epoch, from a seeded order."""
    size = len(dataset)
    if size == 0:
        raise DataError("the finetune split is empty: importance cannot be finetuned")
    batch_size = min(batch_size, size)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.randperm(size, generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield _collate(dataset, batch)


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    accuracy = 100.0 * float((logits.argmax(dim=1) == labels).float().mean())
    return accuracy, float(F.cross_entropy(logits, labels))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
