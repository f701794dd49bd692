"""The importance look-up table: how much each (segment, kernel option) costs (LAYERMERGE.md §4).

For every entry (i, j, option) we build the network that differs from the original in that one
segment only: the segment collapsed with the option's kept convs and no activation inside it,
every other conv its own length-1 segment, every boundary keeping its activation
(:func:`entry_solution`, then the family's training form). What happens next is the family's
:class:`ImportanceEstimator` (STYLE.md convention 6: a callable behind a small base):

- classifiers (:class:`FinetuneEstimator`, §4.1): finetune it briefly on the ``finetune`` split
  (SGD, Nesterov momentum, cosine decay to 0 within the run; steps, lr and batch in
  :class:`ImportanceConfig`, defaults scaled to the dataset), evaluate it on the disjoint
  ``holdout`` split, and store Δacc (percentage points) and Δloss against the unmodified network
  evaluated the same way; ``importance = exp(Δacc / 100)`` by default, ``"loss"`` gives
  ``exp(-Δloss / loss₀)`` (the paper's DDPM rule), for loss-driven tasks;
- diffusion UNets (``core.families.unet.importance``): the ε-prediction loss of a briefly
  finetuned UNet, measured against the original finetuned alike (its ``reference_job``).

Removal entries (kernel 0: one reducible conv dropped) are scored the same way where the family
lists them (:meth:`~core.families.base.ModelFamily.scored_segments`); the layer-only baseline needs
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

**Execution.** Entries run through the entry runner (:mod:`core.runner`): in this process, in
``jobs`` local processes (loky), or on a dask.distributed cluster, for every family. Workers rebuild
the model from the family's recipe (registry name, weights file or bytes) and the data from its
spec, once per process, and check the weights and data digests; each job is seeded from its id,
so every runner gives the same numbers (bitwise at the same thread count). Each finished job is
written at once to a partial store in the output directory: a killed run resumes where it stopped,
and an identical rerun (same chain, weights, data and settings digests, recorded in meta.json)
reads the finished table and computes nothing (:mod:`core.table_store`).

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
import math
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from core.chain import Chain
from core.data import DataSplits, data_record
from core.errors import DataError, LayerMergeError, TableMismatchError
from core.families.base import ModelFamily, family_for
from core.files import library_versions
from core.models import ModelBundle, build_model, load_state_dict_bytes
from core.runner import ProgressCallback, RemoteTask, Runner, run_jobs
from core.segments import keep_everything_solution
from core.solution import Solution, SolutionSegment
from core.surgery import build_training_network, original_network
from core.table_store import (
    PartialStore,
    open_table_directory,
    publish_table,
    read_finished_table,
    settings_digest,
)
from core.tables import EntryKey, TableEntry

__all__ = [
    "PortableWeights",
    "ImportanceConfig",
    "EntryScore",
    "ImportanceTable",
    "ImportanceEstimator",
    "ClassifierEstimator",
    "FinetuneEstimator",
    "DistortionEstimator",
    "ModelRecipe",
    "MODES",
    "NORMALIZATIONS",
    "IDENTITY_JOB",
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

_WORKER_CACHE: dict[str, tuple[Any, ImportanceEstimator]] = {}  # per process: the last context


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
    ``complete`` is False for a run restricted to some entries or ``cancelled``: it wrote no
    table, only its partial store.
    """

    entries: tuple[TableEntry, ...]
    meta: dict[str, Any]
    computed: int
    cached: int
    networks_trained: int
    complete: bool
    seconds: float
    cancelled: bool = False


class PortableWeights:
    """A recipe (a frozen dataclass with ``weights_bytes`` and ``weights_path``) whose weights
    travel as bytes to remote workers and as a file to local ones."""

    weights_file: ClassVar[str] = "weights.pt"

    def localized(self, scratch: Path) -> Any:
        """The recipe with its weight bytes written to a file in ``scratch``: local workers then
        read the file once each instead of receiving the bytes with every task."""
        if self.weights_bytes is None:  # type: ignore[attr-defined]
            return self
        path = scratch / self.weights_file
        path.write_bytes(self.weights_bytes)  # type: ignore[attr-defined]
        return replace(self, weights_bytes=None, weights_path=str(path))  # type: ignore[type-var]


