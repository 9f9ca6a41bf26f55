"""Activation Beacon: the plug-in parameters, the compression forward, and its slow reference.

Kept apart from ``beacon_rag.compressors`` because the same pieces serve the compressor (inference)
and, later, the trainer (the compression loop run with gradients).
"""

from __future__ import annotations

from beacon_rag.beacon.compress import (
    ALLOWED_RATIOS,
    beacon_layout,
    choose_ratio,
    compress_segment,
    slot_count,
)
from beacon_rag.beacon.plugin import BeaconPlugin, BeaconWeightsError

__all__ = [
    "ALLOWED_RATIOS",
    "BeaconPlugin",
    "BeaconWeightsError",
    "beacon_layout",
    "choose_ratio",
    "compress_segment",
    "slot_count",
]
