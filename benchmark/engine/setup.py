"""What a run resolves before it builds anything: its device, its seeds, the config fields its dataset card fills, and
its directory."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from benchmark.config import config_hash


def seed_everything(seed: int, deterministic_cuda: bool = True, device: torch.device | None = None) -> None:
    """Seed every RNG. On CUDA, also ask for deterministic kernels (``train.deterministic``); CPU kernels are
    deterministic already, and PyTorch's deterministic mode only slows them down (about 30% for CNNs here)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    on_cuda = device is not None and device.type == "cuda"
    torch.use_deterministic_algorithms(bool(deterministic_cuda and on_cuda), warn_only=True)
    if on_cuda and deterministic_cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: Values used when neither the command line nor the dataset card sets a field left at None.
FALLBACKS = {
    "data.image_size": 224,
    "backbone.name": "resnet50",
    "backbone.pretrained": True,
    "backbone.freeze_bn": True,
    "train.lr": 1e-4,
    "train.epochs": 60,
}


def resolve_card_defaults(cfg: DictConfig, card: dict[str, Any]) -> None:
    """Fill the config fields left at None from the dataset card's ``defaults`` (then :data:`FALLBACKS`).

    A card's ``defaults`` may hold ``image_size`` and ``backbone``/``train``/``data`` sections, e.g. the embedded
    datasets train a small CNN from scratch at a higher learning rate than the paper protocols' pretrained ones.
    """
    defaults = card.get("defaults") or {}
    sections = {
        "data": {"image_size": defaults.get("image_size"), **(defaults.get("data") or {})},
        "backbone": defaults.get("backbone") or {},
        "train": defaults.get("train") or {},
    }
    for section, values in sections.items():
        for key, value in values.items():
            if key in cfg[section] and cfg[section][key] is None and value is not None:
                cfg[section][key] = value
    for dotted, value in FALLBACKS.items():
        section, key = dotted.split(".")
        if cfg[section][key] is None:
            cfg[section][key] = value


def run_directory(cfg: DictConfig) -> Path:
    name = cfg.run_name or f"{config_hash(cfg)}-s{cfg.seed}"
    return Path(cfg.out_dir) / cfg.dataset.name / cfg.method.name / name
