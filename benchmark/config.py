"""Run configuration: dataclass schemas in Hydra's ConfigStore, composed from command-line overrides.

``python -m benchmark run method=proxy_anchor dataset=cub dataset.root=/data/CUB_200_2011 seed=1`` composes the
``run`` config: the ``method`` group holds each plugin's own dataclass (registered by the plugin), ``dataset``
holds one option per card in ``datasets/``, ``backbone`` one per backbone kind. A typo in a key or a group option
fails at compose time with the list of what exists and the nearest match.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from benchmark.engine.checks import (
    device_problem,
    epochs_problem,
    finite_problem,
    ks_problem,
    missing_device,
    override_problem,
    path_component_problem,
    unwritable_reason,
    value_problem,
    warmup_problem,
)
from benchmark.registry import UnknownNameError, discover_methods, list_methods, suggest

if TYPE_CHECKING:
    from benchmark.sweeps.compose_cache import ComposeCache


@dataclass
class DatasetConfig:
    name: str = "attributes"
    root: str | None = None  # the dataset's directory (cards say which layout); embedded datasets need none
    strict: bool = True  # false: count mismatches warn instead of failing (miniature or partial copies)
    val_fraction: float = 0.2  # training classes carved off (class-disjoint) for model selection
    options: dict[str, Any] = field(default_factory=dict)  # reader options (embedded datasets: size, seed)
    card: str | None = None  # a card file outside datasets/ (benchmark/data/cards.py); selects dataset=<its name>


@dataclass
class BackboneConfig:
    kind: str = "timm"  # how the backbone is built: timm, or a registered kind (e.g. an MLLM vision tower)
    name: str | None = None  # None: the dataset card's default backbone
    pretrained: bool | None = None  # None: the dataset card's default
    checkpoint: str | None = None  # local weights file instead of fetching from the hub
    img_size: int | None = None  # ViTs: build for this input size (None: the model's default)
    pooling: str = "mean"  # mean | cls | gem | max | maxavg (Proxy Anchor's GAP+GMP)
    gem_p: float = 3.0
    embedding_dim: int | None = 512  # linear head to this size; None: no head (pooled features, e.g. SAGA baselines)
    freeze_bn: bool | None = None  # None: the card's default, else true (Proxy Anchor / HIST official code)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (memory, not maths)


@dataclass
class DataConfig:
    image_size: int | None = None  # None: the dataset card's default (224 for the paper datasets)
    transform: str = "classic"  # classic (RandomResizedCrop+flip / resize+centre crop) | saga (resize only) | hypvit
    resize_ratio: float = 256 / 224  # classic test transform: resize to image_size*ratio, centre crop image_size
    num_workers: int = 2


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: the dataset card's value, else 60 (Proxy Anchor's official default)
    batch_size: int = 64
    m_per_class: int = 4  # m-per-class sampler: batch_size/m_per_class classes per batch
    lr: float | None = None  # None: the dataset card's value, else 1e-4 (Proxy Anchor's AdamW base rate)
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0  # linear learning-rate warm-up, then cosine decay
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    freeze_backbone_epochs: int = 0  # Proxy Anchor's warm-up: only the head and the method's parameters train
    grad_clip: float | None = None  # global-norm clipping
    grad_accum: int = 1  # micro-batches per optimiser step
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    steps_per_epoch: int | None = None  # None: len(train) // batch_size
    # Steps between mid-epoch checkpoints (0: only at epoch ends). SIGTERM / Ctrl-C always checkpoint at the next step.
    checkpoint_every: int = 0
    deterministic: bool = (
        True  # CUDA: deterministic kernels (bit-identical reruns; slower). CPU is deterministic anyway
    )
    tensorboard: bool = False
    log_every: int = 10
    progress: bool = True


@dataclass
class EvalConfig:
    selection: str = "val"  # val (class-disjoint validation split) | last (final epoch) | test (best-on-test, labelled)
    selection_metric: str = "recall@1"
    every: int = 1  # evaluate every N epochs (selection val/test)
    batch_size: int = 128
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    kmeans_seed: int = 0
    kmeans_restarts: int = 10
    backend: str = "auto"  # kNN: auto (faiss, GPU if present) | faiss | torch
    # A linear probe per attribute on the test embeddings, where the dataset names its classes' attributes
    # (benchmark/evaluation/attribute_probe.py); false: skip it. It adds a measurement and changes no other result.
    attribute_probe: bool = True
    # Beside the record: gallery/ (8 fixed test queries with their top-8 neighbours, as PNG + JSON;
    # benchmark/evaluation/gallery.py), and with save_neighbours every test query's ranked neighbours
    # (neighbours.npz; python -m benchmark score --neighbours FILE re-scores it). Neither changes a result.
    gallery: bool = True
    save_neighbours: bool = False


@dataclass
class RunConfig:
    defaults: list[Any] = field(
        default_factory=lambda: [
            "_self_",
            {"method": "proxy_anchor"},
            {"dataset": "attributes"},
            {"backbone": "timm"},
            {"protocol": "none"},
        ]
    )
    method: Any = None
    dataset: Any = None
    backbone: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The protocol (sweeps/protocols/<name>.yaml) the run's settings come from; chosen by protocol=, the method, or the
    # dataset card (benchmark/engine/protocols.py). Its values are all in the config; the name labels the record.
    protocol: str = "none"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs"
    run_name: str | None = None  # None: derived from method, dataset, config hash and seed (so reruns resume)
    force: bool = False  # retrain a run whose record is complete (the old directory is kept aside)
    launcher: str = "local"  # local: run here | slurm: submit this run to SLURM and return (runs here inside a job)
    cluster: str | None = None  # launcher=slurm: a profile in sweeps/clusters.yaml (None: its default profile)


#: Config fields that do not change a run's result (excluded from the config hash that names the run).
NON_RESULT_KEYS = (
    "protocol",  # a label: the values it stands for are in the config (and a run keeps its hash from before protocols)
    "seed",
    "out_dir",
    "run_name",
    "force",
    "device",
    "launcher",
    "cluster",
    "data.num_workers",
    "train.tensorboard",
    "train.log_every",
    "train.progress",
    "train.checkpoint_every",  # when checkpoints are written, not what is trained (a resumed run ends the same)
    "eval.batch_size",
    "eval.backend",
    "dataset.card",  # where the card file lies, not what it says (its name, split and counts are in the config)
    "eval.attribute_probe",  # an extra measurement on the same model: same run, and older runs keep their hash
    "backbone.activation_checkpointing",  # memory, not maths: the same gradients recomputed in backward
    "eval.gallery",  # files beside the record, from the same test embeddings
    "eval.save_neighbours",
)
#: Fields added after runs were recorded, left out of the hash while they hold the value every older run had, so an
#: older run keeps its hash (and its directory) and only a changed value makes a new run.
LATE_FIELDS = {"method.rollout_pairs_at_once": 0, "method.reward": "verdict", "method.advantages": "group"}

#: Values used when neither the command line nor the dataset card sets a field left at None.
FALLBACKS = {
    "data.image_size": 224,
    "backbone.name": "resnet50",
    "backbone.pretrained": True,
    "backbone.freeze_bn": True,
    "train.lr": 1e-4,
    "train.epochs": 60,
}

_REGISTERED = False
#: The config groups (``group=option`` on the command line) and what their options are called in errors.
GROUPS = {"method": "method", "dataset": "dataset", "backbone": "backbone preset", "protocol": "protocol"}


def register_configs() -> None:
    """Store the schemas, one ``dataset`` option per card and every method's config in the ConfigStore."""
    global _REGISTERED
    from benchmark.data.base import list_cards
    from benchmark.engine.protocols import list_protocols

    cs = ConfigStore.instance()
    for name in list_cards():  # re-read each time: a card added to datasets/ is an option at once
        cs.store(group="dataset", name=name, node=DatasetConfig(name=name))
    for name in list_protocols():  # each run stores its resolved values under its choice (compose_config)
        cs.store(group="protocol", name=name, node={"protocol": name}, package="_global_")
    if _REGISTERED:
        return
    from benchmark.engine.encoder import list_backbone_kinds

    cs.store(name="run", node=RunConfig)
    cs.store(group="backbone", name="timm", node=BackboneConfig(kind="timm"))
    list_backbone_kinds()  # imports benchmark.backbones.*, which store their own presets
    discover_methods()  # registers each method's dataclass under the "method" group
    _REGISTERED = True


