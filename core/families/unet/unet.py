"""Building and loading diffusers ``UNet2DModel``s safely and offline.

Users keep diffusion models as diffusers folders (``config.json`` plus
``diffusion_pytorch_model.safetensors`` or ``.bin``). We read the config as JSON, build the model
from it, and load the weights ourselves: safetensors directly, a ``.bin`` only through
``torch.load(weights_only=True)``. Nothing is downloaded and nothing is unpickled.

The demo model, ``digits_unet``, is a small UNet2DModel for 16x16 upscaled scikit-learn digits
(``DEMO_UNET_CONFIG``); its trained weights ship in ``cached_tables/demo_weights/digits_unet/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.safe_load import safe_torch_load

__all__ = [
    "DEMO_UNET_NAME",
    "DEMO_UNET_CONFIG",
    "DEMO_UNET_DIR",
    "UNetBundle",
    "is_unet_name",
    "build_unet",
    "unet_from_config",
    "load_unet_folder",
    "save_unet_folder",
    "unet_state_digest",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, whatever diffusers wants
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")

DEMO_UNET_NAME = "digits_unet"
DEMO_UNET_DIR = (
    Path(__file__).resolve().parents[3] / "cached_tables" / "demo_weights" / "digits_unet"
)
INIT_SEED = 0
# A small UNet for 16x16 digits: two resolutions, one ResnetBlock2D per level, attention at 8x8.
# block_out_channels (16, 32) gives a ResnetBlock2D with a channel change (16 -> 32) and equal
# channel ones, like the DDPM CIFAR-10 UNet at a fraction of its cost.
DEMO_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DIFFUSERS_FOLDER_PREFIX = "diffusers:"  # MODEL spelling for a local diffusers folder


@dataclass(frozen=True)
class UNetBundle:
    """A UNet2DModel with where it came from (the diffusion counterpart of ``ModelBundle``).

    ``weights_source`` is ``"seeded"``, ``"shipped"`` (the demo's trained weights) or ``"folder"``.
    """

    model: nn.Module
    name: str
    config: dict[str, Any]
    weights_source: str
    weights_path: Path | None
    weights_digest: str

    @property
    def input_size(self) -> int:
        """The sample side (the larger one for a non-square ``sample_size``)."""
        size = self.config.get("sample_size") or 32
        return int(size) if isinstance(size, int) else max(int(v) for v in size)

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 3))

    @property
    def weights_note(self) -> str:
        notes = {
            "seeded": f"{self.name} has seeded initial weights (seed {INIT_SEED}): samples are noise",
            "shipped": f"{self.name} uses its shipped trained weights ({self.weights_path})",
        }
        return notes.get(self.weights_source, f"{self.name} uses weights from {self.weights_path}")


def is_unet_name(name: str) -> bool:
    """True for the demo UNet's name or a ``diffusers:PATH`` folder spec."""
    return name == DEMO_UNET_NAME or name.startswith(DIFFUSERS_FOLDER_PREFIX)


def unet_from_config(config: dict[str, Any], *, seed: int = INIT_SEED) -> nn.Module:
    """A UNet2DModel built from a config dict, with seeded initial weights, in eval mode."""
    from diffusers import UNet2DModel

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = UNet2DModel.from_config(clean)
        except Exception as exc:  # diffusers raises ValueError/TypeError/KeyError on bad configs
            raise LayerMergeError(f"not a valid UNet2DModel config: {exc}") from exc
    return model.eval()


def build_unet(name: str, *, weights: str | Path | None = None) -> UNetBundle:
    """The demo UNet (``digits_unet``) or a local diffusers folder (``diffusers:PATH``).

    Args:
        name: ``digits_unet`` or ``diffusers:PATH``.
        weights: a diffusers folder whose weights replace the demo's (``digits_unet`` only).

    Raises:
        LayerMergeError: unknown name, or a folder that is not a UNet2DModel.
        UnsafeCheckpointError: weights that cannot be read safely.
    """
    if name.startswith(DIFFUSERS_FOLDER_PREFIX):
        if weights is not None:
            raise LayerMergeError(
                f"{name} is a diffusers folder with its own weights; pass no separate weights"
            )
        path = Path(name[len(DIFFUSERS_FOLDER_PREFIX) :]).expanduser()
        model, config, source = load_unet_folder(path)
        return UNetBundle(model, name, config, "folder", source, unet_state_digest(model))
    if name != DEMO_UNET_NAME:
        raise LayerMergeError(
            f"unknown diffusion model {name!r}; use {DEMO_UNET_NAME} or diffusers:PATH"
        )
    if weights is not None:
        model, config, source = load_unet_folder(Path(weights))
        return UNetBundle(model, name, config, "folder", source, unet_state_digest(model))
    if any((DEMO_UNET_DIR / f).is_file() for f in WEIGHT_FILES):
        model, config, source = load_unet_folder(DEMO_UNET_DIR)
        return UNetBundle(model, name, config, "shipped", source, unet_state_digest(model))
    model = unet_from_config(DEMO_UNET_CONFIG)
    return UNetBundle(model, name, dict(DEMO_UNET_CONFIG), "seeded", None, unet_state_digest(model))


def load_unet_folder(path: Path) -> tuple[nn.Module, dict[str, Any], Path]:
    """Read a diffusers UNet2DModel folder without unpickling anything.

    A folder holding ``unet/`` (a whole pipeline) is accepted too.

    Returns:
        The model in eval mode, its config and the weights file read.
    """
    path = Path(path)
    if (path / "unet" / "config.json").is_file():
        path = path / "unet"
    config_path = path / "config.json"
    if not config_path.is_file():
        raise LayerMergeError(
            f"{path} is not a diffusers model folder: it has no config.json (expected config.json "
            f"and {' or '.join(WEIGHT_FILES)})"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayerMergeError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LayerMergeError(f"{config_path} does not hold a JSON object")
    kind = config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise LayerMergeError(
            f"{config_path} describes a {kind}; only diffusers UNet2DModel folders are supported"
        )
    model = unet_from_config(config)
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise LayerMergeError(f"{path} has no weights file ({' or '.join(WEIGHT_FILES)})")
    state = _read_weights(weights)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        detail = " ".join(str(exc).split())[:300]
        raise LayerMergeError(
            f"weights in {weights} do not fit the UNet of {config_path}: {detail}"
        ) from exc
    if missing or unexpected:
        raise LayerMergeError(
            f"weights in {weights} do not fit the UNet of {config_path}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    return model.eval(), config, weights


def save_unet_folder(model: nn.Module, path: str | Path) -> Path:
    """Save as a diffusers folder (config.json + safetensors), readable by ``from_pretrained``."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def unet_state_digest(model: nn.Module) -> str:
    """Content digest of the weights (part of table cache keys)."""
    from core.models import state_dict_digest

    return state_dict_digest(model.state_dict())


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnsafeCheckpointError(
                f"{path} is not a readable safetensors file ({exc})"
            ) from exc
    with path.open("rb") as handle:
        loaded = safe_torch_load(handle, f"weights {path}")
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UnsafeCheckpointError(f"{path} does not hold a state_dict of tensors")
    return loaded
