"""The five multi-view SSL families, each with its ER variant, built by name; their options, self-documented.

>>> method = build("swav", er=True, backbone="convnet_tiny", num_prototypes=64)
>>> [o.name for o in describe("swav")][:3]
['backbone', 'er', 'kappa']
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass, fields
from typing import Any

from erlib.methods.byol import BYOL, byol_loss
from erlib.methods.common import (
    CONTINUOUS_METRICS,
    DISCRETE_METRICS,
    FEATURE_METRICS,
    KAPPA_MAX,
    Method,
    MethodConfig,
    MethodOutput,
)
from erlib.methods.deepcluster import DeepClusterV2, deepcluster_loss, spherical_kmeans
from erlib.methods.dino import DINO, center_update, dino_loss, embedding_entropy
from erlib.methods.simclr import SimCLR, ntxent_loss
from erlib.methods.swav import SwAV, sinkhorn_knopp, swav_loss

__all__ = [
    "METHODS",
    "RENAMED_OPTIONS",
    "build",
    "config_for",
    "describe",
    "summary",
    "OptionInfo",
    "Method",
    "MethodConfig",
    "MethodOutput",
    "CONTINUOUS_METRICS",
    "DISCRETE_METRICS",
    "FEATURE_METRICS",
    "KAPPA_MAX",
    "ntxent_loss",
    "byol_loss",
    "dino_loss",
    "center_update",
    "embedding_entropy",
    "sinkhorn_knopp",
    "swav_loss",
    "deepcluster_loss",
    "spherical_kmeans",
    "SimCLR",
    "BYOL",
    "DINO",
    "SwAV",
    "DeepClusterV2",
]

#: name -> Method class
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, DeepClusterV2, SwAV, BYOL, DINO)}

#: (method, old option name) -> new name, for a helpful error on configurations written before a rename
RENAMED_OPTIONS: dict[tuple[str, str], str] = {
    ("dino", "warmup_teacher_temp"): "teacher_temp_start",
    ("dino", "teacher_temp_warmup"): "teacher_temp_warmup_fraction",
}


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def config_for(name: str, **cfg: Any) -> MethodConfig:
    """The validated configuration of method ``name``; unknown fields raise a ValueError listing the allowed ones."""
    config_cls = _method_class(name).Config
    renamed = {old: RENAMED_OPTIONS[name, old] for old in cfg if (name, old) in RENAMED_OPTIONS}
    if renamed:
        raise ValueError(
            f"option(s) of method {name!r} renamed: " + ", ".join(f"{o} -> {n}" for o, n in renamed.items())
        )
    unknown = sorted(set(cfg) - set(config_cls.field_names()))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {name!r}; allowed: {config_cls.field_names()}")
    return config_cls(**cfg)


def build(name: str, er: bool = False, **cfg: Any) -> Method:
    """Build method ``name`` (``er=True`` for its ER variant) with its config fields as keyword overrides."""
    config = config_for(name, er=er, **cfg)
    return METHODS[name](config)


@dataclass(frozen=True)
class OptionInfo:
    """One configuration field of a method: what ``python -m erlib methods NAME`` prints."""

    name: str
    type: str  # the annotation as written, e.g. "float", "tuple[int, ...]"
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None  # the allowed values of an enumeration, else None


def describe(name: str) -> list[OptionInfo]:
    """Every option of method ``name`` (the common fields backbone, er, kappa first), with its type, default, help
    and, for enumerations, its allowed values."""
    infos = []
    for f in fields(_method_class(name).Config):
        default = f.default if f.default is not MISSING else None  # every method option has a plain default
        infos.append(OptionInfo(f.name, str(f.type), default, f.metadata.get("help", ""), f.metadata.get("choices")))
    return infos


def summary(name: str) -> str:
    """A one-paragraph summary of method ``name`` (the first paragraph of its class docstring)."""
    doc = inspect.getdoc(_method_class(name)) or ""
    return " ".join(doc.split("\n\n")[0].split())
