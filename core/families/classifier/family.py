"""Classification CNNs as a model family: a chain traced with torch.fx, step networks, accuracy.

Everything here delegates to the modules that do the work (``core.chain``, ``core.surgery``,
``core.merge``, ``core.export``, ``core.data``, ``core.finetune``); this file only says which of
them a classifier uses, so generic code never has to ask whether it holds a CNN.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.chain import Chain, trace_chain
from core.errors import DataError, LayerMergeError
from core.families.base import (
    FinetunedWeights,
    FinetuneRun,
    ModelFamily,
    TaskInfo,
    family_model_names,
    register_family,
)
from core.models import ModelBundle, build_model, stated_input_size
from core.models import list_models as classifier_models
from core.segments import Segment, find_segments
from core.solution import Solution

__all__ = ["ClassifierFamily"]


@register_family
class ClassifierFamily(ModelFamily):
    """Image classifiers mapping ``(B, C, H, W)`` to ``(B, classes)`` logits."""

    name = "classifier"
    task = TaskInfo(
        name="classification", quality="accuracy", higher_is_better=True, panel="accuracy"
    )
    checkpoint_format = "layermerge-compressed"

    def claims(self, model: str) -> bool:
        return True  # registry names and module:function; later families claim theirs first

    def load(self, model: str, *, weights=None, width=1.0, input_size=None) -> ModelBundle:
        """See :meth:`ModelFamily.load`."""
        if ":" not in model and model not in classifier_models():
            names = sorted({*classifier_models(), *family_model_names()})
            raise LayerMergeError(
                f"unknown model {model!r}; choose one of {', '.join(names)}, "
                "or give your own architecture as module:function"
            )
        return build_model(model, width=width, weights=weights, input_size=input_size)

    def states_input_size(self, model: str) -> bool:
        return stated_input_size(model) is not None

    def trace(self, bundle: ModelBundle) -> Chain:
        return trace_chain(bundle.model, bundle.input_size)

    def chain_of(self, traced: Chain) -> Chain:
        return traced

    def segments(self, traced: Chain) -> tuple[Segment, ...]:
        return find_segments(traced)

    def training_form(self, model: nn.Module, traced: Chain, solution: Solution) -> nn.Module:
        from core.surgery import build_training_network

        return build_training_network(model, traced, solution)

    def merge(self, training: nn.Module, traced: Chain, solution: Solution) -> nn.Module:
        from core.merge import merge

        was_training = training.training
        merged = merge(training.eval(), traced, solution)
        training.train(was_training)
        return merged

    @torch.no_grad()
    def merge_error(self, training: nn.Module, merged: nn.Module, traced: Chain) -> float:
        inputs = self.onnx_inputs(traced, batch=2)
        reference = training.eval()(*inputs.values())
        got = merged.eval()(*inputs.values())
        return float((reference - got).abs().max() / reference.abs().max().clamp_min(1e-12))

    def checkpoint(
        self,
        network: nn.Module,
        bundle: ModelBundle,
        traced: Chain,
        solution: Solution,
        *,
        metrics: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        from core.families.classifier.checkpoint import build_checkpoint

        return build_checkpoint(
            network,
            solution=solution,
            model_name=bundle.name,
            width=bundle.width,
            input_size=bundle.input_size,
            num_classes=bundle.num_classes,
            metrics=metrics,
        )

    def from_checkpoint(
        self, checkpoint: Mapping[str, Any], *, name: str = "checkpoint"
    ) -> nn.Module:
        from core.families.classifier.checkpoint import network_from_checkpoint, validate_checkpoint

        validate_checkpoint(checkpoint, name)
        return network_from_checkpoint(checkpoint).eval()

    def onnx_inputs(self, traced: Chain, *, batch: int = 1) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return {"input": torch.randn(batch, *traced.input_shape, generator=generator)}

    def load_data(self, spec: str, bundle: ModelBundle, traced: Chain, *, seed: int = 0) -> Any:
        from core.data import load_data

        splits = load_data(spec, input_size=bundle.input_size, seed=seed)
        if splits.num_classes != bundle.num_classes:
            raise DataError(
                f"{bundle.name} has {bundle.num_classes} outputs but data {splits.name!r} has "
                f"{splits.num_classes} classes; give weights trained on this data (--weights)"
            )
        return splits

    def evaluate(self, network: nn.Module, data: Any) -> dict[str, float]:
        from core.finetune import evaluate

        result = evaluate(network, data.test)
        return {"accuracy": result.accuracy, "loss": result.loss}

    # ------------------------------------------------------------------ the workflows' parts
    def trace_model(self, model: nn.Module, *, input_size: int | None = None) -> Chain:
        if input_size is None:
            raise LayerMergeError("a classifier is traced at an input size: give input_size")
        return trace_chain(model, input_size)

    def describe_chain(
        self, bundle: ModelBundle, traced: Chain, description: dict[str, Any]
    ) -> dict[str, Any]:
        return {"model": description["model"], "width": bundle.width, **description}

    def network_summary(self, network: nn.Module, traced: Chain) -> dict[str, int]:
        from core.families.classifier.workflow import summary

        return summary(network, traced)

    def figures(self) -> dict[str, tuple[str, str]]:
        return {"accuracy": ("test accuracy", "{:.2f}%"), "loss": ("test loss", "{:.4f}")}

    def export_onnx(self, network: nn.Module, path: Path, traced: Chain) -> Path:
        from core.onnx_export import export_onnx

        return export_onnx(network, path, traced.input_shape)

    def finetune_state_path(self, out: Path) -> Path:
        from core.families.classifier.workflow import STATE_NAME

        return out / STATE_NAME

    def finetune_config(self, options: Mapping[str, Any], data: Any) -> Any:
        from core.families.classifier.workflow import finetune_config

        return finetune_config(options)

    def finetune(self, bundle, traced, training, data, config, **run: Any) -> FinetuneRun:
        """See :meth:`ModelFamily.finetune`; ``run`` holds its keywords."""
        from core.families.classifier.workflow import run_finetune

        return run_finetune(bundle, training, data, config, **run)

    def curve_point(self, report: Any) -> tuple[dict[str, float | None], bool]:
        return {"loss": report.loss, "accuracy": report.accuracy}, False

    def finetune_steps(self, config: Any, data: Any) -> int | None:
        from core.families.classifier.workflow import finetune_steps

        return finetune_steps(config, data)

    def interim_network(self, state: Path, step: int) -> nn.Module | None:
        from core.families.classifier.workflow import interim_network

        return interim_network(state, step)

    def interim_figures(self, network: nn.Module, data: Any) -> dict[str, float]:
        from core.families.classifier.workflow import interim_figures

        return interim_figures(network, data)

    def load_finetuned(
        self,
        source: str | Path,
        training: nn.Module,
        bundle: ModelBundle,
        traced: Chain,
        solution: Solution,
    ) -> FinetunedWeights:
        from core.families.classifier.workflow import load_finetuned

        return load_finetuned(source, training)

    def speed_baseline(
        self, bundle: ModelBundle, traced: Chain, baseline: str | None
    ) -> tuple[nn.Module, str]:
        if baseline == "module":
            return bundle.model, "original module"
        if baseline not in (None, "folded"):
            raise LayerMergeError(f"unknown baseline {baseline!r}; choose folded or module")
        from core.benchmark import folded_original

        return folded_original(bundle.model, traced), "original, BN folded"

    def load_compressed(self, source: str | Path, bundle: ModelBundle, traced: Chain) -> nn.Module:
        network = super().load_compressed(source, bundle, traced)
        if tuple(network.input_shape) != tuple(traced.input_shape):
            raise LayerMergeError(
                f"{source} takes {tuple(network.input_shape)} inputs, the model "
                f"{tuple(traced.input_shape)}; pass the same --input-size"
            )
        return network

    # ------------------------------------------------------------------ tables
    def table_fields(self, bundle: ModelBundle, traced: Chain) -> dict[str, Any]:
        return {
            "model": bundle.name,
            "width": bundle.width,
            "input_size": bundle.input_size,
            "input_shape": list(traced.input_shape),
            "activation": traced.default_activation or "relu",
        }

    def scored_segments(self, traced: Chain) -> tuple[Segment, ...]:
        # the layer-only baseline removes single convs: their removals are scored too
        return find_segments(traced, include_removals=True)

    def latency_geometry(self, traced: Chain, segment: Segment, option: Any) -> dict[str, Any]:
        from core.segments import segment_geometry

        geometry = segment_geometry(traced, segment.start, segment.end, option.kept_convs)
        return {**geometry, "activation": traced.default_activation or "relu"}

    def latency_module(self, geometry: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...]]:
        from core.latency import merged_conv_module

        shape = (geometry["in_channels"], geometry["input_height"], geometry["input_width"])
        return merged_conv_module(geometry, geometry["activation"]), shape

    def importance_config(self, **options: Any) -> Any:
        from dataclasses import fields

        from core.importance import ImportanceConfig

        known = {f.name for f in fields(ImportanceConfig)} - {"version"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise LayerMergeError(f"unknown importance options {unknown} for a classifier")
        return ImportanceConfig(**{k: v for k, v in options.items() if v is not None})

    def importance_estimator(self, mode: str) -> type:
        from core.importance import DistortionEstimator, FinetuneEstimator

        estimators = {e.mode: e for e in (FinetuneEstimator, DistortionEstimator)}
        if mode not in estimators:
            raise LayerMergeError(f"mode must be one of {', '.join(estimators)}, got {mode!r}")
        return estimators[mode]

    def recipe(self, bundle: ModelBundle, *, portable: bool = False) -> Any:
        from core.importance import ModelRecipe

        return ModelRecipe.from_bundle(bundle, portable=portable)

    # ------------------------------------------------------------------ speed
    structure_complete = True  # stem, head, adds and activations: the whole network is covered

    def structure_costs(self, traced: Chain) -> tuple[Any, ...]:
        from core.latency import chain_structure_costs

        return chain_structure_costs(traced, traced.default_activation or "relu")
