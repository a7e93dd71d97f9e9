"""The vision tower of a multimodal LLM as a backbone (``backbone.kind=mllm_vision``), and its frozen language model.

``backbone.name`` is a Hugging Face hub id (default of SAGA: ``Qwen/Qwen3-VL-8B-Instruct``; the paper's transfer
ablation: ``OpenGVLab/InternVL3_5-8B-HF``), a local directory holding such a checkpoint, or ``tiny-qwen3-vl`` /
``tiny-internvl``: randomly initialised models of the same architectures built in code (``_mllm_tiny``).

The backbone returns the tokens that fill the image positions of the MLLM's input, ``B×N×D`` with ``D`` the
language model's width: Qwen3-VL's post-merger tokens (``N = (H/32)·(W/32)``, 49 at 224², the SAGA paper's
resolution) or InternVL's projected, pixel-shuffled tokens (``N = (H/28)²``, 256 at 448², the tile size InternVL's
processor feeds and the size of InternViT's position table; other sizes interpolate the table, with a warning). The
tower's weights are kept in fp32 whatever dtype the checkpoint stores (fp32 master weights for the optimiser; the
engine's autocast runs the compute in bf16 on a GPU). Only the vision tower is loaded here; the language model is
loaded on demand by :func:`load_supervisor` (SAGA's training-time supervisor), cached per name and kept outside every
``nn.Module`` tree, so it never enters an optimiser, a checkpoint or DDP, and evaluation never loads it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.backbones._mllm_tiny import TINY_FAMILIES, TINY_QWEN, build_tiny_model, build_tiny_tokenizer
from benchmark.backbones._qwen_attention import batched_vision_attention
from benchmark.backbones.named import resolve_named_checkpoint
from benchmark.engine.encoder import BackboneOutput, BackboneWeightsError, register_backbone

TINY_NAME = TINY_QWEN
DEFAULT_INTERNVL = "OpenGVLab/InternVL3_5-8B-HF"  # App. C.2 transfer ablation (the HF-format release)
DEFAULT_MLLM = "Qwen/Qwen3-VL-8B-Instruct"  # SAGA §7 item 1 (ours): the paper says only "Qwen3-VL-8B"
#: The Qwen3-VL processor's normalisation (``image_mean = image_std = 0.5``), used by every Qwen3-VL checkpoint.
QWEN_MEAN = (0.5, 0.5, 0.5)
QWEN_STD = (0.5, 0.5, 0.5)
#: SAGA §7 item 3 (ours): force 224×224 so each image gives 14×14 patches -> 49 merged tokens (the processor's
#: default min_pixels of 256² would upscale 224² images to 64 tokens).
PROCESSOR_SIZE = {"shortest_edge": 224 * 224, "longest_edge": 224 * 224}
#: InternVL normalises with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Where each family keeps its vision parts in a checkpoint, and how an image's placeholder run is wrapped.
VISION_PREFIXES = {
    "qwen3_vl": ("model.visual.", "visual."),
    "internvl": ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector."),
}
IMAGE_WRAP = {"qwen3_vl": ("", ""), "internvl": ("<img>", "</img>")}


@dataclass
class VisionTokens:
    """What the vision tower gives one batch: merged tokens, DeepStack features (same layout), and the patch grid."""

    tokens: torch.Tensor  # B×N×D: the tokens that fill the image positions of the LLM input
    deepstack: list[torch.Tensor]  # one B×N×D tensor per DeepStack layer (added to early LLM hidden states)
    grid_thw: torch.Tensor | None  # B×3 patch grid (t, h, w) before the 2×2 merge (Qwen's M-RoPE); None: 1-D RoPE

    def select(self, index: int | torch.Tensor) -> VisionTokens:
        """The features of some images (a row index or an index tensor)."""
        index = torch.as_tensor(index, device=self.tokens.device).reshape(-1)
        grid = self.grid_thw[index.cpu()] if self.grid_thw is not None else None
        return VisionTokens(self.tokens[index], [d[index] for d in self.deepstack], grid)

    def detach(self) -> VisionTokens:
        return VisionTokens(self.tokens.detach(), [d.detach() for d in self.deepstack], self.grid_thw)


class MLLMVisionTower(nn.Module):
    """A Qwen3-VL vision tower (patch embedding, ViT blocks, 2×2 merger, DeepStack mergers) on image tensors."""

    def __init__(self, visual: nn.Module, mllm_name: str) -> None:
        super().__init__()
        self.visual = visual
        for block in getattr(visual, "blocks", []):
            block.attn.forward = batched_vision_attention(block.attn, block.attn.forward)
        self.mllm_name = mllm_name  # the supervisor that belongs to this tower (see load_supervisor)
        cfg = visual.config
        self.patch_size = int(cfg.patch_size)
        self.merge_size = int(cfg.spatial_merge_size)
        self.temporal_patch_size = int(cfg.temporal_patch_size)
        self.out_dim = int(cfg.out_hidden_size)

    def tokens_per_image(self, height: int, width: int) -> int:
        factor = self.patch_size * self.merge_size
        return (height // factor) * (width // factor)

    def patchify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images B×3×H×W (already normalised) -> Qwen's flat patches and grid, as its image processor lays them out.

        Reimplemented in torch so that training-time augmentation and normalisation stay with the engine; the layout
        (merge windows contiguous, each still frame repeated ``temporal_patch_size`` times) is checked against the
        Hugging Face image processor in the tests.
        """
        b, c, h, w = images.shape
        factor = self.patch_size * self.merge_size
        if h % factor or w % factor:
            raise ValueError(
                f"The Qwen3-VL vision tower needs image sides divisible by {factor}; got {h}×{w}. "
                "Use data.image_size=224 (49 tokens per image, as in the SAGA paper)."
            )
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = images.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, tp, -1, -1).reshape(b * gh * gw, c * tp * p * p)
        grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=images.device)
        return x, grid

    def encode(self, images: torch.Tensor) -> VisionTokens:
        """Merged tokens and DeepStack features for a batch of images."""
        pixels, grid = self.patchify(images)
        pixels = pixels.to(next(self.visual.parameters()).dtype)
        out = self.visual(pixels, grid_thw=grid, return_dict=True)
        b = images.shape[0]
        tokens = out.pooler_output.reshape(b, -1, out.pooler_output.shape[-1])
        deepstack = [d.reshape(b, -1, d.shape[-1]) for d in (out.deepstack_features or [])]
        return VisionTokens(tokens, deepstack, grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images).tokens