@dataclass(frozen=True)
class ModelRecipe(PortableWeights):
    """What a worker needs to rebuild the model: small, picklable, checked by digest.

    Weights travel as a file path (local workers can read it) or as the file's bytes (remote
    workers, or a state_dict that never was a file); None rebuilds the seeded or shipped weights.
    """

    name: str
    width: float
    input_size: int
    num_classes: int
    weights_digest: str
    weights_path: str | None = None
    weights_bytes: bytes | None = None
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, *, portable: bool = False) -> ModelRecipe:
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
    """Scores one table entry (STYLE.md convention 6: a callable behind a small base).

    A family names its estimator per mode (``family.importance_estimator(mode)``). Subclasses get
    the unmodified model, the family's traced model, the data and a resolved config of
    ``config_type``; the base metrics (the unmodified network evaluated the same way) are computed
    once, lazily. The class methods say how a run is organised around the estimator: which data
    fits (:meth:`check_data`), how defaults scale with it (:meth:`resolve`), which entries share
    one network (:meth:`job_id`), and whether deltas are measured against another job's network
    (``reference_job``) rather than the unmodified one.
    """

    mode: ClassVar[str] = ""
    config_type: ClassVar[type] = object
    # A job every run includes first, whose scores the deltas are measured against (None: the
    # unmodified network, ``base``, as every estimator reports it).
    reference_job: ClassVar[str | None] = None

    def __init__(self, model: nn.Module, traced: Any, data: Any, config: Any) -> None:
        self.model = model
        self.traced = traced
        self.data = data
        self.config = config
        self._base: tuple[float, float] | None = None

    @classmethod
    def check_data(cls, bundle: Any, data: Any, spec: str) -> None:
        """Refuse data the model cannot be scored on (before any job runs); any data by default.

        Raises:
            DataError: the data does not fit the model.
        """
        return None

    @classmethod
    def resolve(cls, config: Any, data: Any) -> Any:
        """The config with its data-dependent defaults filled in (what is keyed and recorded)."""
        return config

    @classmethod
    def job_id(cls, entry: TableEntry, config: Any) -> str:
        """The job that scores ``entry``: every single-layer entry that keeps its conv is the
        original network, so they share one job; every other entry is its own."""
        if entry.end - entry.start == 1 and not entry.is_removal and entry.keeps_all_convs:
            return IDENTITY_JOB
        start, end, kernel, depthwise, stride = entry.key
        return f"{start},{end},{kernel},{int(depthwise)},{stride}"

    @property
    def base(self) -> tuple[float, float]:
        """Accuracy (%, NaN without one) and loss of the unmodified network, evaluated as entries
        are."""
        if self._base is None:
            self._base = self._evaluate(self._original())
        return self._base

    @abc.abstractmethod
    def __call__(self, traced: Any, entry: TableEntry, *, seed: int = 0) -> EntryScore:
        """Score the network modified in ``entry``'s segment only."""

    @abc.abstractmethod
    def _evaluate(self, network: nn.Module) -> tuple[float, float]:
        """Accuracy (%) and mean loss of ``network`` on this estimator's evaluation data."""

    @abc.abstractmethod
    def _original(self) -> nn.Module:
        """The unmodified network, ready to evaluate (what ``base`` scores)."""

    def _check_traced(self, traced: Any) -> None:
        if traced.digest() != self.traced.digest():
            raise TableMismatchError(
                f"entry of chain {traced.digest()} given to an estimator of chain "
                f"{self.traced.digest()}"
            )