def _check_group_choices(overrides: list[str]) -> None:
    """Unknown ``method=`` / ``dataset=`` / ``backbone=`` choices get the list of options and a suggestion."""
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+~")
        if sep and key in GROUPS:
            options = [n.removesuffix(".yaml") for n in repo.get(key, {})]
            if value not in options:
                raise UnknownNameError(suggest(value, options, GROUPS[key]))


def _parse_error(err: Exception) -> str:
    return f"Cannot parse an override ({_first_line(err)}). {QUOTE_HINT}"


def _explain_unknown_key(err: Exception, overrides: list[str], cfg_probe: DictConfig | None) -> str:
    """Turn Hydra's composition error for an unknown key into one that lists the keys and suggests one."""
    message = str(err)
    ambiguous = re.match(r"Ambiguous value for argument '([^']*)'", message)
    if ambiguous:  # Hydra suggests --multirun, which this command line does not have
        key = ambiguous[1].partition("=")[0]
        return (
            f"{ambiguous[1]}: a comma-separated value is a sweep, which `run` does not do. For a list write "
            f"{key}=[a,b]; to keep the comma in a string quote it: {key}='a,b'; for one run per value write a sweep "
            f"spec (grid: {{{key}: [a, b]}}, see sweeps/smoke.yaml) and run python -m benchmark sweep SPEC."
        )
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        if "." not in key or cfg_probe is None:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg_probe, parent, default=None)
        if isinstance(node, DictConfig) and leaf not in node:
            known = [k for k in node.keys() if k != "defaults"]
            return f"Unknown config key '{key}'. " + suggest(leaf, known, f"field of '{parent}'").split(". ", 1)[1]
    unknown = re.match(r"Key '([^']+)' not in 'RunConfig'", message)
    if unknown:  # an unknown top-level key or section (``trian.epochs=3``)
        top = [f for f in dataclass_fields(RunConfig) if f != "defaults"]
        return f"Unknown config key '{unknown[1]}'. " + suggest(unknown[1], top, "top-level key").split(". ", 1)[1]
    full_key = re.search(r"full_key: (\S+)", message)
    if full_key:  # OmegaConf's type errors run over several lines: keep the reason and the key
        value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == full_key[1]), "?")
        return f"{full_key[1]}={value}: {_first_line(Exception(message))}. Give a value of the field's type."
    return message


