"""The run's fixed description for its record, its progress bar and its one line per epoch."""

from __future__ import annotations

from typing import Any


def describe_run(
    cfg: Any,
    enc: Any,
    transforms: Any,
    train_split: Any,
    test_split: Any,
    val_split: Any,
    method_cls: Any,
    param_group_info: list[dict[str, Any]],
) -> dict[str, Any]:
    """The record's fixed sections: backbone, data (transforms, normalisation), split sizes, method."""
    desc = transforms.description
    splits = {"train": count_split(train_split), "test": count_split(test_split)}
    if val_split is not None:
        splits["val"] = count_split(val_split)
    return {
        "backbone": {
            "name": cfg.backbone.name,
            "kind": cfg.backbone.kind,
            "pretrained": bool(cfg.backbone.pretrained),
            "source": enc.info.source,
            "pooling": cfg.backbone.pooling,
            "embedding_dim": enc.embedding_dim,
            "feature_dim": enc.feature_dim,
            "freeze_bn": bool(cfg.backbone.freeze_bn),
        },
        "data": {
            "image_size": int(cfg.data.image_size),
            "train_transform": desc["train"],
            "test_transform": desc["test"],
            "transform": cfg.data.transform,
            "normalization": {"mean": desc["mean"], "std": desc["std"]},
            "interpolation": desc["interpolation"],
        },
        "splits": splits,
        "method_info": {
            "paper": method_cls.paper,
            "year": method_cls.year,
            "url": method_cls.url,
            "param_groups": param_group_info,
            # train.deterministic as applied on CUDA: off for a method that cannot be bit-identical there (SAGA)
            "cuda_deterministic": bool(cfg.train.deterministic and method_cls.cuda_deterministic),
        },
    }


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True)


def epoch_line(entry: dict[str, Any]) -> str:
    parts = [
        f"epoch {entry['epoch']}",
        f"loss {entry.get('loss', float('nan')):.4f}",
        f"{entry.get('images_per_s', 0):.0f} img/s",
    ]
    for split in ("val", "test"):
        if split in entry:
            parts.append(f"{split} R@1 {100 * entry[split]['recall@1']:.2f}")
    return " | ".join(parts)


def count_split(split) -> dict[str, int]:
    return {"classes": int(len(split.classes)), "images": int(len(split))}
