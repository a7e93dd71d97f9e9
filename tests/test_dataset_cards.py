"""Dataset cards from outside the package: ``$DML_BENCHMARK_CARDS`` and ``dataset.card=FILE``, validated like the
shipped ones, shipped names winning clashes loudly, and ``list`` saying where each card came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main
from benchmark.data import cards
from benchmark.data.base import DATASETS_DIR, reader_names
from tests import miniature

RUN = ["train.epochs=1", "train.batch_size=8", "train.m_per_class=2", "train.steps_per_epoch=2", "train.progress=false",
       "data.num_workers=0", "eval.kmeans_restarts=1", "eval.selection=last", "backbone.name=resnet10t",
       "backbone.pretrained=false", "backbone.embedding_dim=16", "data.image_size=16"]  # fmt: skip


def _card(name: str = "my_folders", **extra) -> dict:
    return {"name": name, "title": "My folders", "reader": "image_folder", "needs_root": True,
            "expected": {"classes": 8, "images": 32},
            "split": {"rule": {"kind": "sorted_rank", "train": [1, 4], "test": [5, 8]}}} | extra  # fmt: skip


@pytest.fixture
def image_root(tmp_path):
    miniature.make_image_folder(tmp_path / "images", classes=8, per_class=4)
    return tmp_path / "images"


def test_every_shipped_card_passes_the_validator_user_cards_pass():
    for path in sorted(DATASETS_DIR.glob("*.yaml")):
        cards.read_card(path, reader_names())


def test_a_card_from_the_environment_lists_and_runs(image_root, tmp_path, monkeypatch, capsys):
    user = tmp_path / "my_cards"
    user.mkdir()
    (user / "folders.yaml").write_text(yaml.safe_dump(_card()))
    monkeypatch.setenv(cards.ENV_VAR, str(user))
    assert main(["list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(listing) if line.strip().startswith("my_folders "))
    assert f"card: {(user / 'folders.yaml').resolve()} (${cards.ENV_VAR})" in listing[at + 1]
    assert any("cub.yaml (shipped)" in line for line in listing)
    args = ["run", "method=proxy_anchor", "dataset=my_folders", f"dataset.root={image_root}", *RUN]
    assert main([*args, f"out_dir={tmp_path / 'a'}"]) == 0
    (first,) = (tmp_path / "a").rglob("record.json")
    # The same card named by its file, without the variable: the same run (the path is not part of its hash).
    monkeypatch.delenv(cards.ENV_VAR)
    args = ["run", "method=proxy_anchor", f"dataset.card={user / 'folders.yaml'}", f"dataset.root={image_root}", *RUN]
    assert main([*args, f"out_dir={tmp_path / 'b'}"]) == 0
    (second,) = (tmp_path / "b").rglob("record.json")
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["dataset"] == b["dataset"] == "my_folders" and a["config_hash"] == b["config_hash"]
    assert b["config"]["dataset"]["card"] == str(user / "folders.yaml")
    assert a["metrics"]["test"] == b["metrics"]["test"] and a["splits"] == b["splits"]


def test_a_split_file_lies_beside_its_card_and_is_checked(image_root, tmp_path, capsys):
    user = tmp_path / "cards"
    (user / "splits").mkdir(parents=True)
    split = {"rule": {"kind": "sorted_rank", "train": [1, 4], "test": [5, 8]}, "version": 1}
    (user / "splits" / "mine.v1.yaml").write_text(yaml.safe_dump(split))
    from benchmark.data.base import sha256_file

    digest = sha256_file(user / "splits" / "mine.v1.yaml")
    card = _card(split={"file": "splits/mine.v1.yaml", "sha256": digest, "version": 1})
    (user / "mine.yaml").write_text(yaml.safe_dump(card))
    args = ["run", "method=pretrained", f"dataset.card={user / 'mine.yaml'}", f"dataset.root={image_root}", *RUN]
    assert main([*args, f"out_dir={tmp_path / 'r'}"]) == 0
    (user / "mine.yaml").write_text(yaml.safe_dump(card | {"split": card["split"] | {"sha256": "0" * 64}}))
    capsys.readouterr()
    assert main([*args, f"out_dir={tmp_path / 's'}"]) == 2
    assert "does not match the checksum in" in capsys.readouterr().err


def test_shipped_names_win_and_bad_cards_get_one_line(image_root, tmp_path, monkeypatch, capsys):
    user = tmp_path / "clash"
    user.mkdir()
    (user / "cub.yaml").write_text(yaml.safe_dump(_card("cub")))
    monkeypatch.setenv(cards.ENV_VAR, str(user))
    with pytest.warns(UserWarning, match=r"clash/cub.yaml \(\$DML_BENCHMARK_CARDS\) is ignored: the name 'cub' is"):
        assert main(["list"]) == 0
    assert "cub.yaml (shipped)" in capsys.readouterr().out

    def refused(card_path: Path, what: str) -> None:
        capsys.readouterr()
        args = ["run", "method=pretrained", f"dataset.card={card_path}", f"dataset.root={image_root}", *RUN]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and what in err, err

    monkeypatch.delenv(cards.ENV_VAR)
    refused(user / "cub.yaml", "its name 'cub' is the shipped card")
    (user / "bad.yaml").write_text(yaml.safe_dump(_card("mine", reader="image_folders")))
    refused(user / "bad.yaml", "unknown reader 'image_folders'")
    (user / "bad.yaml").write_text(yaml.safe_dump(_card("Mine Two")))
    refused(user / "bad.yaml", "'name' must be lowercase letters")
    (user / "bad.yaml").write_text("name: [unclosed")
    refused(user / "bad.yaml", "not readable YAML")
    refused(user / "missing.yaml", "no such file")
    (user / "ok.yaml").write_text(yaml.safe_dump(_card("mine")))
    capsys.readouterr()
    assert main(["run", "dataset=cub", f"dataset.card={user / 'ok.yaml'}", *RUN]) == 2
    assert "disagree" in capsys.readouterr().err