def compose_config(overrides: list[str] | None = None, cache: ComposeCache | None = None) -> DictConfig:
    """Compose the run config from ``key=value`` overrides (validated against the dataclass schemas and the value
    rules of :func:`_validate`, before any data is read); raise :class:`ConfigError` with a one-line reason.

    ``cache`` (a :class:`benchmark.sweeps.compose_cache.ComposeCache`) lets many configs (a sweep's cells) share what they
    have in common: the same config comes out, composed once per set of group choices instead of once per call.
    """
    from benchmark.data.base import DATASETS_DIR, reader_names
    from benchmark.data.cards import use_card_file

    overrides = _prepare_overrides(use_card_file(overrides or [], DATASETS_DIR, reader_names()))
    if cache is None or not cache.registered:
        register_configs()
        if cache is not None:
            cache.registered = True
    _check_group_choices(overrides)
    if cache is None:
        overrides, card = _apply_protocol(overrides)
        cfg = _hydra_compose(overrides)
    else:
        cfg, card = cache.compose(overrides, GROUPS, _apply_protocol, _hydra_compose)
    _validate(cfg)
    _check_method_requirements(cfg)
    _check_sampler(cfg, card)
    return cfg


def _hydra_compose(overrides: list[str]) -> DictConfig:
    """Hydra's composition of the ``run`` config; its errors as one-line :class:`ConfigError`."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize(version_base=None, config_path=None):
        try:
            return compose(config_name="run", overrides=overrides)
        except OverrideParseException as err:
            raise ConfigError(_parse_error(err)) from None
        except ConfigCompositionException as err:
            groups_only = [o for o in overrides if o.partition("=")[0] in GROUPS]
            try:
                probe = compose(config_name="run", overrides=groups_only)
            except ConfigCompositionException:
                probe = None
            raise ConfigError(_explain_unknown_key(err.__cause__ or err, overrides, probe)) from None


def _group_choice(overrides: list[str], group: str) -> str | None:
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == group]
    return chosen[-1] if chosen else None


def _apply_protocol(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Choose the run's protocol and store its values for this dataset, method and backbone as the ``protocol``
    group's option (read before composing: no data is touched). Returns the overrides with the protocol (and its
    backbone preset, unless the command line chose one) selected, and the dataset card."""
    from benchmark.data.base import load_card
    from benchmark.engine.protocols import ProtocolError, choose_protocol, nest, resolve_protocol
    from benchmark.registry import get_method

    method = _group_choice(overrides, "method") or "proxy_anchor"
    card = load_card(_group_choice(overrides, "dataset") or "attributes")
    name = choose_protocol(_group_choice(overrides, "protocol"), get_method(method), card)
    backbone = _group_choice(overrides, "backbone")
    try:
        preset, values = resolve_protocol(name, card, method, backbone)
    except ProtocolError as err:
        raise ConfigError(str(err)) from None
    ConfigStore.instance().store(
        group="protocol", name=name, node={"protocol": name, **nest(values)}, package="_global_"
    )
    extra = [] if _group_choice(overrides, "protocol") else [f"protocol={name}"]
    if preset and not backbone:
        extra.append(f"backbone={preset}")
    return extra + overrides, card


