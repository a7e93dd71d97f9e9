"""The embedded datasets (no download): the procedural attribute dataset and scikit-learn's digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import benchmark.data.attributes as attr
from benchmark.data import DatasetError, load_card, load_dataset
from benchmark.data.base import get_reader
from benchmark.data.digits import load_digits_rgb

SMALL = {"classes": 12, "per_class": 3, "image_size": 32}


@pytest.fixture(scope="module")
def attributes():
    return load_dataset("attributes")  # strict: the counts must equal the card


def _hamming(table: dict[str, dict[str, str]]) -> np.ndarray:
    codes = np.array([[a[name] for name in attr.ATTRIBUTES] for a in table.values()])
    return (codes[:, None, :] != codes[None, :, :]).sum(-1)


def _recall_at_1(images: np.ndarray, labels: np.ndarray) -> float:
    x = images.reshape(len(images), -1).astype(np.float64)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)  # the query is removed from its own neighbours by index
    return float(np.mean(labels[sim.argmax(1)] == labels))


def test_attributes_counts_and_card_match_the_code(attributes):
    card = load_card("attributes")
    expected = card["expected"]
    assert len(attributes.class_names) == expected["classes"]
    assert len(attributes.train) == expected["train_images"] and len(attributes.test) == expected["test_images"]
    assert len(attributes.train.classes) == expected["train_classes"]
    assert len(attributes.test.classes) == expected["test_classes"]
    assert card["needs_root"] is False
    assert {k: v for k, v in card["defaults"].items() if k in attr.DEFAULT_OPTIONS} == attr.DEFAULT_OPTIONS
    assert card["attributes"] == list(attr.ATTRIBUTES)
    assert card["attribute_values"] == {name: list(values) for name, values in attr.ATTRIBUTE_VALUES.items()}
    assert card["prompt"]["verdict_key"] == "same_class"
    size = card["defaults"]["image_size"]
    assert attributes.train.images.shape == (expected["train_images"], size, size, 3)
    assert attributes.train.images.dtype == np.uint8
    per_class = np.bincount(np.concatenate([attributes.train.labels, attributes.test.labels]))
    assert set(per_class.tolist()) == {card["defaults"]["per_class"]}


def test_class_attributes_agree_with_names(attributes):
    assert list(attributes.class_attributes) == attributes.class_names
    for name, values in attributes.class_attributes.items():
        assert attr.parse_class_name(name) == values
        assert attr.class_name(values) == name
    with pytest.raises(ValueError, match="not an attribute class name"):
        attr.parse_class_name("red circle")


def test_splits_are_class_disjoint_and_recombine_training_values(attributes):
    train, test = set(attributes.train.classes.tolist()), set(attributes.test.classes.tolist())
    assert not train & test
    assert train | test == set(range(len(attributes.class_names)))
    names = attributes.class_names
    train_tuples = {tuple(attributes.class_attributes[names[c]].values()) for c in train}
    test_tuples = {tuple(attributes.class_attributes[names[c]].values()) for c in test}
    assert not train_tuples & test_tuples
    for i, name in enumerate(attr.ATTRIBUTES):
        train_values = {t[i] for t in train_tuples}
        assert {t[i] for t in test_tuples} <= train_values
        assert train_values == set(attr.ATTRIBUTE_VALUES[name])  # training uses the whole vocabulary


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_neighbour_structure_is_fine_grained(seed):
    table = attr.class_attribute_table(seed)
    n_train = len(table) // 2
    distance = _hamming(table)
    off_diagonal = distance[~np.eye(len(table), dtype=bool)]
    assert off_diagonal.min() >= 1  # distinct classes are distinct attribute combinations
    for split in (slice(0, n_train), slice(n_train, len(table))):
        d = distance[split, split].astype(float)
        np.fill_diagonal(d, np.inf)
        assert (d.min(1) == 1).all(), "every class needs a one-attribute neighbour in its own split"
        pairs = d[np.triu_indices(len(d), 1)]
        assert (pairs <= 2).sum() >= len(d), "expected many class pairs one or two attributes apart"
        assert (pairs >= 4).any()  # but the split is not one tight cluster either


def test_class_table_is_deterministic_in_the_seed():
    assert attr.class_attribute_table(3) == attr.class_attribute_table(3)
    assert list(attr.class_attribute_table(3)) != list(attr.class_attribute_table(4))


def test_generation_is_deterministic_in_the_seed():
    a = get_reader("procedural_attributes")(card={"name": "attributes"}, root=None, strict=False, seed=5, **SMALL)
    b = get_reader("procedural_attributes")(card={"name": "attributes"}, root=None, strict=False, seed=5, **SMALL)
    c = get_reader("procedural_attributes")(card={"name": "attributes"}, root=None, strict=False, seed=6, **SMALL)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert a.class_names == b.class_names
    assert not np.array_equal(a.train.images, c.train.images)
    a.train.images[0] = 0  # a caller's copy: the in-process cache must not change
    d = get_reader("procedural_attributes")(card={"name": "attributes"}, root=None, strict=False, seed=5, **SMALL)
    np.testing.assert_array_equal(d.train.images, b.train.images)


def test_each_image_is_reproducible_from_seed_class_and_index(attributes):
    seed, size, per_class = (attr.DEFAULT_OPTIONS[k] for k in ("seed", "image_size", "per_class"))
    for class_id, index in [(0, 0), (5, 17), (60, 29)]:
        split = attributes.train if class_id < len(attributes.class_names) // 2 else attributes.test
        row = np.flatnonzero(split.labels == class_id)[index]
        values = attributes.class_attributes[attributes.class_names[class_id]]
        again = attr.render(values, attr.image_rng(seed, class_id, index), size)
        np.testing.assert_array_equal(split.images[row], again)
        assert attr.image_nuisance(seed, class_id, index) == attr.image_nuisance(seed, class_id, index)
    assert attr.image_nuisance(seed, 0, 0) != attr.image_nuisance(seed, 0, 1)
    assert per_class > 17


def test_render_is_reproducible_and_validates_its_input():
    values = next(iter(attr.class_attribute_table(0).values()))
    first = attr.render(values, 123, 48)
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, attr.render(values, 123, 48))
    np.testing.assert_array_equal(first, attr.render(values, np.random.default_rng(123), 48))
    assert not np.array_equal(first, attr.render(values, 124, 48))
    with pytest.raises(ValueError, match="Allowed: circle"):
        attr.render({**values, "body shape": "blob"}, 0, 48)
    with pytest.raises(ValueError, match="at least 16 pixels"):
        attr.render(values, 0, 8)
    with pytest.raises(ValueError, match="missing"):
        attr.render({k: v for k, v in values.items() if k != "pattern"}, 0, 48)


def test_changing_one_attribute_changes_the_image_visibly():
    """Same nuisance, one attribute changed: a visible region of pixels must change (and nothing else may)."""
    for values in list(attr.class_attribute_table(0).values())[:6]:
        for name, options in attr.ATTRIBUTE_VALUES.items():
            other = next(v for v in options if v != values[name])
            for seed in (0, 1):
                base = attr.render(values, seed, 64).astype(int)
                changed = attr.render({**values, name: other}, seed, 64).astype(int)
                visibly_different = (np.abs(base - changed).max(-1) > 40).sum()
                assert visibly_different >= 15, f"changing {name} to {other} on {values} is hard to see"


def test_test_classes_are_distinguishable_but_not_trivially(attributes):
    """Raw-pixel nearest neighbour on the unseen classes: well above chance, far from solved."""
    chance = 1 / len(attributes.test.classes)
    recall = _recall_at_1(attributes.test.images, attributes.test.labels)
    assert 3 * chance < recall < 0.6, recall
    # Pairs of test classes one attribute apart, each on its own: raw-pixel 1-NN between the two classes beats a coin
    # on average, but is far from separating them (the nuisance hides a single attribute from raw pixels).
    names = attributes.class_names
    distance = _hamming({name: attributes.class_attributes[name] for name in names})
    pair_recalls = []
    for i, j in itertools.combinations(attributes.test.classes, 2):
        if distance[i, j] == 1:
            keep = np.isin(attributes.test.labels, [i, j])
            pair_recalls.append(_recall_at_1(attributes.test.images[keep], attributes.test.labels[keep]))
    assert len(pair_recalls) >= len(attributes.test.classes)
    assert 0.55 < np.mean(pair_recalls) < 0.9, np.mean(pair_recalls)


def test_bad_options_give_clear_errors():
    with pytest.raises(DatasetError, match="Known options: image_size, classes, per_class, seed"):
        load_dataset("attributes", colour="red")
    with pytest.raises(DatasetError, match="at least 4 classes"):
        load_dataset("attributes", strict=False, classes=2)
    with pytest.raises(DatasetError, match="expected counts"):
        load_dataset("attributes", strict=True, **SMALL)
    with pytest.warns(UserWarning, match="dataset.strict=false"):
        small = load_dataset("attributes", strict=False, **SMALL)
    assert small.summary() == {"train": {"classes": 6, "images": 18}, "test": {"classes": 6, "images": 18}}


def test_digits_split_and_counts():
    from sklearn.datasets import load_digits

    digits = load_dataset("digits")  # strict
    expected = load_card("digits")["expected"]
    assert digits.summary() == {
        "train": {"classes": expected["train_classes"], "images": expected["train_images"]},
        "test": {"classes": expected["test_classes"], "images": expected["test_images"]},
    }
    assert digits.class_names == [str(d) for d in range(10)]
    assert set(digits.train.labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(digits.test.labels.tolist()) == {5, 6, 7, 8, 9}
    counts = np.bincount(load_digits().target)
    assert counts[:5].sum() == expected["train_images"] and counts[5:].sum() == expected["test_images"]
    assert digits.train.images.shape[1:] == (32, 32, 3) and digits.train.images.dtype == np.uint8
    np.testing.assert_array_equal(digits.train.images[..., 0], digits.train.images[..., 2])
    assert digits.class_attributes is None


def test_digits_pixels_follow_the_source():
    from sklearn.datasets import load_digits

    images, labels = load_digits_rgb(8)  # no resampling at the native size: exact values
    source = load_digits()
    np.testing.assert_array_equal(labels, source.target)
    np.testing.assert_array_equal(images[..., 1], np.rint(255 - source.images * 255 / 16).astype(np.uint8))
    big = load_dataset("digits", image_size=16)
    assert big.test.images.shape[1:] == (16, 16, 3)
    with pytest.raises(DatasetError, match="Known options: image_size"):
        load_dataset("digits", classes=3)
    with pytest.raises(DatasetError, match="at least 8"):
        load_dataset("digits", image_size=4)