class InternVLVisionTower(nn.Module):
    """InternVL's vision tower: InternViT, pixel shuffle (0.5) and the MLP projector into the LM (all trained).

    InternViT was trained on square tiles of ``vision_config.image_size`` (448 for InternVL3.5): at that size its
    position table is used as it is (256 tokens per tile); any other size makes the library interpolate the table
    bicubically, which the real processor never does, so the first such batch warns.
    """

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, config: Any, mllm_name: str) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.mllm_name = mllm_name
        self.downsample_ratio = float(config.downsample_ratio)
        self.feature_layer = config.vision_feature_layer
        self.select_strategy = config.vision_feature_select_strategy
        patch = config.vision_config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        size = config.vision_config.image_size
        self.native_size = int(size[0] if isinstance(size, (list, tuple)) else size)  # the position table's tile
        self.out_dim = int(config.text_config.hidden_size)
        self._warned_size = False

    def tokens_per_image(self, height: int, width: int) -> int:
        return int((height // self.patch_size) * (width // self.patch_size) * self.downsample_ratio**2)

    def _warn_if_not_native(self, side: int) -> None:
        if side == self.native_size or self._warned_size:
            return
        self._warned_size = True
        native = self.native_size
        warnings.warn(
            f"InternVL's vision tower ({self.mllm_name}) was trained on {native}×{native} tiles "
            f"({self.tokens_per_image(native, native)} tokens per image); fed {side}×{side} images, its position "
            f"table is interpolated and each image gives {self.tokens_per_image(side, side)} tokens. Use "
            f"data.image_size={native} to feed it as InternVL's processor does.",
            stacklevel=3,
        )

    def encode(self, images: torch.Tensor) -> VisionTokens:
        """InternVL's ``get_image_features`` on a batch (its pixel shuffle is the library's own function)."""
        from transformers.models.internvl.modeling_internvl import InternVLModel

        h, w = images.shape[-2:]
        step = int(self.patch_size / self.downsample_ratio)
        if h != w or h % step:
            raise ValueError(f"InternVL's tower needs square images with sides divisible by {step}; got {h}×{w}.")
        self._warn_if_not_native(h)
        dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values=images.to(dtype), output_hidden_states=self.feature_layer != -1)
        feats = out.last_hidden_state if self.feature_layer == -1 else out.hidden_states[self.feature_layer]
        if self.select_strategy == "default":
            feats = feats[:, 1:]  # drop CLS
        b, n, c = feats.shape
        side = int(round(n**0.5))
        feats = InternVLModel.pixel_shuffle(None, feats.reshape(b, side, side, c), self.downsample_ratio)
        return VisionTokens(self.projector(feats.reshape(b, -1, feats.shape[-1])), [], None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images).tokens


#: The towers whose tokens a SAGA supervisor of the same MLLM consumes.
MLLM_TOWERS = (MLLMVisionTower, InternVLVisionTower)


def family_of(config: Any, name: str) -> str:
    """``qwen3_vl`` or ``internvl`` from a checkpoint's config; anything else is refused with what is supported."""
    family = getattr(config, "model_type", None)
    if family not in VISION_PREFIXES:
        raise NotImplementedError(
            f"backbone.kind=mllm_vision supports Qwen3-VL (model_type 'qwen3_vl') and InternVL in Hugging Face "
            f"format (model_type 'internvl', e.g. {DEFAULT_INTERNVL}); '{name}' has model_type '{family}'."
        )
    return family


def _tower_from_model(model: Any, family: str, name: str) -> nn.Module:
    if family == "qwen3_vl":
        return MLLMVisionTower(model.model.visual, name)
    return InternVLVisionTower(model.model.vision_tower, model.model.multi_modal_projector, model.config, name)


# ----------------------------------------------------------------------------------------------------- real path


def resolve_checkpoint_dir(name: str) -> Path:
    """A local directory for ``name``: the directory itself, or the hub snapshot (cached; offline-safe error)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    named = resolve_named_checkpoint(name)  # e.g. the attributes world's supervisor: cached, or built now
    if named is not None:
        return named
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception as err:  # offline, gated, unknown id (one line: the hub's own message spans several)
        raise BackboneWeightsError(
            f"The MLLM checkpoint '{name}' is not in the local Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}). Download it where the hub is reachable with `hf download {name} --local-dir "
            "DIR` and pass backbone.name=DIR (a CPU smoke test: backbone=tiny_qwen3_vl)."
        ) from err


def _vision_state(path: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors under ``prefixes`` (prefix kept) from a checkpoint directory's safetensors files."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    files = files or [p.name for p in path.glob("*.safetensors")]
    if not files:
        raise BackboneWeightsError(f"No *.safetensors weights in {path}.")
    state: dict[str, torch.Tensor] = {}
    for fname in files:
        with safe_open(str(path / fname), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefixes):
                    state[key] = handle.get_tensor(key)
    if not state:
        raise BackboneWeightsError(f"{path} holds no vision-tower weights (keys starting with {prefixes}).")
    return state


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k[len(p) :]: v for k, v in state.items() for p in prefixes if k.startswith(p)}


def load_vision_tower(path: Path, name: str = "") -> nn.Module:
    """Only the vision tower's weights from a Qwen3-VL or InternVL checkpoint directory (the LM is not read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    family = family_of(config, name or str(path))
    state = _vision_state(path, VISION_PREFIXES[family])
    if family == "qwen3_vl":
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        # dtype: fp32 master weights even where the checkpoint's vision_config says bfloat16 (AdamW must not update
        # bf16 parameters); the loaded tensors are upcast by load_state_dict.
        visual = Qwen3VLVisionModel._from_config(config.vision_config, dtype=torch.float32)
        visual.load_state_dict(_strip(state, VISION_PREFIXES[family]), strict=True)
        return MLLMVisionTower(visual, name or str(path))
    from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector, InternVLVisionModel

    vision = InternVLVisionModel._from_config(config.vision_config, dtype=torch.float32)  # fp32 master weights
    projector = InternVLMultiModalProjector(config).float()
    vision.load_state_dict(_strip(state, ("model.vision_tower.", "vision_tower.")), strict=True)
    projector.load_state_dict(_strip(state, ("model.multi_modal_projector.", "multi_modal_projector.")), strict=True)
    return InternVLVisionTower(vision, projector, config, name or str(path))


def _locate_checkpoint(cfg: Any) -> None:
    """Preflight: the checkpoint directory exists, is cached or is fetched now (else the download command)."""
    if str(cfg.name) not in TINY_FAMILIES:
        resolve_checkpoint_dir(str(cfg.name))


@register_backbone("mllm_vision", preflight=_locate_checkpoint)
def build_mllm_vision_backbone(cfg: Any) -> BackboneOutput:
    """The MLLM's vision tower: ``backbone.name`` = hub id, local directory, ``tiny-qwen3-vl`` or ``tiny-internvl``."""
    name = str(cfg.name)
    if name in TINY_FAMILIES:
        tower = _tower_from_model(build_tiny_model(name, seed=int(cfg.get("seed", 0) or 0)), TINY_FAMILIES[name], name)
        source = f"{name} (random init, built in code)"
    else:
        path = resolve_checkpoint_dir(name)
        tower = load_vision_tower(path, name)
        source = f"hf:{name}" + (f" ({path})" if str(path) != name else "")
    qwen = isinstance(tower, MLLMVisionTower)
    return BackboneOutput(
        module=tower,
        feature_dim=tower.out_dim,
        num_prefix_tokens=0,
        mean=QWEN_MEAN if qwen else IMAGENET_MEAN,
        std=QWEN_STD if qwen else IMAGENET_STD,
        interpolation="bicubic",  # both processors resample bicubically
        source=source,
        extra={"mllm": name, "tokens_per_image_at_224": tower.tokens_per_image(224, 224)},
    )


# ------------------------------------------------------------------------------------------------ supervisor


@dataclass
class Supervisor:
    """A frozen MLLM language model with its tokenizer. A plain object: it never joins an ``nn.Module`` tree."""

    name: str
    model: Any  # *ForConditionalGeneration, requires_grad False, eval(); its own vision tower is unused
    tokenizer: Any
    image_token_id: int
    eos_token_ids: list[int]
    processor_size: dict[str, int] = field(default_factory=dict)
    family: str = "qwen3_vl"  # qwen3_vl (M-RoPE, DeepStack) | internvl (1-D RoPE)

    @property
    def image_wrap(self) -> tuple[str, str]:
        """Text around each image's run of placeholder tokens (InternVL: ``<img>`` … ``</img>``)."""
        return IMAGE_WRAP[self.family]

    @property
    def num_layers(self) -> int:
        return int(self.model.config.text_config.num_hidden_layers)

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Supervisor:
        self.model.to(device=device, dtype=dtype) if dtype is not None else self.model.to(device)
        return self


_SUPERVISORS: dict[str, Supervisor] = {}


def _freeze(model: Any) -> None:
    model.requires_grad_(False)
    model.eval()


#: The oldest transformers whose API this module and SAGA use (``activation_checkpointing_enable``,
#: ``is_activation_checkpointing``, ``StaticCache`` layers filled by ``update``, ``mm_encoder_outputs``); pyproject's bound.
MIN_TRANSFORMERS = "5.23"


def require_transformers() -> None:
    """Refuse, in one line with the fix, a transformers older than :data:`MIN_TRANSFORMERS` (checked at first use:
    its API is missing there, and the first SAGA step would fail with an AttributeError)."""
    import transformers
    from packaging.version import Version
    from transformers import PreTrainedModel

    missing = [
        a for a in ("activation_checkpointing_enable", "is_activation_checkpointing") if not hasattr(PreTrainedModel, a)
    ]
    if Version(transformers.__version__) < Version(MIN_TRANSFORMERS) or missing:
        raise ImportError(
            f"The MLLM backbones and SAGA need transformers>={MIN_TRANSFORMERS}; this environment has "
            f"{transformers.__version__}{' (no ' + ', '.join(missing) + ')' if missing else ''}. Run: "
            f"pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        )


def load_supervisor(name: str, device: torch.device | str | None = None) -> Supervisor:
    """The frozen language model of the MLLM ``name`` (cached: loaded once per process and shared). A checkpoint is
    read straight onto ``device`` (bf16 on a GPU, never staged in host memory first)."""
    if name in _SUPERVISORS:
        return _SUPERVISORS[name]
    require_transformers()
    if name in TINY_FAMILIES:
        family = TINY_FAMILIES[name]
        model, tokenizer, size = build_tiny_model(name, seed=1), build_tiny_tokenizer(family), {}
    else:
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        path = resolve_checkpoint_dir(name)
        family = family_of(AutoConfig.from_pretrained(path), name)
        target = torch.device(device) if device is not None else None
        on_gpu = target.type == "cuda" if target is not None else torch.cuda.is_available()
        dtype = torch.bfloat16 if on_gpu else torch.float32
        # use_safetensors: weights are read as tensors only, never unpickled (as the vision tower's, above);
        # device_map: each tensor goes from the file to the device (one device: no accelerate dispatch).
        load: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
        if target is not None and target.type != "cpu":  # (on a CPU the weights are read into memory anyway)
            load["device_map"] = {"": str(target)}
        if family == "qwen3_vl":
            from transformers import Qwen3VLForConditionalGeneration

            model = Qwen3VLForConditionalGeneration.from_pretrained(path, **load)
            model.model.visual = nn.Identity()  # the encoder's own tower replaces it (tokens are passed in)
            kwargs: dict[str, Any] = {"size": dict(PROCESSOR_SIZE)}
        else:
            from transformers import InternVLForConditionalGeneration

            model = InternVLForConditionalGeneration.from_pretrained(path, **load)
            model.model.vision_tower, model.model.multi_modal_projector = nn.Identity(), nn.Identity()
            kwargs = {}
        try:
            processor = AutoProcessor.from_pretrained(path, **kwargs)
            tokenizer, size = processor.tokenizer, dict(getattr(processor.image_processor, "size", {}) or {})
        except (OSError, ValueError, TypeError):  # a directory with a tokenizer but no processor files
            tokenizer, size = AutoTokenizer.from_pretrained(path), dict(kwargs.get("size", {}))
    _freeze(model)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    sup = Supervisor(
        name=name,
        model=model,
        tokenizer=tokenizer,
        image_token_id=int(model.config.image_token_id),
        eos_token_ids=[int(e) for e in eos if e is not None and e >= 0],
        processor_size=size,
        family=family,
    )
    _SUPERVISORS[name] = sup
    return sup


def clear_supervisors() -> None:
    """Forget the cached supervisors (frees their memory)."""
    _SUPERVISORS.clear()


def _store_presets() -> None:
    """``backbone=mllm_vision`` (Qwen3-VL-8B-Instruct's tower, SAGA §7 item 1), ``backbone=internvl_vision``
    (InternVL3.5-8B, App. C.2) and the tiny test towers ``tiny_qwen3_vl`` / ``tiny_internvl``."""
    from hydra.core.config_store import ConfigStore

    from benchmark.config import BackboneConfig

    common = {"kind": "mllm_vision", "pooling": "mean", "embedding_dim": None, "freeze_bn": False}
    cs = ConfigStore.instance()
    cs.store(group="backbone", name="mllm_vision", node=BackboneConfig(name=DEFAULT_MLLM, pretrained=True, **common))
    cs.store(group="backbone", name="tiny_qwen3_vl", node=BackboneConfig(name=TINY_NAME, pretrained=False, **common))
    cs.store(
        group="backbone", name="internvl_vision", node=BackboneConfig(name=DEFAULT_INTERNVL, pretrained=True, **common)
    )
    cs.store(
        group="backbone", name="tiny_internvl", node=BackboneConfig(name="tiny-internvl", pretrained=False, **common)
    )


_store_presets()
