"""The importance table of a UNet's entries by ε-prediction loss (LAYERMERGE.md §4.2).

For every entry we build the UNet that differs from the original in that one segment only
(``core.importance.entry_solution``, then the diffusion surgery), finetune it briefly with the
ε-loss on the ``train`` split (Adam lr 2e-4, the paper's DDPM importance recipe, fewer steps), and
measure the ε-loss on the disjoint ``holdout`` split with SEEDED noise and antithetic timesteps
(the original code does not seed it; we do, so two entries differ only by their networks). Then

    importance = exp(-Δℓ / ℓ_base),  Δℓ = ℓ_holdout(entry) - ℓ_holdout(original).

As on the classification path, single-conv entries that keep their conv ARE the original network
(no re-initialisation, see ``core.importance``), so they share one finetune run: the original
finetuned the same number of steps, which is also what Δℓ is measured against. ℓ_base is the
unfinetuned original's holdout loss. Entries run through joblib (local processes); each is seeded
from its key, so the table does not depend on the number of jobs. Each finished run is saved at
once to a partial store in the output directory, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError, TableMismatchError
from core.families.unet.chain import UNetChain, unet_segments
from core.families.unet.data import DiffusionData
from core.families.unet.finetune import UNetFinetuneConfig, finetune_unet
from core.families.unet.loss import epsilon_loss
from core.families.unet.surgery import build_unet_training_network
from core.families.unet.unet import UNetBundle
from core.importance import entry_seed, entry_solution
from core.latency import PartialStore
from core.tables import TableEntry, read_meta, write_importance_csv, write_meta

__all__ = ["UNetImportanceConfig", "estimate_unet_importance", "entry_job_id"]

HOLDOUT_SEED = 0
IMPORTANCE_VERSION = 1  # bump when what a run measures changes: it invalidates partial stores
ORIGINAL_JOB = "original"


@dataclass(frozen=True)
class UNetImportanceConfig:
    """How each entry is scored: ``steps`` of Adam at ``lr`` on ``batch_size`` images."""

    steps: int = 60
    lr: float = 2e-4
    batch_size: int = 64
    seed: int = 0
    holdout_images: int | None = None  # None: the whole holdout split

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise LayerMergeError(f"importance steps must be an integer >= 0, got {self.steps!r}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < 1):
            raise LayerMergeError(f"importance lr must be in (0, 1), got {self.lr!r}")
        if self.holdout_images is not None and (
            not isinstance(self.holdout_images, int) or self.holdout_images < 1
        ):
            raise LayerMergeError(
                f"holdout images must be a positive integer or None, got {self.holdout_images!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise LayerMergeError(f"batch size must be a positive integer, got {self.batch_size!r}")


def entry_job_id(entry: TableEntry) -> str:
    """Entries that build the same network share a job: every single kept conv is the original."""
    if entry.end - entry.start == 1 and not entry.is_removal:
        return ORIGINAL_JOB
    kept = ",".join(str(c) for c in entry.kept_convs)
    return f"{entry.start}-{entry.end}-k{entry.kernel}-[{kept}]"


def estimate_unet_importance(
    bundle: UNetBundle,
    uchain: UNetChain,
    data: DiffusionData,
    config: UNetImportanceConfig | None = None,
    *,
    out: str | Path | None = None,
    jobs: int = 1,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> tuple[tuple[TableEntry, ...], dict[str, Any]]:
    """Score every entry of ``uchain`` (removals included); write ``importance.csv`` + meta.

    Returns:
        The entries with ``importance`` and ``delta_loss`` (``delta_acc`` is NaN: no accuracy),
        and the metadata added to ``meta.json``.
    """
    config = config or UNetImportanceConfig()
    if not isinstance(jobs, int) or jobs < 1:
        raise LayerMergeError(f"jobs must be a positive integer, got {jobs!r}")
    started = time.perf_counter()
    holdout = data.holdout[: config.holdout_images] if config.holdout_images else data.holdout
    base_loss = epsilon_loss(bundle.model, holdout, seed=HOLDOUT_SEED)
    entries = [
        TableEntry(s.start, s.end, o.kernel, o.depthwise, o.stride, o.kept_convs)
        for s in unet_segments(uchain)
        for o in s.options
    ]
    by_job: dict[str, TableEntry] = {}
    for entry in entries:
        by_job.setdefault(entry_job_id(entry), entry)
    job_ids = sorted(by_job, key=lambda j: (j != ORIGINAL_JOB, j))
    payload = (bundle.config, bundle.model.state_dict(), uchain, data, holdout, config)
    # Each finished run is saved at once: a killed run resumes where it stopped.
    key = _run_key(bundle, uchain, data, config)
    store = PartialStore(
        Path(out) if out is not None else None, f"unet-importance-{key}", {"key": key}
    )
    losses = {j: float(r["loss"]) for j, r in store.entries.items() if j in by_job}
    resumed = len(losses)
    pending = [j for j in job_ids if j not in losses]
    if progress is not None:
        progress(resumed, len(job_ids), None)

    def finished(done: int, job_id: str, loss: float) -> None:
        losses[job_id] = loss
        store.entries[job_id] = {"loss": loss}
        store.save()
        if progress is not None:
            rate = (time.perf_counter() - started) / done
            progress(resumed + done, len(job_ids), rate * (len(pending) - done))

    if jobs == 1:
        for done, job_id in enumerate(pending, start=1):
            finished(done, job_id, _score_job(payload, job_id, by_job[job_id]))
    elif pending:
        from joblib import Parallel, delayed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        runner = Parallel(n_jobs=jobs, backend="loky", return_as="generator")
        results = runner(
            delayed(_score_job)(payload, job_id, by_job[job_id], threads) for job_id in pending
        )
        for done, (job_id, loss) in enumerate(zip(pending, results, strict=True), start=1):
            finished(done, job_id, loss)
    reference = losses[ORIGINAL_JOB]
    scored = []
    for entry in entries:
        delta = losses[entry_job_id(entry)] - reference
        scored.append(
            replace(
                entry,
                importance=math.exp(-delta / max(base_loss, 1e-12)),
                delta_loss=delta,
                identity_segment=entry.is_removal and entry.end in uchain.upsample_convs,
            )
        )
    meta = {
        "importance_kind": "epsilon_loss",
        "importance_normalization": "loss",
        "importance_config": asdict(config),
        "importance_jobs": jobs,
        "importance_distinct_runs": len(job_ids),
        "importance_resumed_runs": resumed,
        "importance_key": key,
        "importance_seconds": time.perf_counter() - started,
        "base_loss": base_loss,
        "finetuned_original_loss": reference,
        "importance_weights_digest": bundle.weights_digest,
        "importance_chain_digest": uchain.digest(),
        "data": data.name,
        "data_digest": data.digest,
        "importance_created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if out is not None:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        existing = read_meta(directory) if (directory / "meta.json").is_file() else {}
        if existing.get("chain_digest", uchain.digest()) != uchain.digest():
            raise TableMismatchError(
                f"{directory} holds the latency table of another UNet (chain "
                f"{existing['chain_digest']}, this one {uchain.digest()}); use another directory"
            )
        write_importance_csv(directory / "importance.csv", scored)
        write_meta(directory, {**existing, **meta})
        store.remove()
    return tuple(scored), meta


def _run_key(
    bundle: UNetBundle, uchain: UNetChain, data: DiffusionData, config: UNetImportanceConfig
) -> str:
    """What every run's result depends on: the partial store of another setting is ignored."""
    fields = {
        "version": IMPORTANCE_VERSION,
        "chain": uchain.digest(),
        "weights": bundle.weights_digest,
        "data": data.digest,
        "config": asdict(config),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _score_job(payload: tuple, job_id: str, entry: TableEntry, threads: int | None = None) -> float:
    """Finetune the entry's network briefly; its holdout ε-loss."""
    from core.families.unet.unet import unet_from_config

    config_dict, state, uchain, data, holdout, config = payload
    if threads is not None:
        torch.set_num_threads(threads)
    unet: nn.Module = unet_from_config(config_dict)
    unet.load_state_dict(state)
    if job_id == ORIGINAL_JOB:
        network = copy.deepcopy(unet)
    else:
        network, _ = build_unet_training_network(unet, uchain, entry_solution(uchain.chain, entry))
    seed = entry_seed(config.seed, job_id)
    if config.steps:
        finetune_config = UNetFinetuneConfig(
            steps=config.steps,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=seed,
            eval_every=config.steps,
        )
        finetune_unet(network, _without_holdout_eval(data), finetune_config)
    return epsilon_loss(network, holdout, seed=HOLDOUT_SEED)


def _without_holdout_eval(data: DiffusionData) -> DiffusionData:
    """The data with a one-image holdout: the finetune's own evaluations then cost nothing."""
    return replace(data, holdout=data.holdout[:1])
