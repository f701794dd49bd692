"""The importance of a UNet's entries by ε-prediction loss (LAYERMERGE.md §4.2).

:class:`EpsilonLossEstimator` is the UNet family's :class:`~core.importance.ImportanceEstimator`;
:func:`core.importance.estimate_importance` runs it through the entry runner like every family's
(in this process, local processes or a dask cluster; resumable). For every entry it builds the UNet
that differs from the original in that one segment only (``core.importance.entry_solution``, then
the diffusion surgery), finetunes it briefly with the ε-loss on the ``train`` split (Adam lr 2e-4,
the paper's DDPM importance recipe, fewer steps), and measures the ε-loss on the disjoint
``holdout`` split with SEEDED noise and antithetic timesteps (the original code does not seed it; we
do, so two entries differ only by their networks). Then

    importance = exp(-Δℓ / ℓ_base),  Δℓ = ℓ_holdout(entry) - ℓ_holdout(original finetuned alike).

As on the classification path, single-conv entries that keep their conv ARE the original network
(no re-initialisation, see ``core.importance``), so they share one finetune run, ``original``: the
original finetuned the same number of steps. It is the estimator's ``reference_job``, which every
run includes and the Δs are measured against. ℓ_base is the unfinetuned original's holdout loss.
Each run is seeded from its job id, so the table does not depend on where or in which order the
runs happen.
"""

from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from core.errors import LayerMergeError, TableMismatchError
from core.families.unet.chain import UNetChain
from core.families.unet.data import DiffusionData
from core.families.unet.finetune import UNetFinetuneConfig, finetune_unet
from core.families.unet.loss import epsilon_loss
from core.families.unet.surgery import build_unet_training_network
from core.families.unet.unet import UNetBundle, unet_from_config, unet_state_digest
from core.importance import EntryScore, ImportanceEstimator, PortableWeights, entry_solution
from core.tables import TableEntry

__all__ = [
    "UNetImportanceConfig",
    "EpsilonLossEstimator",
    "UNetRecipe",
    "ORIGINAL_JOB",
    "entry_job_id",
    "estimate_unet_importance",
]

HOLDOUT_SEED = 0
IMPORTANCE_VERSION = 1  # bump when what a run measures changes: it invalidates cached tables
ORIGINAL_JOB = "original"


@dataclass(frozen=True)
class UNetImportanceConfig:
    """How each entry is scored: ``steps`` of Adam at ``lr`` on ``batch_size`` images.

    ``steps=0`` scores the unfinetuned networks. ``holdout_images`` limits the holdout images
    the ε-loss is measured on (None: all); ``data_seed`` is the split seed of the data.
    ``mode`` and ``normalization`` are fixed: a UNet has no distortion mode, and its importance
    is normalized by the loss.
    """

    steps: int = 60
    lr: float = 2e-4
    batch_size: int = 64
    seed: int = 0
    holdout_images: int | None = None
    data_seed: int = 0
    mode: str = "finetune"
    normalization: str = "loss"
    version: int = IMPORTANCE_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
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
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LayerMergeError(f"{name} must be a non-negative integer, got {value!r}")
        if self.mode != "finetune":
            raise LayerMergeError(
                f"--mode {self.mode} is not supported for diffusion UNets: their entries are "
                "scored by the ε-loss of briefly finetuned networks (finetune)"
            )
        if self.normalization != "loss":
            raise LayerMergeError(
                f"--normalization {self.normalization} is not supported for diffusion UNets: "
                "their importance is normalized by the ε-loss (loss)"
            )