class ClassifierEstimator(ImportanceEstimator):
    """The classifiers' estimators: accuracy and cross-entropy of logits, on :class:`DataSplits`."""

    config_type = ImportanceConfig

    def __init__(
        self, model: nn.Module, chain: Chain, data: DataSplits, config: ImportanceConfig
    ) -> None:
        super().__init__(model, chain, data, config)
        self.chain = chain

    @classmethod
    def check_data(cls, bundle: ModelBundle, data: DataSplits, spec: str) -> None:
        if data.num_classes != bundle.num_classes:
            raise DataError(
                f"{bundle.name} has {bundle.num_classes} outputs but data {spec!r} has "
                f"{data.num_classes} classes; give weights trained on this data (--weights)"
            )
        if data.input_size != bundle.input_size:
            raise DataError(
                f"data {spec!r} is {data.input_size}x{data.input_size} but the chain was traced "
                f"at {bundle.input_size}x{bundle.input_size}"
            )

    @classmethod
    def resolve(cls, config: ImportanceConfig, data: DataSplits) -> ImportanceConfig:
        return config.resolved(len(data.finetune))

    @classmethod
    def job_id(cls, entry: TableEntry, config: ImportanceConfig) -> str:
        if config.reinit_single and entry.end - entry.start == 1 and not entry.is_removal:
            start, end, kernel, depthwise, stride = entry.key
            return f"{start},{end},{kernel},{int(depthwise)},{stride}"  # re-initialised: its own
        return super().job_id(entry, config)

    def _original(self) -> nn.Module:
        return self._prepare(original_network(self.model, self.chain).eval())

    def _prepare(self, network: nn.Module) -> nn.Module:
        if self.config.channels_last:
            return network.to(memory_format=torch.channels_last)
        return network

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images


class FinetuneEstimator(ClassifierEstimator):
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
        self._check_traced(chain)
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


class DistortionEstimator(ClassifierEstimator):
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
        self._check_traced(chain)
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


