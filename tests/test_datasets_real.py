"""The four paper datasets' readers, the generic readers, the cards and ``prepare``, on miniature official layouts."""

from __future__ import annotations

import copy
import hashlib
import socket
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.data.base import (
    DATASETS_DIR,
    DatasetError,
    check_counts,
    get_reader,
    list_cards,
    load_card,
    load_dataset,
    load_split_file,
    sha256_file,
)
from benchmark.data.prepare import format_report, prepare_dataset
from tests import miniature

PAPER = ("cub", "cars", "aircraft", "inat_aves")


def quiet_load(name: str, root: Path, **options):
    """load_dataset with strict=False, asserting that the only warning is the expected count mismatch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset(name, str(root), strict=False, **options)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "does not have the expected counts" in messages[0], messages
    return splits


def assert_consistent(splits) -> None:
    """Class-disjoint halves, and every label indexes class_names."""
    assert not set(splits.train.classes) & set(splits.test.classes)
    assert max(splits.train.labels.max(), splits.test.labels.max()) < len(splits.class_names)


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return miniature.make_cub(tmp_path_factory.mktemp("cub"))


@pytest.fixture(scope="module")
def cars_roots(tmp_path_factory):
    return {layout: miniature.make_cars(tmp_path_factory.mktemp(layout), layout) for layout in ("original", "devkit")}


@pytest.fixture(scope="module")
def aircraft(tmp_path_factory):
    return miniature.make_aircraft(tmp_path_factory.mktemp("aircraft"))


@pytest.fixture(scope="module")
def inat(tmp_path_factory):
    return miniature.make_inat_aves(tmp_path_factory.mktemp("inat"))


# --- the paper splits ------------------------------------------------------------------------------------------


def test_cub_first_hundred_classes_train_last_hundred_test(cub):
    for root in (cub, cub.parent):  # the extracted folder or its parent
        splits = quiet_load("cub", root)
        assert splits.class_names[0] == "001.Black_footed_Albatross"
        assert splits.class_names[199] == "200.Common_Yellowthroat"
        np.testing.assert_array_equal(splits.train.classes, np.arange(100))
        np.testing.assert_array_equal(splits.test.classes, np.arange(100, 200))
        assert_consistent(splits)
        for data in (splits.train, splits.test):
            for path, label in zip(data.images, data.labels, strict=True):
                assert Path(path).parent.name == splits.class_names[label]
        assert splits.summary() == {"train": {"classes": 100, "images": 200}, "test": {"classes": 100, "images": 200}}


def test_cars_both_layouts_give_identical_splits(cars_roots):
    original = quiet_load("cars", cars_roots["original"])
    devkit = quiet_load("cars", cars_roots["devkit"])
    assert original.class_names == devkit.class_names
    assert original.class_names[0] == "AM General Hummer SUV 2000"
    for split in ("train", "test"):
        a, b = getattr(original, split), getattr(devkit, split)
        np.testing.assert_array_equal(np.bincount(a.labels, minlength=196), np.bincount(b.labels, minlength=196))
    np.testing.assert_array_equal(original.train.classes, np.arange(98))
    np.testing.assert_array_equal(original.test.classes, np.arange(98, 196))
    assert all("/car_ims/" in p for p in original.train.images)
    assert {Path(p).parent.name for p in devkit.test.images} == {
        "cars_train",
        "cars_test",
    }  # classification split unused
    assert_consistent(original)


def test_cars_layout_can_be_forced(cars_roots):
    with pytest.raises(DatasetError, match="cars_meta.mat"):
        load_dataset("cars", str(cars_roots["original"]), strict=False, layout="devkit")


def test_aircraft_variants_sorted_with_spaces_and_slashes(aircraft):
    splits = quiet_load("aircraft", aircraft)
    names = splits.class_names
    assert names == sorted(names) and len(names) == 100
    assert {"F/A-18", "F-16A/B", "BAE 146-200", "Cessna 172"} <= set(names)
    assert names.index("ATR-72") < names.index("An-12")  # code-point order: upper case first
    np.testing.assert_array_equal(splits.train.classes, np.arange(50))
    np.testing.assert_array_equal(splits.test.classes, np.arange(50, 100))
    assert "Yak-42" in [names[c] for c in splits.test.classes]
    # Labels match the variant of each line, split on the first space only, trainval and test pooled.
    truth = {}
    for part in ("trainval", "test"):
        for line in (aircraft / f"images_variant_{part}.txt").read_text().splitlines():
            image_id, variant = line.split(" ", 1)
            truth[image_id] = variant
    pairs = [(p, label) for d in (splits.train, splits.test) for p, label in zip(d.images, d.labels, strict=True)]
    loaded = {Path(p).stem: names[label] for p, label in pairs}
    assert loaded == truth


def test_aircraft_counts_variants_txt(tmp_path):
    data = miniature.make_aircraft(tmp_path, extra_variants=("Concorde", "Trident"))
    with pytest.warns(UserWarning) as caught:
        load_dataset("aircraft", str(tmp_path), strict=False)
    assert any("lists 102 variants; 2 have no image" in str(w.message) and "Concorde, Trident" in str(w.message)
               for w in caught)  # fmt: skip
    (data / "variants.txt").write_text("\n".join(miniature.split_class_names("aircraft")[1:]) + "\n")
    with pytest.raises(DatasetError, match="707-320"):
        load_dataset("aircraft", str(tmp_path), strict=False)


def test_inat_only_aves_in_sorted_directory_order(inat):
    splits = quiet_load("inat_aves", inat)
    names = splits.class_names
    assert len(names) == 1486 and names == sorted(names)
    assert all("_Chordata_Aves_" in name for name in names)
    all_dirs = sorted(p.name for p in (inat / "train_mini").iterdir())
    assert [d for d in all_dirs if "_Aves_" in d] == names and len(all_dirs) == 1490
    np.testing.assert_array_equal(splits.train.classes, np.arange(743))
    np.testing.assert_array_equal(splits.test.classes, np.arange(743, 1486))
    for data in (splits.train, splits.test):
        assert all(Path(p).parent.name == names[y] for p, y in zip(data.images, data.labels, strict=True))


# --- counts, names and integrity -------------------------------------------------------------------------------


def test_strict_count_mismatch_raises_with_the_counts(cub):
    with pytest.raises(
        DatasetError, match=r"images: expected 11788, found 400; train_images: expected 5864, found 200"
    ):
        load_dataset("cub", str(cub))
    with pytest.warns(UserWarning, match="expected 11788, found 400"):
        load_dataset("cub", str(cub), strict=False)


def test_strict_passes_when_the_counts_match(cub):
    card = copy.deepcopy(load_card("cub"))
    card["expected"] = {"classes": 200, "images": 400, "train_classes": 100, "test_classes": 100,
                        "train_images": 200, "test_images": 200}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = get_reader("cub")(card=card, root=cub, strict=True)
        check_counts(card, splits, strict=True)


def test_class_names_checked_against_the_split_file(tmp_path):
    base = miniature.make_cub(tmp_path)
    classes = (base / "classes.txt").read_text().replace("5 005.Crested_Auklet", "5 005.Renamed_Auklet")
    (base / "classes.txt").write_text(classes)
    with pytest.raises(DatasetError, match=r"not in the split file: 005.Renamed_Auklet.*missing from the data: 005"):
        load_dataset("cub", str(tmp_path))
    with pytest.warns(UserWarning) as caught:
        load_dataset("cub", str(tmp_path), strict=False)
    assert any("differ from the split file" in str(w.message) for w in caught)


def test_missing_root_or_metadata_names_the_file_and_layout(tmp_path, cub):
    with pytest.raises(DatasetError, match=r"needs its files.*images.txt"):
        load_dataset("cub", None)
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset("cub", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"Missing .*images.txt.*Expected the 'cub' layout: CUB_200_2011/"):
        load_dataset("cub", str(tmp_path))
    with pytest.raises(DatasetError, match=r"cars_annos.mat.*devkit/cars_meta.mat"):
        load_dataset("cars", str(tmp_path))
    with pytest.raises(DatasetError, match="train_mini.json"):
        load_dataset("inat_aves", str(tmp_path))
    with pytest.raises(DatasetError, match="variants.txt"):
        load_dataset("aircraft", str(tmp_path))
    broken = miniature.make_cub(tmp_path / "broken")
    (broken / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetError, match=r"Missing .*image_class_labels.txt"):
        load_dataset("cub", str(broken))
    devkit = miniature.make_cars(tmp_path / "devkit", "devkit")
    (devkit / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DatasetError, match=r"Missing .*cars_test_annos_withlabels.mat.*Expected the 'cars' layout"):
        load_dataset("cars", str(devkit))


def test_missing_and_empty_images_are_named(tmp_path):
    base = miniature.make_cub(tmp_path)
    images = sorted((base / "images").rglob("*.jpg"))
    for path in images[:12]:
        path.unlink()
    images[20].write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        load_dataset("cub", str(tmp_path), strict=False)
    message = str(info.value)
    assert "12 listed image(s) missing" in message and str(images[0]) in message and "and 2 more" in message
    assert f"1 empty image file(s): {images[20]}" in message


def test_macos_resource_forks_are_filtered(tmp_path):
    miniature.make_image_folder(tmp_path)
    card = {"name": "tiny", "reader": "image_folder", "split": {"rule": {"kind": "sorted_rank", "train": [1, 3],
                                                                           "test": [4, 6]}}}  # fmt: skip
    splits = get_reader("image_folder")(card=card, root=tmp_path, strict=True)
    everything = list(splits.train.images) + list(splits.test.images)
    assert len(everything) == 12 and not any(Path(p).name.startswith("._") for p in everything)
    assert splits.class_names == sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("._"))
    assert [splits.class_names[c] for c in splits.train.classes] == splits.class_names[:3]
    listing = tmp_path / "list.txt"
    lines = [f"{Path(p).relative_to(tmp_path)} {5 if i < 2 else 6}\n" for i, p in enumerate(everything[:4])]
    listing.write_text("._junk.jpg 1\n" + "".join(lines))  # two classes: one for train, one for test
    list_card = {"name": "tiny", "reader": "list_file", "reader_options": {"files": ["list.txt"]},
                 "split": {"rule": {"kind": "id_range", "train": [1, 1], "test": [2, 2]}}}  # fmt: skip
    assert len(get_reader("list_file")(card=list_card, root=tmp_path, strict=True).train) == 2


def test_list_file_with_spaces_and_explicit_class_lists(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for label in (3, 10, 7):
        for k in range(2):
            rel = f"my images/{label}_{k}.jpg"
            miniature.write_jpeg(tmp_path / rel, rng)
            lines.append(f"{rel} {label}")
    (tmp_path / "all.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "names.txt").write_text("3 three\n7 seven\n10 ten\n")
    card = {"name": "lst", "reader": "list_file", "reader_options": {"files": ["all.txt"], "names_file": "names.txt"},
            "split": {"rule": {"kind": "class_lists"}, "train_classes": ["ten"], "test_classes": ["three", "seven"]}}  # fmt: skip
    splits = get_reader("list_file")(card=card, root=tmp_path, strict=True)
    assert splits.class_names == ["three", "seven", "ten"]  # ranked by integer label: 3 < 7 < 10
    assert [splits.class_names[c] for c in splits.train.classes] == ["ten"]
    assert all(" " in p for p in splits.train.images) and len(splits.test) == 4


# --- cards and split files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER)
def test_card_checksums_and_contents(name):
    card = load_card(name)
    assert (DATASETS_DIR / f"{name}.yaml").exists() and card["needs_root"] is True
    spec_path = DATASETS_DIR / card["split"]["file"]
    assert sha256_file(spec_path) == card["split"]["sha256"]
    spec = load_split_file(card)
    assert spec["expected"] == card["expected"] and spec["version"] == card["split"]["version"]
    assert set(card["prompt"]) == {"expert_noun", "what_to_identify", "expert_prefix", "target_plural", "item",
                                   "ITEM", "item_plural", "example_description", "verdict_label",
                                   "verdict_question", "verdict_key"}  # fmt: skip
    assert len(card["attributes"]) == (28 if name in {"cub", "inat_aves"} else 17)
    assert card["defaults"]["image_size"] == 224 and card["citation"] and card["layout"]
    assert (card["download"]["archives"] == []) == (name == "cars") and card["download"]["manual"]
    train, test = spec.get("train_classes"), spec.get("test_classes")
    if train is not None:
        assert len(train) == card["expected"]["train_classes"] and len(test) == card["expected"]["test_classes"]
        assert not set(train) & set(test)


def test_every_card_in_datasets_has_a_matching_split_checksum():
    from benchmark.data.base import card_sources

    shipped = {name for name, (origin, _) in card_sources().items() if origin == "shipped"}
    assert {"cub", "cars", "aircraft", "inat_aves"} <= shipped
    for name, card in list_cards().items():
        if name in shipped and (card.get("split") or {}).get("file"):
            assert sha256_file(DATASETS_DIR / card["split"]["file"]) == card["split"]["sha256"], name


def test_edited_split_file_is_refused():
    card = copy.deepcopy(load_card("cub"))
    card["split"]["sha256"] = "0" * 64
    with pytest.raises(DatasetError, match="does not match the checksum"):
        load_split_file(card)


def test_aircraft_split_is_code_point_sorted():
    spec = yaml.safe_load((DATASETS_DIR / "splits" / "aircraft.v1.yaml").read_text())
    names = spec["train_classes"] + spec["test_classes"]
    assert names == sorted(names) and spec["train_classes"][-1] == "Cessna 525"


# --- prepare ---------------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def card_with_url(url: str, md5: str | None = None) -> dict:
    card = copy.deepcopy(load_card("cub"))
    card["download"]["archives"][0].update(url=url, md5=md5)
    return card


def test_prepare_cannot_download_says_what_to_fetch(tmp_path):
    card = card_with_url(f"http://127.0.0.1:{closed_port()}/CUB_200_2011.tgz")
    with pytest.raises(DatasetError) as info:
        prepare_dataset("cub", str(tmp_path), card=card)
    message = str(info.value)
    assert "Could not download http://127.0.0.1" in message
    assert "https://data.caltech.edu/records/65de6-vp158" in message and str(tmp_path) in message
    with pytest.raises(DatasetError, match=r"Could not download file://.*CUB_200_2011.tgz"):
        prepare_dataset("cub", str(tmp_path), card=card_with_url((tmp_path / "absent.tgz").as_uri()))
    with pytest.raises(DatasetError, match="downloading is off"):
        prepare_dataset("cub", str(tmp_path), download=False)
    with pytest.raises(DatasetError, match=r"no public download.*cannot be downloaded automatically.*car_ims"):
        prepare_dataset("cars", str(tmp_path))
    assert not list(tmp_path.glob("*.part"))  # no half-written archive left behind


def test_prepare_downloads_verifies_and_extracts_a_local_archive(tmp_path):
    source = miniature.make_cub(tmp_path / "source")
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="CUB_200_2011")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match=f"has md5 {md5}, but the card expects 000"):
        prepare_dataset("cub", str(tmp_path / "bad"), card=card_with_url(archive.as_uri(), "0" * 32), strict=False)
    with pytest.warns(UserWarning, match="expected counts"):
        report = prepare_dataset("cub", str(tmp_path / "root"), card=card_with_url(archive.as_uri(), md5),
                                 strict=False)  # fmt: skip
    assert report["ok"] and report["decoded"] == 400 and report["corrupt"] == []
    assert report["counts"]["test"] == {"classes": 100, "images": 200}
    assert report["downloaded"] == [str(tmp_path / "root" / "CUB_200_2011.tgz")]
    assert (tmp_path / "root" / "CUB_200_2011" / "classes.txt").exists()
    # An archive the user put in the root is verified and extracted with downloading off.
    (tmp_path / "manual").mkdir()
    archive.rename(tmp_path / "manual" / "CUB_200_2011.tgz")
    card = card_with_url(None, md5)
    with pytest.warns(UserWarning, match="expected counts"):
        report = prepare_dataset("cub", str(tmp_path / "manual"), download=False, strict=False, card=card)
    assert report["ok"] and report["downloaded"] == [] and len(report["extracted"]) == 1


def test_prepare_names_a_corrupt_jpeg(tmp_path):
    base = miniature.make_cub(tmp_path)
    victim = sorted((base / "images").rglob("*.jpg"))[7]
    victim.write_bytes(victim.read_bytes()[:120])  # truncated: non-empty, so only a full decode notices
    with pytest.warns(UserWarning, match="expected counts"):
        report = prepare_dataset("cub", str(tmp_path), download=False, strict=False)
    assert not report["ok"] and len(report["corrupt"]) == 1 and report["corrupt"][0].startswith(str(victim))
    assert str(victim) in format_report(report) and "PROBLEMS FOUND" in format_report(report)
