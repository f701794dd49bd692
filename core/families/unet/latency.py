"""The latency table of a UNet's entries (LAYERMERGE.md §3, DDPM row), measured on this machine.

Each entry is timed as the ops the solution really runs for it, at the entry's true input shape:

- conv1 alone (the block keeps its activation): ``conv1 -> + temb -> GroupNorm -> SiLU``;
- conv2 alone, a down/upsample conv: the conv;
- a merged block (conv1 - 1, conv2]: ``conv K -> + temb' -> post-norm``;
- an identity upsample: 0 by definition (nothing runs), listed in ``latency.csv`` so that
  LayerMerge may choose it (see ``core.tables.TableEntry``).

So the keep-everything sum covers every conv, norm and SiLU the solution changes; what no solution
changes (conv_in, norm1, attention, skips, concatenations, the time MLP, conv_out) is left out and
shows as the (negative) ``additivity_error`` against the whole UNet, timed the same way. The
timing itself goes through :func:`core.latency.time_module`, the classification tables' backend.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.families.unet.chain import UNetChain, unet_segments
from core.families.unet.unet import UNetBundle
from core.latency import (
    NETWORK_MIN_RUN_TIME_FACTOR,
    WEIGHT_SEED,
    LatencyConfig,
    Timing,
    cpu_model,
    library_versions,
    time_module,
)
from core.segments import KernelOption, Segment
from core.tables import TableEntry, file_digest, read_meta, write_latency_csv, write_meta

__all__ = ["UNetForward", "entry_module", "measure_unet_latency", "time_unet"]

DIFFUSION_LATENCY_VERSION = 1
TIMING_TIMESTEP = 500  # the timestep the whole-network timing uses (any fixed one will do)


class UNetForward(nn.Module):
    """``unet(x, t).sample`` with a fixed timestep: one tensor in, one out, so it can be timed."""

    def __init__(self, unet: nn.Module, timestep: int = TIMING_TIMESTEP) -> None:
        super().__init__()
        self.unet = unet
        self.timestep = timestep

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        steps = torch.full(
            (sample.shape[0],), self.timestep, dtype=torch.long, device=sample.device
        )
        return self.unet(sample, steps).sample


class _AddTimeEmbedding(nn.Module):
    """Adds a per-channel constant, as ``+ time_emb_proj(temb)[:, :, None, None]`` does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("temb", torch.randn(1, channels, 1, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.temb


def entry_module(uchain: UNetChain, segment: Segment, option: KernelOption) -> nn.Module:
    """What the compressed UNet runs for one table entry, with seeded random weights."""
    convs = uchain.chain.convs
    first, last = convs[segment.start + 1], convs[segment.end]
    block = uchain.block_with_conv(segment.end)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        conv = nn.Conv2d(
            first.in_channels,
            last.out_channels,
            option.kernel,
            stride=option.stride,
            padding=option.kernel // 2,
            bias=True,
        )
        layers: list[nn.Module] = [conv]
        if block is not None and segment.start + 1 == block.conv1:  # conv1 is the segment's first
            if block.time_embedding:
                layers.append(_AddTimeEmbedding(last.out_channels))
            layers.append(nn.GroupNorm(block.groups, last.out_channels))
            if segment.end == block.conv1:  # the block keeps its activation: norm2 -> SiLU
                layers.append(nn.SiLU())
    return nn.Sequential(*layers).eval()


def time_unet(unet: nn.Module, uchain: UNetChain, config: LatencyConfig) -> Timing:
    """Time the whole UNet forward (one denoising step) at ``config.batch``."""
    shape = (config.batch, *uchain.chain.input_shape)
    return time_module(UNetForward(unet), shape, config)


def measure_unet_latency(
    bundle: UNetBundle,
    uchain: UNetChain,
    config: LatencyConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> tuple[tuple[TableEntry, ...], dict[str, Any]]:
    """Measure every entry of ``uchain`` and the whole UNet; write ``latency.csv`` + meta.

    Entries with the same geometry are measured once. Returns the entries and the metadata.
    """
    config = (config or LatencyConfig()).resolved()
    items = [(s, o) for s in unet_segments(uchain) for o in s.options]
    cache: dict[str, Timing] = {}
    entries: list[TableEntry] = []
    started = time.perf_counter()
    if progress is not None:
        progress(0, len(items), None)
    for done, (segment, option) in enumerate(items, start=1):
        if option.is_removal:
            timing = Timing(0.0, 0.0, 0)
        else:
            module = entry_module(uchain, segment, option)
            geometry = repr(module) + repr(uchain.chain.convs[segment.start + 1].input_shape)
            timing = cache.get(geometry)
            if timing is None:
                shape = (config.batch, *uchain.chain.convs[segment.start + 1].input_shape)
                timing = cache[geometry] = time_module(module, shape, config)
        entries.append(
            TableEntry(
                segment.start,
                segment.end,
                option.kernel,
                option.depthwise,
                option.stride,
                option.kept_convs,
                latency_ms=timing.median_ms,
                latency_spread_ms=timing.spread_ms,
                identity_segment=option.is_removal,
            )
        )
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(done, len(items), elapsed / done * (len(items) - done))
    network = None
    if config.network:
        network = time_unet(
            bundle.model,
            uchain,
            LatencyConfig(
                batch=config.batch,
                backend=config.backend,
                device=config.device,
                threads=config.threads,
                min_run_time=config.min_run_time * NETWORK_MIN_RUN_TIME_FACTOR,
                warmup_runs=config.warmup_runs,
            ),
        )
    meta = _meta(bundle, uchain, config, tuple(entries), network, len(cache))
    if out is not None:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        existing = read_meta(directory) if (directory / "meta.json").is_file() else {}
        if (
            existing.get("chain_digest") == meta["chain_digest"]
            and existing.get("weights_digest") == meta["weights_digest"]
        ):
            # the importance table of the same UNet stays valid: keep its metadata
            meta = {**{k: v for k, v in existing.items() if k.startswith("importance")}, **meta}
            for key in ("base_loss", "finetuned_original_loss", "data", "data_digest"):
                if key in existing:
                    meta[key] = existing[key]
        elif (directory / "importance.csv").exists():
            (directory / "importance.csv").unlink()  # made for another UNet: stale
        write_latency_csv(directory / "latency.csv", entries)
        meta["latency_csv_digest"] = file_digest(directory / "latency.csv")
        write_meta(directory, meta)
    return tuple(entries), meta


def _meta(
    bundle: UNetBundle,
    uchain: UNetChain,
    config: LatencyConfig,
    entries: tuple[TableEntry, ...],
    network: Timing | None,
    geometries: int,
) -> dict[str, Any]:
    singles = [e for e in entries if e.end - e.start == 1 and e.keeps_all_convs]
    table_ms = float(sum(e.latency_ms for e in singles))
    network_ms = network.median_ms if network else None
    return {
        "kind": "diffusion",
        "model": bundle.name,
        "width": 1.0,
        "input_size": bundle.input_size,
        "input_shape": list(uchain.chain.input_shape),
        "unet_config": uchain.config,
        "batch": config.batch,
        "backend": config.backend,
        "device": config.device,
        "threads": config.threads,
        "min_run_time_s": config.min_run_time,
        "warmup_runs": config.warmup_runs,
        "activation": "groupnorm_silu",
        "versions": library_versions(),
        "cpu": cpu_model(),
        "chain_digest": uchain.digest(),
        "weights_digest": bundle.weights_digest,
        "latency_version": DIFFUSION_LATENCY_VERSION,
        "latency_entries": len(entries),
        "latency_measured_geometries": geometries,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "original_table_latency_ms": table_ms,
        "network_latency_ms": network_ms,
        "network_latency_spread_ms": network.spread_ms if network else None,
        "network_timing": asdict(network) if network else None,
        # signed: (table sum - measured UNet) / measured UNet; negative: the table leaves out the
        # ops no solution changes (attention, norm1, skips, the time MLP, conv_in / conv_out).
        "additivity_error": (table_ms - network_ms) / network_ms if network_ms else None,
    }