def estimate_importance(
    bundle: Any,
    traced: Any,
    data: Any,
    config: Any = None,
    *,
    family: ModelFamily | None = None,
    out: str | Path | None = None,
    jobs: int = 1,
    cluster: str | None = None,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    entries: Collection[EntryKey] | int | None = None,
    cancel: threading.Event | None = None,
) -> ImportanceTable:
    """Build the importance table of ``traced``: one brief finetune (or one distortion) per job.

    Args:
        bundle: the model with the weights whose importance is measured (the family's bundle).
        traced: the family's traced model; entries are the family's scored segments' options.
        data: a ``--data`` spec string, or the data loaded by the family with ``config.data_seed``
            (workers reload it from its ``name``; the digest must match).
        config: the family's importance settings (``family.importance_config(...)``); None: its
            defaults.
        family: the model's family; None: the family that claims ``bundle.name``.
        out: table directory. ``importance.csv`` and meta.json are written there when every
            entry is done; finished entries go to a partial store there at once. None: memory only.
        jobs: local worker processes (joblib's loky backend); 1 runs in this process.
        cluster: a dask.distributed scheduler address (``tcp://host:8786``): entries run there
            through joblib's dask backend, and ``jobs`` is ignored.
        threads: torch threads per job; None: the caller's in this process, cores / jobs in local
            processes, 1 on a cluster.
        progress: called as ``progress(done, total, eta_s)`` in entries; an exception raised by it
            stops the run with finished entries saved.
        entries: only these keys, or only the first n entries (tests, previews). A restricted run
            fills the partial store but writes no table.
        cancel: when set, the run stops after the jobs in progress (``cancelled`` result, no table
            written, finished entries saved).

    Returns:
        The entries with ``importance``, ``delta_acc`` and ``delta_loss`` filled, and the metadata.

    Raises:
        LayerMergeError: bad settings, or an unreachable cluster.
        DataError: the data cannot be used with this model.
        TableMismatchError: ``out`` holds tables of another chain.
    """
    started = time.perf_counter()
    family = family or family_for(bundle.name)
    runner = Runner(processes=jobs, cluster=cluster, threads=threads)
    config = family.importance_config() if config is None else config
    estimator = family.importance_estimator(getattr(config, "mode", ""))
    if not isinstance(config, estimator.config_type):
        raise LayerMergeError(
            f"{type(config).__name__} settings do not apply to {family.name} models; make them "
            "with the family's importance_config()"
        )
    spec = data if isinstance(data, str) else data.name
    splits = (
        family.load_data(spec, bundle, traced, seed=config.data_seed)
        if isinstance(data, str)
        else data
    )
    estimator.check_data(bundle, splits, spec)
    config = estimator.resolve(config, splits)
    chain_digest = traced.digest()
    key = importance_key(traced, bundle.weights_digest, splits.digest, config)
    identity = {
        _entry_key(s, o) for s in family.segments(traced) for o in s.options if o.is_removal
    }
    all_entries = [
        TableEntry(*_entry_key(s, o), o.kept_convs, identity_segment=_entry_key(s, o) in identity)
        for s in family.scored_segments(traced)
        for o in s.options
    ]
    chosen = _select(all_entries, entries)
    restricted = len(chosen) != len(all_entries)
    directory = None
    if out is not None:
        directory, existing = open_table_directory(out, chain_digest)
        if not restricted and existing.get("importance_key") == key:
            expected = [e.key for e in all_entries]
            cached = read_finished_table(directory, existing, "importance", expected)
            if cached is not None:
                return ImportanceTable(cached, existing, 0, len(cached), 0, True, 0.0)

    # One job per distinct network; the reference job (if any) first, so every run has it.
    job_of = {e.key: estimator.job_id(e, config) for e in chosen}
    payloads: dict[str, TableEntry] = {}
    reference = estimator.reference_job
    if reference is not None:
        found = next((e for e in all_entries if estimator.job_id(e, config) == reference), None)
        if found is None:
            raise LayerMergeError(f"no entry of {bundle.name} builds the reference network")
        payloads[reference] = found
    for entry in chosen:
        payloads.setdefault(job_of[entry.key], entry)

    local: list[ImportanceEstimator] = []  # built on the first job run in this process

    def score(job: str, entry: TableEntry) -> dict[str, Any]:
        if not local:
            local.append(estimator(bundle.model, traced, splits, config))
        return asdict(local[0](traced, entry, seed=entry_seed(config.seed, job)))

    remote = None
    if not runner.in_process:
        context = _Context(
            family=family,
            recipe=family.recipe(bundle, portable=cluster is not None),
            traced=traced,
            data_spec=str(spec),
            data_digest=splits.digest,
            config=config,
            estimator=estimator,
        )
        remote = RemoteTask(
            _score_job,
            context,
            local_context=lambda scratch: replace(
                context, recipe=context.recipe.localized(scratch)
            ),
        )
    store = PartialStore(directory, f"importance-{key}", {"importance_key": key})
    outcome = run_jobs(
        job_of,
        payloads,
        store=store,
        local=score,
        remote=remote,
        runner=runner,
        progress=progress,
        cancel=cancel,
    )
    scores = _relative_to(outcome.results, reference)
    table_entries = tuple(
        replace(
            entry,
            importance=normalize_importance(scores[job_of[entry.key]], config.normalization),
            delta_acc=float(scores[job_of[entry.key]]["delta_acc"]),
            delta_loss=float(scores[job_of[entry.key]]["delta_loss"]),
        )
        for entry in chosen
        if job_of[entry.key] in scores
    )
    complete = not restricted and not outcome.cancelled
    base = next(iter(scores.values()), None)
    reference_loss = base["base_loss"] if base else None
    if reference is not None and reference in scores:
        reference_loss = scores[reference]["loss"]
    settings = _settings(config)
    meta = {
        **family.table_fields(bundle, traced),
        "family": family.name,
        "chain_digest": chain_digest,
        "weights_digest": bundle.weights_digest,
        "weights": bundle.weights_source,  # seeded, shipped, file, folder or state_dict
        "weights_file": bundle.weights_path.name if bundle.weights_path else None,
        "data": splits.name,
        "data_spec": data_record(splits),  # the spec and its preprocessing (issue 15, item 4)
        "data_digest": splits.digest,
        "importance_key": key,
        "importance_mode": config.mode,
        "importance_normalization": config.normalization,
        "importance_settings": settings,
        "importance_settings_digest": settings_digest(settings),
        "importance_base_accuracy": _finite(base["base_accuracy"]) if base else None,
        "importance_base_loss": _finite(base["base_loss"]) if base else None,
        # what the deltas are measured against: the unmodified network's loss, or the reference
        # job's (a UNet's: the original, finetuned alike)
        "importance_reference_loss": _finite(reference_loss) if base else None,
        "importance_entries": len(table_entries),
        "importance_networks": len(payloads),
        "importance_runner": runner.describe(),
        "importance_threads_per_job": runner.threads_per_job(),
        "importance_seconds": round(time.perf_counter() - started, 2),
        "importance_job_seconds": round(
            sum(float(outcome.results[job].get("seconds", 0.0)) for job in outcome.ran), 2
        ),
        "importance_created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    if directory is not None and complete:
        meta = publish_table(directory, chain_digest, "importance", table_entries, meta)
        store.remove()
    return ImportanceTable(
        entries=table_entries,
        meta=meta,
        computed=outcome.computed,
        cached=outcome.cached,
        networks_trained=len(outcome.ran),
        complete=complete,
        seconds=time.perf_counter() - started,
        cancelled=outcome.cancelled,
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


def importance_key(traced: Any, weights_digest: str, data_digest: str, config: Any) -> str:
    """Cache key of an importance table: chain, weights, data and settings digests."""
    fields = {
        "chain": traced.digest(),
        "weights": weights_digest,
        "data": data_digest,
        "settings": settings_digest(_settings(config)),
    }
    return settings_digest(fields)


# --------------------------------------------------------------------------- private helpers


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, shipped once per task (or scattered once on a cluster)."""

    family: ModelFamily
    recipe: Any  # the family's recipe: ``build()`` rebuilds the bundle and checks its digest
    traced: Any
    data_spec: str
    data_digest: str
    config: Any
    estimator: type[ImportanceEstimator]

    @property
    def digest(self) -> str:
        return settings_digest(
            {
                "family": self.family.name,
                "name": self.recipe.name,
                "weights": self.recipe.weights_digest,
                "data": self.data_digest,
                "chain": self.traced.digest(),
                "settings": _settings(self.config),
            }
        )


def _score_job(context: _Context, job_id: str, entry: TableEntry) -> dict[str, Any]:
    """Score one job in a worker: rebuilds what it needs once per process."""
    estimator = _worker_estimator(context)
    return asdict(estimator(context.traced, entry, seed=entry_seed(context.config.seed, job_id)))


def _worker_estimator(context: _Context) -> ImportanceEstimator:
    cached = _WORKER_CACHE.get(context.digest)
    if cached is not None:
        return cached[1]
    bundle = context.recipe.build()
    data = context.family.load_data(
        context.data_spec, bundle, context.traced, seed=context.config.data_seed
    )
    if data.digest != context.data_digest:
        raise TableMismatchError(
            f"a worker loaded data {context.data_spec!r} with digest {data.digest}, not "
            f"{context.data_digest}: workers must see the same files"
        )
    estimator = context.estimator(bundle.model, context.traced, data, context.config)
    _WORKER_CACHE.clear()  # one context per process at a time: models can be large
    _WORKER_CACHE[context.digest] = (context.traced, estimator)
    return estimator


def _relative_to(
    scores: dict[str, dict[str, Any]], reference: str | None
) -> dict[str, dict[str, Any]]:
    """The scores with their deltas measured against the reference job's network, if any.

    Without the reference's score (a run cancelled before it finished) no delta can be given,
    so no score is returned.
    """
    if reference is None:
        return scores
    if reference not in scores:
        return {}
    ref = scores[reference]
    return {
        job: {
            **score,
            "delta_acc": float(score["accuracy"]) - float(ref["accuracy"]),
            "delta_loss": float(score["loss"]) - float(ref["loss"]),
        }
        for job, score in scores.items()
    }


def _entry_key(segment: Any, option: Any) -> EntryKey:
    return (segment.start, segment.end, option.kernel, option.depthwise, option.stride)


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


def _settings(config: Any) -> dict[str, Any]:
    return asdict(config)


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None where it is NaN (JSON has no NaN; a UNet has no accuracy)."""
    number = float(value)
    return number if math.isfinite(number) else None


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