class EpsilonLossEstimator(ImportanceEstimator):
    """Finetunes an entry's UNet briefly, then measures its seeded holdout ε-loss.

    Scores have no accuracy (NaN); ``base`` is the unfinetuned original's holdout ε-loss, and the
    Δs are measured against the ``original`` job (the original finetuned alike).
    """

    mode = "finetune"
    config_type = UNetImportanceConfig
    reference_job = ORIGINAL_JOB

    def __init__(
        self, model: nn.Module, uchain: UNetChain, data: DiffusionData, config: UNetImportanceConfig
    ) -> None:
        super().__init__(model, uchain, data, config)
        limit = config.holdout_images
        self._holdout = data.holdout[:limit] if limit else data.holdout
        # the finetune's own holdout evaluations cost nothing on one image
        self._train_data = replace(data, holdout=data.holdout[:1])

    @classmethod
    def job_id(cls, entry: TableEntry, config: Any) -> str:
        if entry.end - entry.start == 1 and not entry.is_removal:
            return ORIGINAL_JOB
        kept = ",".join(str(c) for c in entry.kept_convs)
        return f"{entry.start}-{entry.end}-k{entry.kernel}-[{kept}]"

    def __call__(self, traced: UNetChain, entry: TableEntry, *, seed: int = 0) -> EntryScore:
        self._check_traced(traced)
        _, base_loss = self.base
        started = time.perf_counter()
        if self.job_id(entry, self.config) == ORIGINAL_JOB:
            network = copy.deepcopy(self.model)
        else:
            solution = entry_solution(traced.chain, entry)
            network, _ = build_unet_training_network(self.model, traced, solution)
        steps = self.config.steps
        if steps:
            finetune = UNetFinetuneConfig(
                steps=steps,
                lr=self.config.lr,
                batch_size=self.config.batch_size,
                seed=seed,
                eval_every=steps,
            )
            finetune_unet(network, self._train_data, finetune)
        _, loss = self._evaluate(network)
        return EntryScore(
            accuracy=math.nan,
            loss=loss,
            delta_acc=math.nan,
            delta_loss=loss - base_loss,
            base_accuracy=math.nan,
            base_loss=base_loss,
            steps=steps,
            seconds=time.perf_counter() - started,
        )

    def _original(self) -> nn.Module:
        return self.model

    def _evaluate(self, network: nn.Module) -> tuple[float, float]:
        return math.nan, epsilon_loss(network, self._holdout, seed=HOLDOUT_SEED)


@dataclass(frozen=True)
class UNetRecipe(PortableWeights):
    """What a worker needs to rebuild a UNet: its config and its weights as a state_dict file's
    bytes (or, after :meth:`localized`, the file), checked by digest. Workers need no folder."""

    name: str
    config: dict[str, Any]
    weights_source: str
    weights_digest: str
    weights_bytes: bytes | None = None
    weights_path: str | None = None
    weights_file: ClassVar[str] = "unet-weights.pt"

    @classmethod
    def from_bundle(cls, bundle: UNetBundle) -> UNetRecipe:
        buffer = io.BytesIO()
        torch.save(bundle.model.state_dict(), buffer)
        return cls(
            bundle.name,
            dict(bundle.config),
            bundle.weights_source,
            bundle.weights_digest,
            weights_bytes=buffer.getvalue(),
        )

    def build(self) -> UNetBundle:
        """Rebuild the UNet and check it has the recorded weights.

        Raises:
            TableMismatchError: the rebuilt weights differ.
        """
        from core.models import load_state_dict_bytes

        data = self.weights_bytes
        if data is None and self.weights_path is not None:
            data = Path(self.weights_path).read_bytes()
        model = unet_from_config(self.config)
        if data is not None:
            model.load_state_dict(load_state_dict_bytes(data, f"{self.name} weights"))
        digest = unet_state_digest(model)
        if digest != self.weights_digest:
            raise TableMismatchError(
                f"a worker rebuilt {self.name} with weights {digest}, not {self.weights_digest}"
            )
        return UNetBundle(model, self.name, dict(self.config), self.weights_source, None, digest)


def entry_job_id(entry: TableEntry) -> str:
    """Entries that build the same network share a job: every single kept conv is the original."""
    return EpsilonLossEstimator.job_id(entry, None)


def estimate_unet_importance(
    bundle: UNetBundle,
    uchain: UNetChain,
    data: DiffusionData,
    config: UNetImportanceConfig | None = None,
    *,
    out: str | Path | None = None,
    jobs: int = 1,
    progress: Any = None,
) -> tuple[tuple[TableEntry, ...], dict[str, Any]]:
    """:func:`core.importance.estimate_importance` for a UNet, as ``(entries, meta)``.

    Kept for callers written before the tables were one pipeline (the app's UNet page); new code
    calls :func:`core.workflows.tables.importance` or :func:`core.importance.estimate_importance`.
    """
    from core.families.base import family_named
    from core.importance import estimate_importance

    table = estimate_importance(
        bundle,
        uchain,
        data,
        config or UNetImportanceConfig(),
        family=family_named("unet"),
        out=out,
        jobs=jobs,
        progress=progress,
    )
    return table.entries, table.meta
