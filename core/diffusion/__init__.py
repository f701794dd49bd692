"""LayerMerge for diffusion UNets (diffusers ``UNet2DModel``): LAYERMERGE.md §1.1, §4.2, §5.1, §5.3.

The classification path (``core.chain``, ``core.surgery``, ``core.merge``) never imports this
package; what the two share is the table format, the segment rules and the DP. A UNet is traced
into an ordinary :class:`core.chain.Chain` whose breaks confine segments to one ResnetBlock2D, so
``core.segments``, ``core.tables`` and ``core.dp`` serve it unchanged.
"""
