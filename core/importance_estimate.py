"""How long an importance run will take, estimated before it starts (issue 15, item 6).

A finetune-mode run on a CIFAR ResNet-20 takes about an hour on 2 cores; a person choosing the
settings should know that first. The estimate is the number of networks the run trains (entries
that are the same network share one, as :func:`core.importance.estimate_importance` runs them)
times the cost of one, divided over the worker processes. The cost of one network is measured on
the actual model, now, at the worker's thread count: one finetune step (forward, backward and SGD
step of a batch of the real data) times the steps, plus the evaluation images times one image's
forward. Never a hard-coded figure; still an estimate: a modified network is smaller than the
original (faster), and loading, building and contention on the machine are left out.

Example:
    >>> costs = measure_step_costs(bundle, chain, splits, ImportanceConfig())  # doctest: +SKIP
    >>> estimate = estimate_importance_seconds(bundle, chain, splits, ImportanceConfig(), costs=costs)
    >>> estimate.describe()  # doctest: +SKIP
    'about 6.5 min (estimate): 23 networks × (25 steps × 0.52 s + 360 images × 4.1 ms), 1 process'
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from core.errors import LayerMergeError
from core.families import ModelFamily, family_for
from core.importance import ImportanceConfig
from core.runner import Runner
from core.surgery import original_network
from core.tables import TableEntry
from core.threads import torch_threads

__all__ = [
    "LONG_SECONDS",
    "StepCosts",
    "ImportanceTimeEstimate",
    "measure_step_costs",
    "estimate_importance_seconds",
    "job_threads",
]

LONG_SECONDS = 600.0  # above this a person is told the run is long (ten minutes)
MEASURE_BUDGET_S = 2.0  # timed repeats stop once this much has been spent (big models: one)
TIMED_REPEATS = 2  # after one warm-up
EVAL_TIMING_IMAGES = 32  # images of the timed evaluation forward


@dataclass(frozen=True)
class StepCosts:
    """What one finetune step and one evaluated image cost on this model, measured now."""

    step_seconds: float  # forward + backward + SGD step of one batch
    image_seconds: float  # one image's forward in evaluation
    batch_size: int
    threads: int


@dataclass(frozen=True)
class ImportanceTimeEstimate:
    """The estimated duration of an importance run, and the figures it is made of."""

    seconds: float
    entries: int
    networks: int  # distinct networks scored (each trained once)
    steps: int  # finetune steps per network (0: distortion mode trains nothing)
    eval_images: int  # images each network is evaluated on
    processes: int
    costs: StepCosts

    @property
    def long(self) -> bool:
        """More than :data:`LONG_SECONDS`: worth saying before it starts."""
        return self.seconds > LONG_SECONDS

    @property
    def duration(self) -> str:
        """The estimated time in words ("47 min")."""
        return _duration(self.seconds)

    def describe(self) -> str:
        """One line: the estimate and how it was made."""
        costs = self.costs
        work = f"{self.eval_images} images × {_duration(costs.image_seconds)}"
        if self.steps:
            work = f"{self.steps} steps × {_duration(costs.step_seconds)} + {work}"
        plural = "es" if self.processes != 1 else ""
        return (
            f"about {self.duration} (an estimate): {self.networks} networks for "
            f"{self.entries} entries × ({work}), over {self.processes} process{plural}, timed "
            f"on the original network at {costs.threads} thread"
            f"{'s' if costs.threads != 1 else ''}"
        )


def measure_step_costs(
    bundle: Any, traced: Any, data: Any, config: ImportanceConfig, *, threads: int | None = None
) -> StepCosts:
    """Time one finetune step and one image's evaluation of the original network, now.

    The network and images are the ones the run uses (the training form of the unmodified model,
    a batch of the finetune split, channels-last as ``config`` says); one warm-up, then up to
    :data:`TIMED_REPEATS` timed repeats within :data:`MEASURE_BUDGET_S`, the median kept.

    Args:
        bundle, traced: the loaded model and its chain (a classifier's).
        data: its :class:`core.data.DataSplits`.
        config: the importance settings (batch size, channels-last).
        threads: intra-op threads of a job (None: this process's setting).

    Raises:
        LayerMergeError: the model is not a classifier with data to time it on.
    """
    _check_classifier(config, data)
    threads = threads or torch.get_num_threads()
    batch = min(config.batch_size, len(data.finetune))
    images, labels = default_collate([data.finetune[i] for i in range(batch)])
    labels = torch.as_tensor(labels)
    count = min(EVAL_TIMING_IMAGES, len(data.holdout))
    eval_images, _ = default_collate([data.holdout[i] for i in range(count)])
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        network = original_network(bundle.model, traced)
        if config.channels_last:
            network = network.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
            eval_images = eval_images.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=config.momentum)

        def step() -> None:
            loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def forward() -> None:
            with torch.inference_mode():
                network(eval_images)

        network.train()
        step_seconds = _timed(step)
        network.eval()
        image_seconds = _timed(forward) / count
    return StepCosts(step_seconds, image_seconds, batch, threads)


def estimate_importance_seconds(
    bundle: Any,
    traced: Any,
    data: Any,
    config: ImportanceConfig | None = None,
    *,
    family: ModelFamily | None = None,
    processes: int = 1,
    costs: StepCosts | None = None,
) -> ImportanceTimeEstimate:
    """How long :func:`core.workflows.tables.importance` will take with these settings.

    Args:
        bundle, traced, data: the loaded classifier, its chain and its data splits.
        config: the importance settings (None: the family's defaults); defaults that scale with
            the data (steps) are resolved as the run resolves them.
        family: the model's family (None: found from the model's name).
        processes: local worker processes the run will use.
        costs: :func:`measure_step_costs`'s answer, when already measured (it depends on the
            batch size and threads only, so a page measures once and re-estimates freely).

    Raises:
        LayerMergeError: settings or a model this estimate does not cover (not a classifier).
    """
    family = family or family_for(bundle.name)
    config = family.importance_config() if config is None else config
    _check_classifier(config, data)
    estimator = family.importance_estimator(config.mode)
    resolved = estimator.resolve(config, data)
    threads = job_threads(processes)
    batch = min(config.batch_size, len(data.finetune))
    stale = costs is None or costs.threads != threads
    if stale or (config.mode == "finetune" and costs.batch_size != batch):
        costs = measure_step_costs(bundle, traced, data, config, threads=threads)
    entries = [
        TableEntry(s.start, s.end, o.kernel, o.depthwise, o.stride, o.kept_convs)
        for s in family.scored_segments(traced)
        for o in s.options
    ]
    networks = len({estimator.job_id(entry, resolved) for entry in entries})
    if resolved.mode == "finetune":
        steps = int(resolved.steps or 0)
        evaluated = min(len(data.holdout), resolved.eval_images or len(data.holdout))
    else:  # distortion: one forward of the calibration batch, nothing trained
        steps = 0
        evaluated = min(len(data.holdout), resolved.calibration_images)
    per_network = steps * costs.step_seconds + evaluated * costs.image_seconds
    workers = min(processes, max(1, networks))
    # every worker also evaluates the unmodified network once (the base the deltas are against)
    seconds = math.ceil(networks / workers) * per_network + evaluated * costs.image_seconds
    return ImportanceTimeEstimate(
        seconds=seconds,
        entries=len(entries),
        networks=networks,
        steps=steps,
        eval_images=evaluated,
        processes=workers,
        costs=costs,
    )


def job_threads(processes: int) -> int:
    """The intra-op threads each of ``processes`` local jobs runs with (as the runner sets them)."""
    return Runner(processes=processes).threads_per_job()


def _check_classifier(config: Any, data: Any) -> None:
    if not isinstance(config, ImportanceConfig) or not hasattr(data, "finetune"):
        raise LayerMergeError(
            "a time estimate is made for a classifier's importance settings (mode, steps, "
            "evaluation images) only"
        )
    if len(data.finetune) == 0 or len(data.holdout) == 0:
        raise LayerMergeError("the data has an empty finetune or holdout split: nothing to time")


def _timed(work: Any) -> float:
    """The median of up to :data:`TIMED_REPEATS` timings of ``work()`` after a warm-up."""
    started = time.perf_counter()
    work()  # warm-up: allocations, kernel selection
    warm = time.perf_counter() - started
    times: list[float] = []
    spent = warm
    while len(times) < TIMED_REPEATS and spent < MEASURE_BUDGET_S:
        begin = time.perf_counter()
        work()
        times.append(time.perf_counter() - begin)
        spent += times[-1]
    return statistics.median(times) if times else warm


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
