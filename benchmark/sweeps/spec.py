"""Sweep specs (``sweeps/*.yaml``): a grid of run overrides, per-cell rules and resources, expanded into cells.

A spec::

    name: paper_table1                 # the sweep's name (default sweep dir: runs/sweeps/<name>)
    description: ...
    cluster: default                   # profile in sweeps/clusters.yaml
    resources: {gpus: 1, time_min: 720}  # on top of the profile
    out_dir: null                      # where the runs go (default: <sweep dir>/runs)
    overrides: [backbone.name=vit_small_patch16_224]   # every cell
    use_recommended: false             # true: each method's ``recommended`` settings (never its epochs or steps)
                                       # come after ``overrides``
    grid:                              # a mapping (one cartesian product) or a list of them (their union)
      method: [pretrained, proxy_anchor]
      dataset: [cub, cars]
      seed: [0, 1, 2]
    rules:                             # extra overrides / resources for the cells a rule matches
      - match: {method: pretrained}
        overrides: [train.epochs=0]
        resources: {gpus: 1, time_min: 60}
    exclude:                           # cells dropped from the grid
      - {method: pretrained, seed: [1, 2]}

Each cell is one ``python -m benchmark run`` with the spec's overrides, its method's ``recommended`` settings (with
``use_recommended: true``), the matching rules' overrides and its grid values (in that order; a later value of the
same key wins).
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.compose_cache import ComposeCache
from benchmark.engine.records import REPO_ROOT
from benchmark.sweeps.cluster import check_resources, resolve_resources

SPEC_KEYS = {
    "name",
    "description",
    "cluster",
    "resources",
    "out_dir",
    "overrides",
    "use_recommended",
    "grid",
    "rules",
    "exclude",
}
SWEEPS_DIR = REPO_ROOT / "sweeps"


class SpecError(ValueError):
    """A sweep spec that cannot be expanded, or cells whose configs do not compose."""


@dataclass
class Cell:
    """One run of a sweep: its grid values, full override list, resources and (once validated) run directory."""

    index: int
    assign: dict[str, Any]
    overrides: list[str]
    resources: dict[str, Any]
    run_dir: str | None = None
    config_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cell_id(self) -> str:
        return ",".join(f"{k}={format_value(v)}" for k, v in self.assign.items())


@dataclass
class Spec:
    """A loaded sweep spec."""

    path: Path
    data: dict[str, Any]
    sha256: str

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.path.stem)


def format_value(value: Any) -> str:
    """A YAML value as Hydra override syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def find_spec(path_or_name: str | Path) -> Path:
    """A spec path, or the name of one in ``sweeps/`` (``smoke`` → ``sweeps/smoke.yaml``)."""
    path = Path(path_or_name)
    if path.exists():
        return path
    for candidate in (SWEEPS_DIR / path.name, SWEEPS_DIR / f"{path.name}.yaml"):
        if candidate.exists() and candidate.name != "clusters.yaml":
            return candidate
    known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml") if p.name != "clusters.yaml")
    raise SpecError(f"Sweep spec {path_or_name} not found. Specs in {SWEEPS_DIR}: {', '.join(known)}.")


def load_spec(path_or_name: str | Path) -> Spec:
    """Read and check a spec's structure (the configs of its cells are checked by :func:`validate_cells`)."""
    path = find_spec(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not a text file ({err.reason}); a sweep spec is a YAML file.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(
            f"{path}: invalid YAML{where} ({problem}). Fix the file; `python -m benchmark sweep {path} --dry-run` "
            "checks it without submitting."
        ) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a sweep spec is a YAML mapping with keys {sorted(SPEC_KEYS)}.")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {unknown}; a spec may have {sorted(SPEC_KEYS)}.")
    if not data.get("grid"):
        raise SpecError(
            f"{path}: 'grid' is missing: give a mapping of override key to list of values, "
            "e.g. grid: {method: [proxy_anchor], dataset: [cub], seed: [0, 1, 2]}."
        )
    if data.get("name") is not None:  # the default sweep directory is runs/sweeps/<name>: one directory name
        from benchmark.engine.checks import path_component_problem

        problem = path_component_problem("name", data["name"], "runs/sweeps/")
        if problem:
            raise SpecError(f"{path}: {problem.replace('change out_dir', 'pass --sweep-dir DIR')}")
    check_resources(data.get("resources") or {}, f"{path}: resources")
    for i, rule in enumerate(data.get("rules") or []):
        if not isinstance(rule, dict) or "match" not in rule or set(rule) - {"match", "overrides", "resources"}:
            raise SpecError(f"{path}: rules[{i}] must be a mapping with 'match' and optional 'overrides', 'resources'.")
        check_resources(rule.get("resources") or {}, f"{path}: rules[{i}].resources")
    return Spec(path=path, data=data, sha256=hashlib.sha256(text.encode()).hexdigest())


def _matches(match: dict[str, Any], assign: dict[str, Any]) -> bool:
    for key, wanted in match.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if key not in assign or format_value(assign[key]) not in {format_value(v) for v in values}:
            return False
    return True


#: The training budget a protocol gives every method: a method's ``recommended`` settings never change it in a sweep
#: (e.g. Potential Field's third-party 200 epochs would otherwise train it 200 epochs where the others train 60).
BUDGET_KEYS = ("train.epochs", "train.steps_per_epoch")


