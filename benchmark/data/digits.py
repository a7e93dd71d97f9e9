"""scikit-learn's bundled handwritten digits (``digits``): a tiny real dataset that needs no download.

``sklearn.datasets.load_digits`` ships 1,797 8×8 greyscale images (values 0–16, the UCI "Optical Recognition of
Handwritten Digits" test set). They are scaled to 0–255, inverted to dark ink on a light background, upsampled
bicubically to ``image_size`` and repeated over three channels. Digits 0–4 train, 5–9 test.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.data.base import DatasetError, DatasetSplits, SplitData, register_reader

#: The reader's options and their defaults (the ``digits`` card repeats them under ``defaults``).
DEFAULT_OPTIONS: dict[str, int] = {"image_size": 32}
#: Digits below this one are training classes; the rest are test classes.
FIRST_TEST_DIGIT = 5


@functools.lru_cache(maxsize=2)
def _digits_rgb(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # the data ship inside scikit-learn; nothing is downloaded

    bunch = load_digits()
    grey = np.rint(255.0 - bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink -> dark ink on white
    resized = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BICUBIC)) for g in grey])
    images = np.repeat(resized[..., None], 3, axis=-1)
    images.flags.writeable = False
    return images, bunch.target.astype(np.int64)


def load_digits_rgb(image_size: int = DEFAULT_OPTIONS["image_size"]) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 ``N×image_size×image_size×3`` arrays, with their labels 0–9."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}")
    images, labels = _digits_rgb(image_size)
    return images.copy(), labels.copy()


@register_reader("sklearn_digits")
def read_sklearn_digits(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Load scikit-learn's digits as class-disjoint splits (0–4 train, 5–9 test). Option: image_size."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {unknown} for dataset '{card.get('name', 'digits')}'. "
            f"Known options: {', '.join(DEFAULT_OPTIONS)}."
        )
    card_defaults = {k: v for k, v in (card.get("defaults") or {}).items() if k in DEFAULT_OPTIONS}
    resolved = {**DEFAULT_OPTIONS, **card_defaults, **options}
    try:
        images, labels = load_digits_rgb(resolved["image_size"])
    except ValueError as err:
        raise DatasetError(f"Cannot load dataset '{card.get('name', 'digits')}' with {resolved}: {err}") from err
    is_train = labels < FIRST_TEST_DIGIT
    return DatasetSplits(
        name=card.get("name", "digits"),
        train=SplitData(images[is_train], labels[is_train]),
        test=SplitData(images[~is_train], labels[~is_train]),
        class_names=[str(d) for d in range(10)],
        card=card,
    )
