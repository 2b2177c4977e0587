"""The five multi-view SSL families, each with its ER variant, built by name.

>>> method = build("swav", er=True, backbone="convnet_tiny", num_prototypes=64)
"""

from __future__ import annotations

from erlib.methods.byol import BYOL, byol_loss
from erlib.methods.common import CONTINUOUS_METRICS, DISCRETE_METRICS, Method, MethodConfig, MethodOutput
from erlib.methods.deepcluster import DeepClusterV2, deepcluster_loss, spherical_kmeans
from erlib.methods.dino import DINO, center_update, dino_loss
from erlib.methods.simclr import SimCLR, ntxent_loss
from erlib.methods.swav import SwAV, sinkhorn_knopp, swav_loss

__all__ = ["METHODS", "build", "config_for", "Method", "MethodConfig", "MethodOutput", "CONTINUOUS_METRICS",
           "DISCRETE_METRICS", "ntxent_loss", "byol_loss", "dino_loss", "center_update", "sinkhorn_knopp",
           "swav_loss", "deepcluster_loss", "spherical_kmeans", "SimCLR", "BYOL", "DINO", "SwAV", "DeepClusterV2"]

#: name -> Method class
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, DeepClusterV2, SwAV, BYOL, DINO)}


def config_for(name: str, **cfg) -> MethodConfig:
    """The validated configuration of method ``name``; unknown fields raise a ValueError listing the allowed ones."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    config_cls = METHODS[name].Config
    unknown = sorted(set(cfg) - set(config_cls.field_names()))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {name!r}; allowed: {config_cls.field_names()}")
    return config_cls(**cfg)


def build(name: str, er: bool = False, **cfg) -> Method:
    """Build method ``name`` (``er=True`` for its ER variant) with its config fields as keyword overrides."""
    config = config_for(name, er=er, **cfg)
    return METHODS[name](config)
