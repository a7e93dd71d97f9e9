"""Neighbours as pictures and per-query results (issue 22 items 1 and 5), on real tiny engine runs.

Two runs of different methods on the tiny 'blobs' dataset (tests/conftest.py) are trained once for the module:
a Proxy-Anchor run that also saves its per-query neighbours, and an untrained (pretrained, random init) one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmark import cli
from benchmark.config import compose_config
from benchmark.engine.run import run
from benchmark.evaluation import gallery as gal
from benchmark.evaluation.gallery_figure import draw_gallery
from benchmark.evaluation.metrics import evaluate_embeddings
from benchmark.evaluation.neighbours import load_neighbours, score_neighbours, write_neighbours

#: tests/conftest.py's 'blobs' card (its reader is registered there; importing conftest would register it twice).
BLOBS_CARD = {
    "name": "blobs",
    "title": "Test blobs",
    "reader": "test_blobs",
    "needs_root": False,
    "expected": {"classes": 12, "images": 96, "train_classes": 6, "test_classes": 6},
    "defaults": {"image_size": 16, "backbone": {"name": "resnet10t", "pretrained": False}},
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """(proxy_anchor run dir with neighbours.npz, pretrained run dir), trained once for this module."""
    import benchmark.data.base as base

    tmp = tmp_path_factory.mktemp("gallery_runs")
    target = tmp / "datasets"
    target.mkdir()
    for card in base.DATASETS_DIR.glob("*.yaml"):
        (target / card.name).write_text(card.read_text())
    (target / "splits").symlink_to(base.DATASETS_DIR / "splits")
    (target / "blobs.yaml").write_text(yaml.safe_dump(BLOBS_CARD))
    tiny = [
        "dataset=blobs", "dataset.val_fraction=0.34", "backbone.embedding_dim=16", "train.epochs=2",
        "train.batch_size=8", "train.m_per_class=2", "train.steps_per_epoch=3", "train.progress=false",
        "data.num_workers=0", "eval.kmeans_restarts=2", f"out_dir={tmp / 'runs'}",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "DATASETS_DIR", target)
        trained, trained_dir = run(compose_config([*tiny, "eval.save_neighbours=true"]))
        untrained, untrained_dir = run(compose_config([*tiny, "method=pretrained"]))
        splits = base.load_dataset("blobs")
    return {"dirs": (trained_dir, untrained_dir), "records": (trained, untrained), "splits": splits, "tmp": tmp}


def _gallery(run_dir: Path) -> dict:
    return json.loads((run_dir / "gallery" / "gallery.json").read_text())


def test_every_run_saves_a_gallery_of_the_same_fixed_queries(two_runs):
    galleries = [_gallery(d) for d in two_runs["dirs"]]
    labels = two_runs["splits"].test.labels
    queries = [[q["index"] for q in g["queries"]] for g in galleries]
    assert queries[0] == queries[1] == gal.choose_queries(labels).tolist()
    # one query per test class here (6 classes < 8 queries), each a real image of its class
    assert sorted(labels[queries[0]].tolist()) == sorted(np.unique(labels).tolist())
    names = two_runs["splits"].class_names
    for g in galleries:
        assert g["test_split"]["images"] == len(labels)
        for q in g["queries"]:
            assert q["class_name"] == names[q["label"]] and len(q["neighbours"]) == gal.TOP
            assert q["index"] not in [n["index"] for n in q["neighbours"]]
            assert [n["hit"] for n in q["neighbours"]] == [n["label"] == q["label"] for n in q["neighbours"]]
            scores = [n["score"] for n in q["neighbours"]]
            assert scores == sorted(scores, reverse=True)
        with Image.open(two_runs["dirs"][0] / "gallery" / "gallery.png") as picture:
            assert picture.width > 500 and picture.height > 500
    assert galleries[0]["method"] == "proxy_anchor" and galleries[1]["method"] == "pretrained"


def test_the_queries_depend_on_the_split_alone():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(40), 5)[rng.permutation(200)]
    picks = gal.choose_queries(labels)
    assert len(picks) == gal.QUERIES and np.array_equal(picks, gal.choose_queries(labels.copy()))
    assert sorted(labels[picks].tolist()) == list(range(0, 40, 5))  # every 5th class
    singletons = np.concatenate([labels, [99]])  # a class with one image is never a query
    assert 99 not in singletons[gal.choose_queries(singletons)]


def test_gallery_neighbours_are_the_evaluators(two_runs):
    """The gallery's top-8 are the saved per-query neighbours (the evaluator's kNN), and its hits give the same R@1
    on those queries as the metrics' own neighbour table."""
    run_dir = two_runs["dirs"][0]
    table = load_neighbours(run_dir / "neighbours.npz")
    for q in _gallery(run_dir)["queries"]:
        assert [n["index"] for n in q["neighbours"]] == table["indices"][q["index"], : gal.TOP].tolist()
        assert np.allclose([n["score"] for n in q["neighbours"]], table["scores"][q["index"], : gal.TOP], atol=1e-6)
        assert q["hit@1"] == (table["labels"][table["indices"][q["index"], 0]] == q["label"])


