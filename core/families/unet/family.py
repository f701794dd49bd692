"""Diffusion UNets (diffusers ``UNet2DModel``) as a model family: ε-prediction, samples, digits-FD.

A UNet traces to a :class:`~core.families.unet.chain.UNetChain`, whose ``chain`` is an ordinary
LayerMerge chain with breaks that confine segments to one ResnetBlock2D; its training form and
merged form are UNets rebuilt from a JSON structure, so its checkpoint stores the config and the
structure beside the tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError
from core.families.base import (
    FinetunedWeights,
    FinetuneRun,
    ModelFamily,
    TableNotes,
    TaskInfo,
    register_family,
)
from core.families.unet.chain import UNetChain, trace_unet, unet_segments
from core.families.unet.unet import DEMO_UNET_NAME, DIFFUSERS_FOLDER_PREFIX, UNetBundle, build_unet
from core.segments import Segment
from core.solution import Solution

__all__ = ["UNetFamily"]

_EVAL_TIMESTEP = 500  # the timestep of the example inputs (merge check, ONNX)


@register_family
class UNetFamily(ModelFamily):
    """Denoisers mapping ``(sample, timestep)`` to the predicted noise ε."""

    name = "unet"
    task = TaskInfo(name="diffusion", quality="ε-loss", higher_is_better=False, panel="samples")
    checkpoint_format = "layermerge-unet-compressed"

    def claims(self, model: str) -> bool:
        return model == DEMO_UNET_NAME or model.startswith(DIFFUSERS_FOLDER_PREFIX)

    def model_names(self) -> list[str]:
        return [DEMO_UNET_NAME]

    def load(self, model: str, *, weights=None, width=1.0, input_size=None) -> UNetBundle:
        """See :meth:`ModelFamily.load`."""
        if width != 1.0:
            raise LayerMergeError(
                f"width {width} applies to MobileNetV2 only; a diffusion UNet has no width option"
            )
        if weights is not None and not isinstance(weights, str | Path):
            raise LayerMergeError("a diffusion UNet's weights are a diffusers folder, not a dict")
        if weights is not None and model.startswith(DIFFUSERS_FOLDER_PREFIX):
            raise LayerMergeError(
                f"{model} takes its weights from its own folder; drop --weights (or use "
                f"{DEMO_UNET_NAME} --weights FOLDER)"
            )
        if weights is not None and not Path(weights).is_dir():
            raise LayerMergeError(
                f"--weights {weights} is not a folder: for {DEMO_UNET_NAME}, --weights takes a "
                "diffusers folder (config.json and diffusion_pytorch_model.safetensors)"
            )
        bundle = build_unet(model, weights=weights)
        if input_size is not None and input_size != bundle.input_size:
            raise LayerMergeError(
                f"input size {input_size}: {bundle.name} runs at its config's sample_size "
                f"{bundle.input_size}; drop --input-size"
            )
        return bundle

    def trace(self, bundle: UNetBundle) -> UNetChain:
        return trace_unet(bundle.model)

    def chain_of(self, traced: UNetChain) -> Chain:
        return traced.chain

    def segments(self, traced: UNetChain) -> tuple[Segment, ...]:
        return unet_segments(traced)

    def training_form(self, model: nn.Module, traced: UNetChain, solution: Solution) -> nn.Module:
        from core.families.unet.surgery import build_unet_training_network

        network, _ = build_unet_training_network(model, traced, solution)
        return network

    def merge(self, training: nn.Module, traced: UNetChain, solution: Solution) -> nn.Module:
        from core.families.unet.merge import merge_unet

        return merge_unet(training)

    def merge_error(self, training: nn.Module, merged: nn.Module, traced: UNetChain) -> float:
        from core.families.unet.onnx_export import merge_error

        return merge_error(training, merged, traced.chain.input_shape)

    def checkpoint(
        self,
        network: nn.Module,
        bundle: UNetBundle,
        traced: UNetChain,
        solution: Solution,
        *,
        metrics: Mapping[str, Any] | None = None,
        merged: bool = True,
    ) -> dict[str, Any]:
        from core.families.unet.export import build_unet_checkpoint
        from core.families.unet.surgery import structure_from_solution

        structure = {**structure_from_solution(traced, solution), "merged": merged}
        return build_unet_checkpoint(
            network,
            config=bundle.config,
            structure=structure,
            solution=solution,
            model_name=bundle.name,
            metrics=metrics,
        )

    def from_checkpoint(
        self, checkpoint: Mapping[str, Any], *, name: str = "checkpoint"
    ) -> nn.Module:
        from core.families.unet.export import unet_from_checkpoint

        return unet_from_checkpoint(checkpoint, name=name)

    def onnx_inputs(self, traced: UNetChain, *, batch: int = 1) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return {
            "sample": torch.randn(batch, *traced.chain.input_shape, generator=generator),
            "timestep": torch.full((batch,), _EVAL_TIMESTEP, dtype=torch.long),
        }

    def load_data(self, spec: str, bundle: UNetBundle, traced: UNetChain, *, seed: int = 0) -> Any:
        from core.families.unet.data import load_diffusion_data

        data = load_diffusion_data(spec, size=bundle.input_size, seed=seed)
        shape = tuple(traced.chain.input_shape)
        if tuple(data.train.shape[1:]) != shape:
            got = "x".join(str(int(v)) for v in data.train.shape[1:])
            raise LayerMergeError(
                f"{data.name} images are {got} but {bundle.name} takes "
                f"{'x'.join(str(int(v)) for v in shape)} samples"
            )
        return data

    def evaluate(self, network: nn.Module, data: Any) -> dict[str, float]:
        from core.families.unet.loss import epsilon_loss

        return {"eps_loss": epsilon_loss(network, data.holdout)}

    # ------------------------------------------------------------------ the workflows' parts
    def trace_model(self, model: nn.Module, *, input_size: int | None = None) -> UNetChain:
        return trace_unet(model)  # a UNet runs at its config's sample_size

    def describe_chain(
        self, bundle: UNetBundle, traced: UNetChain, description: dict[str, Any]
    ) -> dict[str, Any]:
        from core.families.unet.workflow import describe_chain

        return describe_chain(bundle, traced, description)

    def result_fields(self) -> dict[str, Any]:
        return {"kind": "diffusion"}

    def network_summary(self, network: nn.Module, traced: UNetChain) -> dict[str, int]:
        from core.families.unet.workflow import summary

        return summary(network, traced)

    def figures(self) -> dict[str, tuple[str, str]]:
        return {"eps_loss": ("holdout ε-loss", "{:.4f}")}

    def metric_names(self, job: str) -> dict[str, str]:
        if job == "finetune":
            return {
                "original": "{}_original",
                "surgery": "{}_after_surgery",
                "finetuned": "{}_after",
                "merged": "{}_merged",
            }
        return {"original": "{}_before", "merged": "{}_after"}

    def export_onnx(self, network: nn.Module, path: Path, traced: UNetChain) -> Path:
        from core.families.unet.onnx_export import export_unet_onnx

        return export_unet_onnx(network, path, traced.chain.input_shape)

    def finetune_state_path(self, out: Path) -> Path:
        from core.families.unet.workflow import STATE_NAME

        return out / STATE_NAME

    def finetune_config(self, options: Mapping[str, Any], data: Any) -> Any:
        from core.families.unet.workflow import finetune_config

        return finetune_config(options, data)

    def finetune(self, bundle, traced, training, data, config, **run: Any) -> FinetuneRun:
        """See :meth:`ModelFamily.finetune`; ``run`` holds its keywords."""
        from core.families.unet.workflow import run_finetune

        run.pop("metadata", None)  # the run state has no place for it: finetuned.pt names the model
        return run_finetune(training, data, config, **run)

    def curve_point(self, report: Any) -> tuple[dict[str, float | None], bool]:
        holdout = report.holdout_loss
        return {"loss": report.train_loss, "holdout": holdout}, holdout is not None

    def save_finetuned(
        self,
        network: nn.Module,
        bundle: UNetBundle,
        traced: UNetChain,
        solution: Solution,
        out: Path,
        *,
        metrics: Mapping[str, Any],
    ) -> Path:
        from core.families.unet.workflow import FINETUNED_NAME
        from core.files import atomic_torch_save

        checkpoint = self.checkpoint(
            network, bundle, traced, solution, metrics=metrics, merged=False
        )
        return atomic_torch_save(checkpoint, out / FINETUNED_NAME)

    def load_finetuned(
        self,
        source: str | Path,
        training: nn.Module,
        bundle: UNetBundle,
        traced: UNetChain,
        solution: Solution,
    ) -> FinetunedWeights:
        from core.families.unet.workflow import load_finetuned

        return load_finetuned(source, bundle, traced, solution)

    def speed_baseline(
        self, bundle: UNetBundle, traced: UNetChain, baseline: str | None
    ) -> tuple[nn.Module, str]:
        if baseline == "folded":
            raise LayerMergeError(
                "--baseline folded: a diffusion UNet has no BatchNorm to fold; its baseline is "
                "the module as built"
            )
        return bundle.model, "original UNet2DModel (no BatchNorm to fold)"

    def bench_backends(self) -> tuple[str, ...]:
        return ("torch",)

    def timing_module(self, network: nn.Module) -> nn.Module:
        from core.families.unet.latency import UNetForward

        return UNetForward(network)

    def load_compressed(
        self, source: str | Path, bundle: UNetBundle, traced: UNetChain
    ) -> nn.Module:
        from core.families.unet.workflow import load_compressed

        return load_compressed(source, bundle)

    def measure_config(self, options: Mapping[str, Any], bundle: UNetBundle) -> Any:
        from core.families.unet.workflow import measure_config

        return measure_config(options, bundle)

    def measure_extra(
        self, config: Any, original: nn.Module, compressed: nn.Module, *, threads: int | None
    ) -> dict[str, Any]:
        from core.families.unet.workflow import measure_extra

        return measure_extra(config, original, compressed, threads=threads)

    # ------------------------------------------------------------------ tables
    table_notes = TableNotes(
        model="diffusion UNet",
        network="UNet",
        latency="one denoising step; the table leaves out attention, norm1, skips, the time MLP "
        "and conv_in/conv_out",
    )
    # UNet tables have only been measured on CPUs: a CUDA timing would be untested numbers
    latency_devices = ("cpu",)

    def table_fields(self, bundle: UNetBundle, traced: UNetChain) -> dict[str, Any]:
        return {
            "model": bundle.name,
            "width": 1.0,
            "input_size": bundle.input_size,
            "input_shape": list(traced.chain.input_shape),
            "activation": "groupnorm_silu",  # what a ResnetBlock2D's removable activation is
            "unet_config": traced.config,
        }

    def latency_geometry(self, traced: UNetChain, segment: Segment, option: Any) -> dict[str, Any]:
        from core.families.unet.latency import entry_geometry

        return entry_geometry(traced, segment, option)

    def latency_module(self, geometry: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...]]:
        from core.families.unet.latency import geometry_module

        return geometry_module(geometry)

    def timed_network(self, model: nn.Module) -> nn.Module:
        from core.families.unet.latency import UNetForward

        # the wrapper takes the UNet's mode, so timing (eval, then restore) leaves it as it was
        return UNetForward(model).train(model.training)

    def importance_config(self, **options: Any) -> Any:
        from core.families.unet.importance import UNetImportanceConfig

        refused = {
            "reinit_single": "re-initialising single layers is the classifiers' convention",
            "calibration_images": "it belongs to distortion mode",
            "momentum": "the UNet's importance finetunes with Adam",
            "weight_decay": "the UNet's importance finetunes with Adam",
            "channels_last": "it applies to classifiers",
        }
        for name, why in refused.items():
            if options.get(name) not in (None, False):
                flag = name.replace("_", "-")
                raise LayerMergeError(f"--{flag} is not supported for diffusion UNets: {why}")
        names = {"eval_images": "holdout_images"}
        known = {"mode", "steps", "lr", "batch_size", "normalization", "seed", "data_seed"}
        unknown = sorted(set(options) - known - set(names) - set(refused))
        if unknown:
            raise LayerMergeError(f"unknown importance options {unknown} for a diffusion UNet")
        settings = {names.get(k, k): v for k, v in options.items() if k not in refused}
        return UNetImportanceConfig(**{k: v for k, v in settings.items() if v is not None})

    def importance_estimator(self, mode: str) -> type:
        from core.families.unet.importance import EpsilonLossEstimator

        if mode != EpsilonLossEstimator.mode:
            raise LayerMergeError(
                f"--mode {mode} is not supported for diffusion UNets: their entries are scored "
                "by the ε-loss of briefly finetuned networks (finetune)"
            )
        return EpsilonLossEstimator

    def data_problem(self, spec: str, bundle: UNetBundle) -> str | None:
        from core.families.unet.data import diffusion_data_problem

        return diffusion_data_problem(spec, bundle.in_channels, name=bundle.name)

    def recipe(self, bundle: UNetBundle, *, portable: bool = False) -> Any:
        from core.families.unet.importance import UNetRecipe

        return UNetRecipe.from_bundle(bundle)  # weights travel as bytes: no folder needed