def _recommended(method: Any) -> list[str]:
    """A method's own recommended engine settings (its class attribute ``recommended``) as overrides, without the
    budget (:data:`BUDGET_KEYS`), which stays the protocol's and the spec's."""
    from benchmark.registry import list_methods

    cls = list_methods().get(str(method))  # an unknown method is reported when the cell is validated
    recommended = getattr(cls, "recommended", None) or {}
    return [f"{k}={format_value(v)}" for k, v in recommended.items() if k not in BUDGET_KEYS]


def _dedupe(overrides: list[str]) -> list[str]:
    """Keep the last value given for each key (Hydra refuses the same group choice twice)."""
    last: dict[str, str] = {}
    for item in overrides:
        last.pop(item.partition("=")[0], None)
        last[item.partition("=")[0]] = item
    return list(last.values())


def expand_cells(spec: Spec, out_dir: str | Path) -> list[Cell]:
    """Every cell of the spec (grid union, minus exclusions), with overrides, resources and ``out_dir``."""
    data = spec.data
    grids = data["grid"] if isinstance(data["grid"], list) else [data["grid"]]
    cells: list[Cell] = []
    seen: set[str] = set()
    for g, grid in enumerate(grids):
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise SpecError(f"{spec.path}: grid[{g}] must map each key to a non-empty list of values.")
        for values in itertools.product(*grid.values()):
            assign = dict(zip(grid.keys(), values, strict=True))
            if any(_matches(ex, assign) for ex in data.get("exclude") or []):
                continue
            overrides = [str(o) for o in data.get("overrides") or []]
            if data.get("use_recommended"):
                overrides += _recommended(assign.get("method"))
            rule_resources = []
            for rule in data.get("rules") or []:
                if _matches(rule["match"], assign):
                    overrides += [str(o) for o in rule.get("overrides") or []]
                    rule_resources.append(rule.get("resources") or {})
            overrides += [f"{k}={format_value(v)}" for k, v in assign.items()]
            overrides = _dedupe([*overrides, f"out_dir={Path(out_dir).resolve()}"])
            cell = Cell(
                index=len(cells),
                assign=assign,
                overrides=overrides,
                resources=resolve_resources(data.get("cluster"), data.get("resources"), *rule_resources),
            )
            if cell.cell_id in seen:
                raise SpecError(f"{spec.path}: cell {cell.cell_id} appears twice in the grid.")
            seen.add(cell.cell_id)
            cells.append(cell)
    if not cells:
        raise SpecError(f"{spec.path}: the grid has no cells left after 'exclude'.")
    return cells


def cell_run_dir(overrides: list[str], cache: ComposeCache | None = None) -> tuple[Path, str]:
    """Compose a cell's config and derive its run directory and config hash, without loading any data."""
    return cell_identity(overrides, cache)[:2]


def cell_identity(overrides: list[str], cache: ComposeCache | None = None) -> tuple[Path, str, int]:
    """A cell's run directory, config hash and seed (``cache`` shares compositions between the cells of a sweep)."""
    from benchmark.config import compose_config, config_hash
    from benchmark.data.base import load_card
    from benchmark.engine.trainer import resolve_card_defaults, run_directory

    cfg = compose_config(overrides, cache=cache)
    card = cache.card(cfg.dataset.name) if cache is not None else load_card(cfg.dataset.name)
    resolve_card_defaults(cfg, card)  # the Trainer does the same before naming the run
    return run_directory(cfg).resolve(), config_hash(cfg), int(cfg.seed)


#: Grids at least this large show a progress bar while their cells are composed (on stderr).
PROGRESS_FROM = 50


def validate_cells(cells: list[Cell]) -> None:
    """Compose every cell's config; raise one :class:`SpecError` naming each cell that fails and why.

    What cells share is composed once (:class:`benchmark.compose_cache.ComposeCache`); a large grid shows a
    progress bar on stderr.
    """
    from tqdm import tqdm

    errors = []
    cache = ComposeCache()
    progress = tqdm(total=len(cells), desc="composing cells", unit="cell", disable=len(cells) < PROGRESS_FROM,
                    file=sys.stderr, mininterval=1.0)  # fmt: skip
    with progress:
        for cell in cells:
            progress.update(1)
            try:
                run_dir, chash, seed = cell_identity(cell.overrides, cache)
            except Exception as err:  # noqa: BLE001 - every composition error is reported per cell
                errors.append(f"  {cell.cell_id}: {type(err).__name__}: {err}")
                continue
            cell.run_dir, cell.config_hash = str(run_dir), chash
            cell.extra["seed"] = seed
    if errors:
        raise SpecError(
            f"{len(errors)} of {len(cells)} cells do not compose (nothing was submitted):\n" + "\n".join(errors)
        )
    dirs: dict[str, str] = {}
    for cell in cells:
        if cell.run_dir in dirs:
            raise SpecError(
                f"Cells {dirs[cell.run_dir]} and {cell.cell_id} are the same run ({cell.run_dir}): "
                "the grid repeats a configuration."
            )
        dirs[cell.run_dir] = cell.cell_id