def _check_method_requirements(cfg: DictConfig) -> None:
    """What the method cannot run without (``Method.check_config``), before any data or weights are read."""
    from benchmark.registry import get_method

    problem = get_method(cfg.method.name).check_config(cfg)
    if problem:
        raise ConfigError(problem)


def _check_sampler(cfg: DictConfig, card: dict[str, Any]) -> None:
    """The m-per-class sampler's and the validation carve-out's constraints, from the card's expected class counts
    (a full copy of the dataset; reader options that change the classes skip the check)."""
    from benchmark.engine.protocols import expected_training_classes
    from benchmark.registry import get_method

    epochs = cfg.train.epochs
    if epochs is None:
        epochs = ((card.get("defaults") or {}).get("train") or {}).get("epochs") or FALLBACKS["train.epochs"]
    _raise_if(warmup_problem(cfg.train.warmup_epochs, epochs, get_method(cfg.method.name).trains))
    expected = {} if cfg.dataset.options else (card.get("expected") or {})  # reader options change the counts
    _raise_if(ks_problem(list(cfg.eval.ks), expected.get("test_images")))
    if cfg.dataset.options:
        return
    total = (card.get("expected") or {}).get("train_classes")
    selection, fraction = cfg.eval.selection, float(cfg.dataset.val_fraction)
    if total and selection == "val":
        n_val = total - expected_training_classes(card, fraction, "val")
        if n_val < 2 or n_val >= total - 1:
            raise ConfigError(
                f"dataset.val_fraction={fraction} leaves {n_val} validation classes of {cfg.dataset.name}'s {total} "
                "training classes; class-disjoint selection needs at least 2 of each. Change dataset.val_fraction, "
                "or select the last epoch with eval.selection=last."
            )
    classes = expected_training_classes(card, fraction, selection)
    per_batch = cfg.train.batch_size // cfg.train.m_per_class
    if classes is not None and per_batch > classes:
        left = " after the validation carve-out" if selection == "val" else ""
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} / train.m_per_class={cfg.train.m_per_class} needs {per_batch} "
            f"classes per batch but {cfg.dataset.name} has {classes} training classes{left}: use "
            f"train.batch_size={classes * cfg.train.m_per_class} or less (a multiple of {cfg.train.m_per_class})."
        )


QUOTE_HINT = "Overrides are key=value; quote a value holding special characters: key='value'."
#: Keys whose values are names or paths: quoted for Hydra's override grammar when they hold spaces, commas,
#: non-ASCII letters or other characters the grammar reserves, so such paths simply work.
PATH_KEYS = ("out_dir", "run_name", "dataset.root", "dataset.card", "backbone.checkpoint", "backbone.name")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./~+@:-]*")


def _hydra_quote(value: str) -> str:
    """``value`` as a single-quoted Hydra string: a quote is escaped with a backslash; backslashes are doubled only
    before a quote or at the end (Hydra's override grammar; elsewhere they are taken literally)."""
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    body = escaped.rstrip("\\")
    return "'" + body + "\\" * (2 * (len(escaped) - len(body))) + "'"


