"""The vision tower of a multimodal LLM as a backbone (``backbone.kind=mllm_vision``), and its frozen language model.

``backbone.name`` is a Hugging Face hub id (default of SAGA: ``Qwen/Qwen3-VL-8B-Instruct``), a local directory
holding such a checkpoint, or ``tiny-qwen3-vl``: a randomly initialised model of the same architecture built from a
config in code, with a byte-level BPE tokenizer trained in code, for tests and CPU runs (no download).

The backbone returns the post-merger tokens that fill the image positions of the MLLM's input: ``B×N×D`` with
``N = (H/32)·(W/32)`` (49 at 224², the SAGA paper's resolution) and ``D`` the language model's width. Only the vision
tower is loaded here; the language model is loaded on demand by :func:`load_supervisor` (SAGA's training-time
supervisor), cached per name and kept outside every ``nn.Module`` tree, so it never enters an optimiser, a
checkpoint or DDP, and evaluation never loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.encoder import BackboneOutput, BackboneWeightsError, register_backbone

TINY_NAME = "tiny-qwen3-vl"
DEFAULT_MLLM = "Qwen/Qwen3-VL-8B-Instruct"  # SAGA §7 item 1 (ours): the paper says only "Qwen3-VL-8B"
#: The Qwen3-VL processor's normalisation (``image_mean = image_std = 0.5``), used by every Qwen3-VL checkpoint.
QWEN_MEAN = (0.5, 0.5, 0.5)
QWEN_STD = (0.5, 0.5, 0.5)
#: SAGA §7 item 3 (ours): force 224×224 so each image gives 14×14 patches -> 49 merged tokens (the processor's
#: default min_pixels of 256² would upscale 224² images to 64 tokens).
PROCESSOR_SIZE = {"shortest_edge": 224 * 224, "longest_edge": 224 * 224}
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The Qwen chat layout for one user turn of images and text (what Qwen3-VL's own template produces for it).
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif c['type'] == 'text' -%}{{- c['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# Training text for the tiny tokenizer: JSON answers and the words of SAGA-style prompts (any text still encodes,
# byte-level, just in more tokens).
_TINY_CORPUS = [
    '{"bird_1": {"bill shape": "short, cone-shaped, dark grey", "wing color": "blue with orange patch"},',
    '"bird_2": {"bill shape": "long", "breast pattern": "striped"}, "differences": "the bill and the wing",',
    '"confidence": "high", "medium", or "low", "reasoning": "one-sentence justification based on the attributes",',
    '"same_species": "yes" or "no", "same_model": "no", "same_variant": "yes", "same_class": "yes"}',
    "You are assisting an expert in identifying the class of an item from photographs.",
    "specialists use the following visual attributes to distinguish between classes: color, shape, size, pattern",
    "You are given two item photographs (Item 1 and Item 2). Please do the following: Describe Item 1",
    "For each of the attributes listed above, describe what you observe. Use natural, concise language (e.g.",
    "Do the same for Item 2. Key Differences: Summarize the most important visual differences between the two",
    "Focus on the attributes that would help a specialist tell them apart. Prediction: Based on your observations,",
    "are these two the same? Respond in JSON with the following structure: one entry per attribute, same keys",
    "red green blue yellow black white grey orange purple brown round square triangle striped dotted plain large small",
]


@dataclass
class VisionTokens:
    """What the vision tower gives one batch: merged tokens, DeepStack features (same layout), and the patch grid."""

    tokens: torch.Tensor  # B×N×D: the tokens that fill the image positions of the LLM input
    deepstack: list[torch.Tensor]  # one B×N×D tensor per DeepStack layer (added to early LLM hidden states)
    grid_thw: torch.Tensor  # B×3 patch grid (t, h, w) before the 2×2 merge

    def select(self, index: int | torch.Tensor) -> VisionTokens:
        """The features of some images (a row index or an index tensor)."""
        index = torch.as_tensor(index, device=self.tokens.device).reshape(-1)
        return VisionTokens(self.tokens[index], [d[index] for d in self.deepstack], self.grid_thw[index.cpu()])

    def detach(self) -> VisionTokens:
        return VisionTokens(self.tokens.detach(), [d.detach() for d in self.deepstack], self.grid_thw)


class MLLMVisionTower(nn.Module):
    """A Qwen3-VL vision tower (patch embedding, ViT blocks, 2×2 merger, DeepStack mergers) on image tensors."""

    def __init__(self, visual: nn.Module, mllm_name: str) -> None:
        super().__init__()
        self.visual = visual
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


# ----------------------------------------------------------------------------------------------------------- tiny


_TINY_TOKENIZER: Any = None


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in code on a small corpus, with Qwen's special tokens and chat layout."""
    global _TINY_TOKENIZER
    if _TINY_TOKENIZER is not None:
        return _TINY_TOKENIZER
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=[]
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    _TINY_TOKENIZER = fast
    return fast


def tiny_qwen3_vl_config(vocab_size: int) -> Any:
    """A Qwen3-VL config of the real architecture at toy width: 2 ViT blocks (one DeepStack tap), 3 LLM layers."""
    from transformers import Qwen3VLConfig

    tok = build_tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen3VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_model(seed: int = 0, attn_implementation: str = "sdpa") -> Any:
    """The tiny Qwen3-VL (random weights, fixed seed) as ``Qwen3VLForConditionalGeneration``."""
    from transformers import Qwen3VLForConditionalGeneration

    config = tiny_qwen3_vl_config(len(build_tiny_tokenizer()))
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    return model


# ----------------------------------------------------------------------------------------------------- real path


