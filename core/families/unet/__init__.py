"""The diffusion-UNet family (diffusers ``UNet2DModel``): LAYERMERGE.md §1.1, §4.2, §5.1, §5.3.

A UNet is traced into an ordinary :class:`core.chain.Chain` whose breaks confine segments to one
ResnetBlock2D, so ``core.segments``, ``core.tables`` and ``core.dp`` serve it unchanged; what
differs from a classifier lives in this folder and reaches the rest of the tool only through
:class:`core.families.unet.family.UNetFamily`.
"""

from core.families.unet.family import UNetFamily

__all__ = ["UNetFamily"]