def _prepare_overrides(overrides: list[str]) -> list[str]:
    """Refuse an argument without ``=``, quote path values, and let ``dataset.options.X=v`` add a reader option."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep and not item.startswith("~"):
            close = difflib.get_close_matches(item.split(".")[-1], _known_keys(), n=1)
            hint = f" (did you mean {close[0]}=...?)" if close else ""
            raise ConfigError(
                f"'{item}' is not an override{hint}: give key=value pairs, e.g. train.epochs=10 method=proxy_anchor."
            )
        _raise_if(override_problem(key, value, PATH_KEYS) if sep or key.startswith("~") else None)
        bare = key.lstrip("+~")
        if bare in PATH_KEYS and value not in ("", "null") and value[0] not in "'\"" and "${" not in value:
            if not _PLAIN_VALUE.fullmatch(value):
                value = _hydra_quote(value)
        # Reader options are free-form (each reader validates its own): let ``dataset.options.X=v`` add a key.
        prefix = "++" if key.startswith("dataset.options.") else ""
        out.append(f"{prefix}{key}{sep}{value}")
    return out


def _known_keys() -> list[str]:
    sections = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
    keys = [f"{s}.{f}" for s, cls in sections.items() for f in dataclass_fields(cls)]
    keys += [f"dataset.{f}" for f in dataclass_fields(DatasetConfig)]
    keys += [f"backbone.{f}" for f in dataclass_fields(BackboneConfig)]
    return keys + [f for f in dataclass_fields(RunConfig) if f != "defaults"]


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


class ConfigError(ValueError):
    """A config that cannot be composed or is inconsistent."""


def _validate(cfg: DictConfig) -> None:
    choices = {
        "eval.selection": (cfg.eval.selection, ("val", "last", "test")),
        "data.transform": (cfg.data.transform, ("classic", "saga", "hypvit")),
        "train.precision": (cfg.train.precision, ("auto", "fp32", "bf16")),
        "eval.backend": (cfg.eval.backend, ("auto", "faiss", "torch")),
        "launcher": (cfg.launcher, ("local", "slurm")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}={value} is not one of {', '.join(allowed)}.{hint}")
    _raise_if(value_problem(cfg))
    _raise_if(finite_problem(to_container(cfg)))
    for key in ("out_dir", "dataset.root", "backbone.checkpoint"):  # '~/x' quoted past the shell still means home
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value.startswith("~"):
            OmegaConf.update(cfg, key, os.path.expanduser(value))
    if cfg.train.batch_size % cfg.train.m_per_class:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of train.m_per_class={cfg.train.m_per_class} "
            f"(each batch holds batch_size / m_per_class classes), e.g. train.batch_size="
            f"{max(1, cfg.train.batch_size // cfg.train.m_per_class) * cfg.train.m_per_class}."
        )
    if not cfg.train.checkpoint_every >= 0:
        raise ConfigError(
            f"train.checkpoint_every={cfg.train.checkpoint_every} must be 0 (checkpoint only at epoch ends) or a "
            "positive number of steps between checkpoints."
        )
    if cfg.eval.selection == "val" and not cfg.dataset.val_fraction > 0:
        raise ConfigError("eval.selection=val needs dataset.val_fraction > 0 (or choose eval.selection=last).")
    from benchmark.registry import get_method

    _raise_if(epochs_problem(cfg.train.epochs, cfg.method.name, get_method(cfg.method.name).trains))
    _raise_if(device_problem(cfg.device))
    if cfg.backbone.kind == "timm" and cfg.backbone.name:  # before any data is read
        from benchmark.engine.encoder import check_timm_name

        check_timm_name(str(cfg.backbone.name))
    reason = unwritable_reason(cfg.out_dir)
    if reason:
        raise ConfigError(f"out_dir={cfg.out_dir}: {reason}. Pass out_dir=DIR, a directory you can write to.")
    if cfg.run_name is not None:
        _raise_if(path_component_problem("run_name", cfg.run_name, "out_dir/<dataset>/<method>/"))


def _raise_if(problem: str | None) -> None:
    if problem:
        raise ConfigError(problem)


def check_device_available(device: str) -> None:
    """Raise :class:`ConfigError` when this machine has no such device (called by ``run`` where it executes)."""
    _raise_if(missing_device(device))


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p, {})
    tree.pop(leaf, None)


def stable_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """Hash of everything that changes a run's result except the seed (same hash + same seed = the same run)."""
    tree = to_container(cfg) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    tree.pop("defaults", None)
    for key in NON_RESULT_KEYS:
        _drop(tree, key)
    for key, value in LATE_FIELDS.items():
        section, leaf = key.split(".")
        if section in tree and leaf in tree[section] and tree[section][leaf] == value:
            del tree[section][leaf]
    return stable_hash(tree, 8)


def dataclass_fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls)] if is_dataclass(cls) else []


def list_method_fields() -> dict[str, list[str]]:
    return {name: dataclass_fields(cls.config_class) for name, cls in list_methods().items()}