def test_saved_neighbours_rescore_to_the_records_test_metrics(two_runs, capsys):
    run_dir, record = two_runs["dirs"][0], two_runs["records"][0]
    assert cli.main(["score", "--neighbours", str(run_dir / "neighbours.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == record["metrics"]["test"]
    assert not (two_runs["dirs"][1] / "neighbours.npz").exists()  # only when asked


def test_rescoring_a_reranked_table_and_the_depth_it_keeps(tmp_path):
    """K is the deepest rank a metric reads (the largest class - 1 here, > max(ks)); a re-ranked file scores as the
    evaluator scores embeddings that rank the same way."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [12, 3, 3, 5, 2, 7])
    emb = rng.normal(size=(len(labels), 8)) + 2.0 * rng.normal(size=(6, 8))[labels]
    path = tmp_path / "n.npz"
    metrics = write_neighbours(path, emb, labels, ks=(1, 2, 4), kmeans_restarts=2)
    table = load_neighbours(path)
    assert table["indices"].shape == (len(labels), 11)
    assert score_neighbours(path) == metrics == evaluate_embeddings(emb, labels, ks=(1, 2, 4), kmeans_restarts=2)
    reversed_rows = dict(table, indices=table["indices"][:, ::-1].copy())
    np.savez(tmp_path / "r.npz", **reversed_rows)
    rescored = score_neighbours(tmp_path / "r.npz")
    assert rescored["recall@1"] != metrics["recall@1"]  # the order matters
    hits1 = labels[reversed_rows["indices"][:, 0]] == labels
    assert rescored["recall@1"] == hits1.mean()


def test_neighbours_lays_runs_side_by_side_and_marks_disagreements(two_runs, capsys):
    a, b = two_runs["dirs"]
    out = two_runs["tmp"] / "side_by_side.png"
    assert cli.main(["neighbours", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ga, gb = _gallery(a), _gallery(b)
    expected = [
        i for i, (x, y) in enumerate(zip(ga["queries"], gb["queries"], strict=True)) if x["hit@1"] != y["hit@1"]
    ]
    assert f"{len(expected)} of {len(ga['queries'])} queries" in printed
    for i in expected:
        assert f"query {i + 1}:" in printed
    with Image.open(out) as picture, Image.open(a / "gallery" / "gallery.png") as single:
        assert picture.width > single.width and picture.height > single.height  # a label column, a line per run
    assert cli.main(["neighbours", str(a), str(b), "--out", str(out), "--force", "--queries", "2"]) == 0
    with Image.open(out) as one_query, Image.open(a / "gallery" / "gallery.png") as single:
        assert one_query.height < single.height  # one block of two lines instead of six of one
    capsys.readouterr()
    assert cli.main(["neighbours", str(a), str(b), "--out", str(out), "--force", "--queries", "9"]) == 2
    assert "hold queries 1..6" in capsys.readouterr().err


def test_shading_marks_exactly_the_disagreeing_queries():
    """Two synthetic galleries that disagree at R@1 on the second query only: that block alone is shaded."""

    def gallery(hits: list[bool]) -> dict:
        queries = [
            {"index": i, "label": i, "class_name": f"c{i}", "hit@1": h,
             "neighbours": [{"index": 10 + i, "label": i if h else 99, "class_name": "x", "score": 0.5, "hit": h}]}
            for i, h in enumerate(hits)
        ]  # fmt: skip
        return {"method": "m", "seed": 0, "config_hash": "abc", "dataset": "d", "queries": queries}

    class Grey:
        def __getitem__(self, index: int) -> np.ndarray:
            return np.full((8, 8, 3), 128, dtype=np.uint8)

    galleries = [gallery([True, True, False]), gallery([True, False, False])]
    assert gal.disagreements(galleries) == [1]
    import io

    def shaded_rows(highlight: set[int]) -> int:
        pixels = np.asarray(Image.open(io.BytesIO(draw_gallery(galleries, [Grey(), Grey()], highlight))).convert("RGB"))
        return int((np.abs(pixels[:, 12].astype(int) - [0xFD, 0xE9, 0xA9]).sum(axis=1) < 10).sum())

    assert shaded_rows(set()) == 0 and shaded_rows({1}) > 100


def test_leaderboard_links_each_row_to_its_galleries_in_a_browser(two_runs, tmp_path, monkeypatch):
    """The HTML leaderboard's rows link to their runs' gallery pictures; followed in the real headless Chromium, a
    link shows the picture: loaded whole, and the screenshot of its region is not blank."""
    import io
    import os

    from benchmark.leaderboard import gather as lb
    from tests.test_leaderboard import _chromium_driver

    monkeypatch.chdir(two_runs["tmp"])
    out = lb.build_leaderboard(["runs"], tmp_path / "page", formats=["html"], reported_dir=None)
    driver, why = _chromium_driver(tmp_path)
    if driver is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)
    from selenium.webdriver.common.by import By

    try:
        driver.get(out["html"].as_uri())
        table = driver.find_element(By.CSS_SELECTOR, "table.ours")
        assert table.find_elements(By.CSS_SELECTOR, "thead th")[-1].text.strip() == "Neighbours"
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        links = {
            r.find_elements(By.TAG_NAME, "td")[1].text: r.find_elements(By.CSS_SELECTOR, "a.gallery") for r in rows
        }
        assert sorted(links) == ["pretrained", "proxy_anchor"] and all(len(a) == 1 for a in links.values())
        assert [a.text for a in links["proxy_anchor"]] == ["s0"]
        target = (two_runs["dirs"][0] / "gallery" / "gallery.png").resolve()
        assert Path(links["proxy_anchor"][0].get_attribute("href").removeprefix("file://")).resolve() == target
        links["proxy_anchor"][0].click()
        image = driver.find_element(By.TAG_NAME, "img")
        with Image.open(target) as png:
            assert int(image.get_attribute("naturalWidth")) == png.width  # the whole picture loaded
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        rect = image.rect
        region = np.asarray(shot.crop((int(rect["x"]), int(rect["y"]), int(rect["x"] + rect["width"]),
                                       int(rect["y"] + rect["height"]))))  # fmt: skip
        assert region.size > 10_000 and region.std() > 20  # thumbnails, borders and text, not a blank page
        assert 0.05 < (region < 200).mean() < 0.95
    finally:
        driver.quit()


def test_hits_and_misses_read_apart_in_greyscale():
    """In the greyscale picture, a hit's border is a solid dark line and a miss's a dashed one (dark and light
    alternate), whatever the colours; the hit/miss glyphs are drawn above the cells."""
    import io

    from benchmark.evaluation import gallery_figure as fig

    neighbours = [
        {"index": 1, "label": 0, "class_name": "a", "score": 0.9, "hit": True},
        {"index": 2, "label": 1, "class_name": "b", "score": 0.8, "hit": False},
    ]
    g = {"method": "m", "seed": 0, "dataset": "d", "run_id": "r", "queries": [
        {"index": 0, "label": 0, "class_name": "a", "hit@1": True, "neighbours": neighbours}]}  # fmt: skip

    class White:
        def __getitem__(self, index: int) -> np.ndarray:
            return np.full((8, 8, 3), 255, dtype=np.uint8)

    grey = np.asarray(Image.open(io.BytesIO(draw_gallery([g], [White()]))).convert("L")).astype(int)
    top = round((fig.TITLE + fig.ABOVE) * fig.DPI)  # the cells' top edge, pixels from the top
    dark = {}
    for rank in (1, 2):
        left = fig.MARGIN + fig.CELL + fig.GAP + fig.QUERY_GAP + (rank - 1) * (fig.CELL + fig.GAP)
        x0, x1 = round((left + 0.1) * fig.DPI), round((left + fig.CELL - 0.1) * fig.DPI)
        dark[rank] = max((grey[y, x0:x1] < 128).mean() for y in range(top - 2, top + 3))
    assert dark[1] > 0.97  # solid
    assert 0.3 < dark[2] < 0.85  # dashed
