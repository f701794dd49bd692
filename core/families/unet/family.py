"""Diffusion UNets (diffusers ``UNet2DModel``) as a model family: ε-prediction, samples, digits-FD.

A UNet traces to a :class:`~core.families.unet.chain.UNetChain`, whose ``chain`` is an ordinary
LayerMerge chain with breaks that confine segments to one ResnetBlock2D; its training form and
merged form are UNets rebuilt from a JSON structure, so its checkpoint stores the config and the
structure beside the tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError
from core.families.base import (
    FinetunedWeights,
    FinetuneReport,
    FinetuneRun,
    ModelFamily,
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

    def load(
        self,
        model: str,
        *,
        weights: str | Path | Mapping[str, torch.Tensor] | None = None,
        width: float = 1.0,
        input_size: int | None = None,
    ) -> UNetBundle:
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

    def finetune(
        self,
        bundle: UNetBundle,
        traced: UNetChain,
        training: nn.Module,
        data: Any,
        config: Any,
        *,
        checkpoint: Path | None,
        metadata: Mapping[str, Any],
        progress: Callable[[FinetuneReport], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> FinetuneRun:
        from core.families.unet.workflow import run_finetune

        # the run state has no place for metadata: the finetuned.pt beside it names the model
        return run_finetune(
            training, data, config, checkpoint=checkpoint, progress=progress, cancel=cancel
        )

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
