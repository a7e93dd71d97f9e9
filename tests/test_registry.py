"""The method registry: discovery from methods/ and entry points, duplicate and type checks, listing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

import benchmark.registry as registry
from benchmark.method import EmbeddingLossMethod, MethodConfig


def test_third_party_method_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "thirdparty_method.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        from benchmark.method import EmbeddingLossMethod, MethodConfig
        from benchmark.registry import register_method

        @dataclass
        class Cfg(MethodConfig):
            name: str = "thirdparty_loss"
            scale: float = 2.0

        @register_method
        class ThirdParty(EmbeddingLossMethod):
            name = "thirdparty_loss"
            paper = "Doe. A third-party loss. NeurIPS 2027"
            year = 2027
            config_class = Cfg

            def loss(self, embeddings, labels):
                return (embeddings.sum() * 0 + self.cfg.scale)
    """)
    )
    dist = tmp_path / "thirdparty_method-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-method\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[benchmark.methods]\nthirdparty_loss = thirdparty_method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    assert "thirdparty_loss" in registry.list_methods()
    from benchmark.config import compose_config

    cfg = compose_config(["method=thirdparty_loss", "method.scale=3.5"])
    assert cfg.method.scale == 3.5


def test_duplicate_names_and_wrong_types_are_refused():
    @dataclass
    class Cfg(MethodConfig):
        name: str = "proxy_anchor"

    with pytest.raises(ValueError, match="registered twice"):

        @registry.register_method
        class Clash(EmbeddingLossMethod):
            name = "proxy_anchor"
            paper = "x"
            year = 2000
            config_class = Cfg

    with pytest.raises(TypeError, match="subclass of benchmark.method.Method"):
        registry.register_method(object)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="must set the class attribute 'paper'"):

        @registry.register_method
        class NoPaper(EmbeddingLossMethod):
            name = "no_paper"
            year = 2000
            config_class = Cfg


def test_cli_help_list_and_unknown_method():
    env_cmd = [sys.executable, "-m", "benchmark"]
    help_text = subprocess.run(env_cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "list", "score", "prepare", "supervisor", "world-report"):
        assert command in help_text
    listing = subprocess.run(env_cmd + ["list"], capture_output=True, text=True, check=True).stdout
    assert "proxy_anchor" in listing and "Kim, Kim, Cho, Kwak" in listing and "(2020)" in listing
    assert "datasets:" in listing and "backbones:" in listing
    assert "backbone.name=attributes-supervisor" in listing
    bad = subprocess.run(env_cmd + ["run", "method=proxyanchor"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Unknown method 'proxyanchor'. Did you mean 'proxy_anchor'?" in bad.stderr
    assert "Traceback" not in bad.stderr