def resolve_checkpoint_dir(name: str) -> Path:
    """A local directory for ``name``: the directory itself, or the hub snapshot (cached; offline-safe error)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception as err:  # offline, gated, unknown id
        raise BackboneWeightsError(
            f"Could not find the MLLM checkpoint '{name}' ({type(err).__name__}: {err}). Pass a hub id that is in "
            "the local Hugging Face cache, or download it elsewhere (e.g. `hf download Qwen/Qwen3-VL-8B-Instruct "
            "--local-dir DIR`) and pass backbone.name=DIR; for tests use backbone.name=tiny-qwen3-vl."
        ) from err


def _check_architecture(config: Any, name: str) -> None:
    if getattr(config, "model_type", None) != "qwen3_vl":
        raise NotImplementedError(
            f"backbone.kind=mllm_vision supports Qwen3-VL checkpoints (model_type 'qwen3_vl'); '{name}' has "
            f"model_type '{getattr(config, 'model_type', None)}'. InternVL3.5 (the paper's transfer ablation) is "
            "not implemented yet."
        )


def load_vision_tower(path: Path) -> nn.Module:
    """Only the vision tower's weights (``model.visual.*``) from a Qwen3-VL checkpoint directory."""
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    config = AutoConfig.from_pretrained(path)
    _check_architecture(config, str(path))
    visual = Qwen3VLVisionModel._from_config(config.vision_config)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    files = files or [p.name for p in path.glob("*.safetensors")]
    if not files:
        raise BackboneWeightsError(f"No *.safetensors weights in {path}.")
    state: dict[str, torch.Tensor] = {}
    for fname in files:
        with safe_open(str(path / fname), framework="pt") as handle:
            for key in handle.keys():
                for prefix in ("model.visual.", "visual."):
                    if key.startswith(prefix):
                        state[key[len(prefix) :]] = handle.get_tensor(key)
    if not state:
        raise BackboneWeightsError(f"{path} holds no vision-tower weights (keys 'model.visual.*').")
    visual.load_state_dict(state, strict=True)
    return visual


@register_backbone("mllm_vision")
def build_mllm_vision_backbone(cfg: Any) -> BackboneOutput:
    """The MLLM's vision tower: ``backbone.name`` = hub id, local directory, or ``tiny-qwen3-vl``."""
    name = str(cfg.name)
    if name == TINY_NAME:
        visual = build_tiny_model(seed=int(cfg.get("seed", 0) or 0)).model.visual
        source = f"{TINY_NAME} (random init, built in code)"
    else:
        path = resolve_checkpoint_dir(name)
        visual = load_vision_tower(path)
        source = f"hf:{name}" + (f" ({path})" if str(path) != name else "")
    tower = MLLMVisionTower(visual, name)
    return BackboneOutput(
        module=tower,
        feature_dim=tower.out_dim,
        num_prefix_tokens=0,
        mean=QWEN_MEAN,
        std=QWEN_STD,
        interpolation="bicubic",  # the Qwen2-VL/Qwen3-VL image processor resamples bicubically
        source=source,
        extra={"mllm": name, "tokens_per_image_at_224": tower.tokens_per_image(224, 224)},
    )


# ------------------------------------------------------------------------------------------------ supervisor


@dataclass
class Supervisor:
    """A frozen MLLM language model with its tokenizer. A plain object: it never joins an ``nn.Module`` tree."""

    name: str
    model: Any  # Qwen3VLForConditionalGeneration, requires_grad False, eval(); its own vision tower is unused
    tokenizer: Any
    image_token_id: int
    eos_token_ids: list[int]
    processor_size: dict[str, int] = field(default_factory=dict)

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


def load_supervisor(name: str) -> Supervisor:
    """The frozen language model of the MLLM ``name`` (cached: loaded once per process and shared)."""
    if name in _SUPERVISORS:
        return _SUPERVISORS[name]
    if name == TINY_NAME:
        model = build_tiny_model(seed=1)
        tokenizer = build_tiny_tokenizer()
        size: dict[str, int] = {}
    else:
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

        path = resolve_checkpoint_dir(name)
        _check_architecture(AutoConfig.from_pretrained(path), name)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=dtype)
        model.model.visual = nn.Identity()  # the encoder's own tower replaces it (tokens are passed in)
        try:
            processor = AutoProcessor.from_pretrained(path, size=dict(PROCESSOR_SIZE))
            tokenizer, size = processor.tokenizer, dict(processor.image_processor.size)
        except (OSError, ValueError, TypeError):  # a directory with a tokenizer but no processor files
            tokenizer, size = AutoTokenizer.from_pretrained(path), dict(PROCESSOR_SIZE)
    _freeze(model)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    sup = Supervisor(
        name=name,
        model=model,
        tokenizer=tokenizer,
        image_token_id=int(model.config.image_token_id),
        eos_token_ids=[int(e) for e in eos if e is not None and e >= 0],
        processor_size=size,
    )
    _SUPERVISORS[name] = sup
    return sup


def clear_supervisors() -> None:
    """Forget the cached supervisors (frees their memory)."""
    _SUPERVISORS.clear()


def _store_presets() -> None:
    """``backbone=mllm_vision`` (Qwen3-VL-8B-Instruct's tower, SAGA §7 item 1) and ``backbone=tiny_qwen3_vl``."""
    from hydra.core.config_store import ConfigStore

    from benchmark.config import BackboneConfig

    common = {"kind": "mllm_vision", "pooling": "mean", "embedding_dim": None, "freeze_bn": False}
    cs = ConfigStore.instance()
    cs.store(group="backbone", name="mllm_vision", node=BackboneConfig(name=DEFAULT_MLLM, pretrained=True, **common))
    cs.store(group="backbone", name="tiny_qwen3_vl", node=BackboneConfig(name=TINY_NAME, pretrained=False, **common))


_store_presets()
