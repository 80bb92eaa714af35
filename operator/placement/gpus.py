"""GPU models and their MIG geometry, as the placement engine uses them.

The facts and rules live in the core module :mod:`conspirator.mig` (shared with the
node daemon, which must not import the operator); this module re-exports them under
the engine's names.  A placement ``start:size`` occupies memory slices
``[start, start + size)``; layouts are handled as bit masks over memory slices.
"""

from __future__ import annotations

from conspirator.mig import (
    ALIASES,
    NON_MIG_MEMORY_GIB,
    WHOLE,
    GpuModel,
    MigLayoutError,
    MigProfile,
    Placement,
    catalog,
    check_layout,
    gpu_model,
    is_valid_layout,
)

__all__ = [
    "ALIASES",
    "NON_MIG_MEMORY_GIB",
    "WHOLE",
    "GpuModel",
    "MigLayoutError",
    "MigProfile",
    "Placement",
    "catalog",
    "check_layout",
    "gpu_model",
    "is_valid_layout",
]
