"""Model families, with the built-in ones registered: ``classifier`` (CNNs) and ``unet`` (diffusion).

The protocol and registry live in :mod:`core.families.base`; importing this package registers the
built-in families, so ``from core.families import family_for`` always sees them. Family modules
import :mod:`core.families.base` only, never this package, which keeps imports acyclic.
"""

from __future__ import annotations

from core.families import base, classifier, unet  # noqa: F401  (registration side effects)
from core.families.base import *  # noqa: F403  (the protocol and registry, re-exported)

__all__ = list(base.__all__)
