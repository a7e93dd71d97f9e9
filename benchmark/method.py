"""The method-plugin contract.

A method owns its loss and any parameters the loss needs (proxies, a training-only head); the engine owns the
encoder's construction, the optimiser, the schedule, the sampler, augmentation, evaluation and model selection.
A method can only add parameter groups (with a learning-rate multiplier taken from its paper, or the absolute learning
rate its paper gives for those parameters) and compute its loss. It may declare the protocol it belongs to
(``protocol``, e.g. SAGA's ``saga``) and what it cannot run without (``check_config``, checked at compose time).

A minimal plugin, saved as ``methods/my_loss.py``::

    from dataclasses import dataclass
    from benchmark.method import EmbeddingLossMethod, MethodConfig
    from benchmark.registry import register_method

    @dataclass
    class MyLossConfig(MethodConfig):
        margin: float = 0.2  # paper, Sec. 4.1

    @register_method
    class MyLoss(EmbeddingLossMethod):
        name = "my_loss"
        paper = "Doe et al., My Loss, CVPR 2027"
        year = 2027
        config_class = MyLossConfig

        def loss(self, embeddings, labels):
            ...

What a plugin may import from the suite: this module (``Method``, ``EmbeddingLossMethod``, ``MethodConfig``,
``ParamGroup``, ``TaskInfo``, ``fp32_loss``, ``to_fp32``), ``benchmark.registry`` (``register_method``) and the public
helpers in :data:`PUBLIC_HELPERS`: ``benchmark.backbones.mllm`` (``load_supervisor``, ``VisionTokens``,
``MLLM_TOWERS``) for methods that talk to a multimodal LLM. Nothing else: the engine, data, evaluation and files are
not a method's business (``tests/test_layout.py`` checks every plugin in ``methods/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from benchmark.engine.encoder import Encoder

#: Modules besides this one and ``benchmark.registry`` that a method plugin may import.
PUBLIC_HELPERS = ("benchmark.backbones.mllm",)


@dataclass
class MethodConfig:
    """Base of every method's config dataclass (stored in Hydra's ConfigStore under ``method``)."""

    name: str = "???"  # filled in by each subclass; equals the registry name


@dataclass
class ParamGroup:
    """Extra parameters a method optimises, with the learning rate its paper gives for them (and where from).

    ``lr_mult`` scales the engine's base learning rate (papers that state a ratio, e.g. "proxies at 100x"). ``lr``,
    when set, is an *absolute* learning rate that replaces ``lr_mult x base`` (papers that state a value for these
    parameters alone, e.g. "centres at 1e-2", independent of the backbone's rate). Either way the engine's warm-up and
    cosine factor still apply, and the run record stores the group's values and source.

    ``eps``, when set, is the Adam epsilon of this group alone (the engine's AdamW keeps its default for the encoder):
    for official recipes whose rates only make sense with their epsilon, e.g. ProxyNCA++'s proxies at lr 4e2 with
    Adam's eps = 1 (with eps = 1e-8 every proxy coordinate moves by about the learning rate on the first step).
    """

    name: str
    params: list[nn.Parameter]
    lr_mult: float = 1.0
    weight_decay: float | None = None  # None: the engine's weight decay
    source: str = ""  # where the multiplier (or absolute rate) comes from (paper section or official code)
    lr: float | None = None  # absolute learning rate; None: lr_mult x the engine's base rate
    eps: float | None = None  # Adam epsilon for this group; None: the engine optimiser's default (1e-8)

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ValueError(
                f"ParamGroup '{self.name}': an absolute lr must be > 0 (or None to use lr_mult); got {self.lr}."
            )
        if self.eps is not None and not self.eps > 0:
            raise ValueError(
                f"ParamGroup '{self.name}': Adam's eps must be > 0 (or None for the engine's default); got {self.eps}."
            )


@dataclass
class TaskInfo:
    """What a method may know about the task when it is built."""

    num_classes: int  # training classes (labels are 0..num_classes-1 in training batches)
    embedding_dim: int  # the encoder's output size (after its head, if any)
    dataset: str
    class_names: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)  # the dataset card (attribute vocabulary, prompt fields)
    feature_dim: int = 0  # the backbone's token / pooled-feature width (before the head)


class Method(nn.Module):
    """Base class of every method plugin. Subclasses set the class attributes and implement ``training_step``.

    The method's ``state_dict`` (extra state included, e.g. random streams) goes into the run's checkpoints, which
    are read with ``torch.load(weights_only=True)``: it may hold tensors and plain values (numbers, strings, lists,
    tuples, dicts) only — convert anything else (a numpy array: ``torch.from_numpy`` or ``.tolist()``).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # full citation: authors, title, venue
    year: ClassVar[int] = 0
    url: ClassVar[str] = ""  # arXiv or proceedings link
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trains: ClassVar[bool] = True  # False for methods evaluated zero-shot (``pretrained``)
    #: The protocol (``sweeps/protocols/<name>.yaml``) the method belongs to: its runs use it unless ``protocol=`` says
    #: otherwise (None: the dataset card's protocol). SAGA belongs to ``saga``, the setting of its paper.
    protocol: ClassVar[str | None] = None
    #: True for a method whose ``training_step`` back-propagates its loss in parts (:meth:`backward_part`) and returns
    #: the total detached; the engine then runs the step under DDP's ``no_sync`` and averages gradients once.
    backward_in_parts: ClassVar[bool] = False
    #: False for a method that cannot be bit-identical on CUDA anyway (SAGA: top-p sampling's cumsum and the replay's
    #: attention backward have no deterministic kernels), so ``train.deterministic`` would only slow it down there.
    cuda_deterministic: ClassVar[bool] = True

    @classmethod
    def check_config(cls, cfg: Any) -> str | None:
        """What this method cannot run without: a one-line reason the composed config cannot work (and the fix), or
        None. Called when the config is composed, before any data or weights are read. Default: no requirement."""
        return None

    def __init__(self, cfg: Any, task: TaskInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        #: Set by the engine: its :class:`benchmark.engine.backprop.Backprop` (scale, autocast, DDP); None standalone.
        self.backprop: Any = None

    def backward_part(self, loss: torch.Tensor) -> None:
        """Back-propagate a part of this step's loss now, freeing its graph (for steps too large to hold at once).

        The gradients add up to those of one backward of the whole loss. Inside the engine this is its ``Backprop``
        (finite check, ``1/grad_accum``, autocast off, DDP); standalone (a test, a script) it is ``loss.backward()``.
        A step that uses it sets ``backward_in_parts = True`` and returns its total loss detached.
        """
        if self.backprop is not None:
            self.backprop(loss)
        elif loss.requires_grad:
            loss.backward()

    def backward_through(self, outputs: list[torch.Tensor], boundary: list[torch.Tensor]) -> None:
        """Continue into ``outputs``' graph the gradient that earlier parts accumulated at ``boundary``: ``outputs``
        detached and made leaves (``requires_grad_``), e.g. a tower's tokens replayed pair by pair through a frozen
        LM, whose graph then runs backward once instead of once per pair. The gradients carry the engine's scale."""
        grads = [b.grad for b in boundary]
        if self.backprop is not None:
            self.backprop.through(outputs, grads)
        else:
            pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None and o.requires_grad]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

    def param_groups(self) -> list[ParamGroup]:
        """Parameters this method owns, grouped by learning-rate multiplier. The default: one group, ×1."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [ParamGroup("method", params)] if params else []

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, encoder: Encoder) -> dict[str, Any]:
        """One step's losses: a dict holding ``loss`` (a scalar tensor with grad, which the engine back-propagates; or,
        with ``backward_in_parts``, the total of the parts already back-propagated, detached) and detached scalars."""
        raise NotImplementedError

    def embed(self, images: torch.Tensor, encoder: Encoder) -> torch.Tensor:
        """Embeddings used for retrieval (L2-normalised). Methods change what is embedded, never how it is scored."""
        return encoder(images)

    def diagnostics(self) -> dict[str, float]:
        """Run-level diagnostics to store in the record (e.g. SAGA's reward statistics). Default: none."""
        return {}


class EmbeddingLossMethod(Method):
    """A method whose whole training step is a loss on the encoder's L2-normalised embeddings."""

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss on L2-normalised ``embeddings`` (B×E) with training-class ``labels`` (B)."""
        raise NotImplementedError

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, encoder: Encoder) -> dict[str, Any]:
        """Embeddings under the engine's autocast (bf16 on GPU), then the loss in fp32 (see :func:`fp32_loss`)."""
        embeddings = self.embed(images, encoder)
        with fp32_loss(embeddings):
            loss = self.loss(to_fp32(embeddings), labels)
        return {"loss": loss}


def fp32_loss(tensor: torch.Tensor) -> torch.autocast:
    """A context with autocast off on ``tensor``'s device: a loss computed inside runs in its inputs' dtype.

    Every method's loss runs in fp32 even under the engine's bf16 autocast: similarities of nearby embeddings with
    margins of 0.01-0.4 and scales of 32-80 lose their digits in bf16 (Proxy Anchor's gradients moved by 0.7 %,
    Multi-Similarity's by 3.5 %). Cast the inputs with :func:`to_fp32` inside it.
    """
    return torch.autocast(tensor.device.type, enabled=False)


def to_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32, or unchanged when its dtype is wider (float64 in parity tests)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
