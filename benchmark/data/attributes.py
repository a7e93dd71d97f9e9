"""The procedural attribute dataset (``attributes``): fine-grained classes made of named visual attributes.

Every class is one combination of values of the attributes in :data:`ATTRIBUTE_VALUES` (body shape and colour,
pattern and pattern colour, appendage and its colour, border style), rendered deterministically from a seed. The
classes are grown as a tree of one-attribute mutations, so every class has a neighbour in its own split that
differs in exactly one attribute, and siblings differ in two: a fine-grained space. The first half of the classes
is for training, the second half (unseen combinations of the same values) for testing.

Images vary within a class only through nuisance (position, scale, rotation, background texture, colour jitter,
pattern phase, pixel noise), drawn from ``np.random.default_rng([seed, class_id, index])``, so every image can be
regenerated alone: ``render(class_attributes[name], image_rng(seed, class_id, index), image_size)``.

The dataset needs no files; it is generated in a few seconds and cached in-process by its options.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data._attribute_render import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    Nuisance,
    render_with_nuisance,
    sample_nuisance,
    validate_attributes,
)
from benchmark.data.base import DatasetError, DatasetSplits, SplitData, register_reader

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_VALUES",
    "Nuisance",
    "class_attribute_table",
    "class_name",
    "generate",
    "image_nuisance",
    "image_rng",
    "parse_class_name",
    "read_procedural_attributes",
    "render",
    "render_with_nuisance",
    "sample_nuisance",
]

#: The reader's options and their defaults (the ``attributes`` card repeats them under ``defaults``).
DEFAULT_OPTIONS: dict[str, int] = {"image_size": 64, "classes": 96, "per_class": 30, "seed": 0}


def class_name(attributes: dict[str, str]) -> str:
    """The readable class name, e.g. ``"red star, white dots, blue antennae, thin border"``."""
    validate_attributes(attributes)
    a = attributes
    return (
        f"{a['body color']} {a['body shape']}, {a['pattern color']} {a['pattern']}, "
        f"{a['appendage color']} {a['appendage']}, {a['border style']} border"
    )


def parse_class_name(name: str) -> dict[str, str]:
    """The attributes of a name made by :func:`class_name` (its inverse)."""
    try:
        body, pattern, appendage, border = (part.split(" ") for part in name.split(", "))
        attributes = {
            "body shape": body[1],
            "body color": body[0],
            "pattern": pattern[1],
            "pattern color": pattern[0],
            "appendage": appendage[1],
            "appendage color": appendage[0],
            "border style": border[0],
        }
        validate_attributes(attributes)
    except (ValueError, IndexError) as err:
        raise ValueError(f"'{name}' is not an attribute class name like '{class_name(_EXAMPLE)}' ({err})") from err
    if len(border) != 2 or border[1] != "border" or class_name(attributes) != name:
        raise ValueError(f"'{name}' is not an attribute class name like '{class_name(_EXAMPLE)}'")
    return attributes


_EXAMPLE = {name: values[0] for name, values in ATTRIBUTE_VALUES.items()}


def _grow_classes(
    rng: np.random.Generator, n: int, values: dict[str, Sequence[str]], taken: set[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """``n`` new attribute tuples, grown by one-attribute mutations of one of the 3 latest tuples.

    A bushy random walk from a random root: each tuple differs from its parent in exactly one attribute and from
    its siblings in two, and the walk drifts through the whole attribute space. To keep the values balanced, the
    mutated attribute is drawn with weight (uses of the parent's value / fair share) and takes its least-used other
    value (ties broken at random). Tuples in ``taken`` (the other split) are never produced.
    """
    capacity = int(np.prod([len(v) for v in values.values()]))
    if n + len(taken) > capacity:
        raise ValueError(f"Cannot make {n} classes: only {capacity - len(taken)} attribute combinations are left.")
    names = list(values)
    uses = {a: {v: 0 for v in values[a]} for a in names}
    while True:
        root = tuple(str(rng.choice(values[a])) for a in names)
        if root not in taken:
            break
    grown: list[tuple[str, ...]] = []
    seen = set(taken)

    def add(item: tuple[str, ...]) -> None:
        grown.append(item)
        seen.add(item)
        for a, value in zip(names, item, strict=True):
            uses[a][value] += 1

    add(root)
    for _ in range(1000 * n):
        if len(grown) == n:
            return grown
        parent = grown[-1 - int(rng.integers(min(3, len(grown))))]
        mutable = [i for i, a in enumerate(names) if len(values[a]) > 1]
        weights = np.array([uses[names[i]][parent[i]] * len(values[names[i]]) / len(grown) for i in mutable])
        i = mutable[rng.choice(len(mutable), p=weights / weights.sum())]
        options = [v for v in values[names[i]] if v != parent[i]]
        least = min(uses[names[i]][v] for v in options)
        new_value = rng.choice([v for v in options if uses[names[i]][v] == least])
        child = parent[:i] + (str(new_value),) + parent[i + 1 :]
        if child not in seen:
            add(child)
    raise ValueError(f"Could not grow {n} distinct classes from the attribute values {values}.")


def class_attribute_table(seed: int = 0, classes: int = DEFAULT_OPTIONS["classes"]) -> dict[str, dict[str, str]]:
    """Every class's attributes, by class name, in global class-id order.

    The first ``classes // 2`` are the training classes, the rest the test classes. Test classes use only values
    that occur in the training classes (new combinations of known values), and no test combination is a training
    one. Deterministic in ``seed``.
    """
    if classes < 4:
        raise ValueError(f"The attribute dataset needs at least 4 classes (2 per split), got classes={classes}.")
    rng = np.random.default_rng([int(seed), 0x617474])  # a stream of its own, apart from the images' streams
    n_train = classes // 2
    # Redraw (deterministically) until the training classes use every value, where there are enough classes to.
    for _ in range(100):
        train = _grow_classes(rng, n_train, ATTRIBUTE_VALUES, set())
        train_values = {a: sorted({t[i] for t in train}) for i, a in enumerate(ATTRIBUTES)}
        if all(len(train_values[a]) >= min(n_train, len(ATTRIBUTE_VALUES[a])) for a in ATTRIBUTES):
            break
    test = _grow_classes(rng, classes - n_train, train_values, set(train))
    table = {}
    for values in train + test:
        attributes = dict(zip(ATTRIBUTES, values, strict=True))
        table[class_name(attributes)] = attributes
    return table


def image_rng(seed: int, class_id: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of class ``class_id``: its nuisance depends on nothing else."""
    return np.random.default_rng([int(seed), int(class_id), int(index)])


def image_nuisance(seed: int, class_id: int, index: int) -> Nuisance:
    """The nuisance values of one image of the dataset, reproducible from (seed, class id, index)."""
    return sample_nuisance(image_rng(seed, class_id, index))


def render(
    attributes: dict[str, str], rng_or_seed: np.random.Generator | int | Sequence[int], image_size: int = 64
) -> np.ndarray:
    """Render a figure with the given attribute values and nuisance drawn from ``rng_or_seed`` (uint8 H×W×3).

    The same generator state or seed gives the same image; the nuisance does not depend on the attributes, so two
    attribute sets rendered from the same seed differ only where their attributes differ.
    """
    return render_with_nuisance(attributes, sample_nuisance(np.random.default_rng(rng_or_seed)), image_size)


@functools.lru_cache(maxsize=4)
def _generate_cached(seed: int, classes: int, per_class: int, image_size: int) -> tuple[Any, ...]:
    table = class_attribute_table(seed, classes)
    images = np.empty((classes * per_class, image_size, image_size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    for class_id, attributes in enumerate(table.values()):
        for index in range(per_class):
            images[class_id * per_class + index] = render(attributes, image_rng(seed, class_id, index), image_size)
    images.flags.writeable = False
    return images, labels, table


def generate(
    seed: int = 0,
    classes: int = DEFAULT_OPTIONS["classes"],
    per_class: int = DEFAULT_OPTIONS["per_class"],
    image_size: int = DEFAULT_OPTIONS["image_size"],
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, str]]]:
    """All images (uint8 N×H×W×3, grouped by class), their global class ids, and the class attribute table."""
    if per_class < 2:
        raise ValueError(f"per_class must be at least 2 (retrieval needs a second image per class), got {per_class}.")
    images, labels, table = _generate_cached(int(seed), int(classes), int(per_class), int(image_size))
    return images.copy(), labels.copy(), {name: dict(a) for name, a in table.items()}


@register_reader("procedural_attributes")
def read_procedural_attributes(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Generate the attribute dataset. Options (defaults from the card): image_size, classes, per_class, seed."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise DatasetError(
            f"Unknown option(s) {unknown} for dataset '{card.get('name', 'attributes')}'. "
            f"Known options: {', '.join(DEFAULT_OPTIONS)}."
        )
    card_defaults = {k: v for k, v in (card.get("defaults") or {}).items() if k in DEFAULT_OPTIONS}
    resolved = {**DEFAULT_OPTIONS, **card_defaults, **options}
    try:
        images, labels, table = generate(
            resolved["seed"], resolved["classes"], resolved["per_class"], resolved["image_size"]
        )
    except ValueError as err:
        raise DatasetError(
            f"Cannot generate dataset '{card.get('name', 'attributes')}' with {resolved}: {err}"
        ) from err
    is_train = labels < resolved["classes"] // 2
    return DatasetSplits(
        name=card.get("name", "attributes"),
        train=SplitData(images[is_train], labels[is_train]),
        test=SplitData(images[~is_train], labels[~is_train]),
        class_names=list(table),
        card=card,
        class_attributes=table,
    )
