"""SAGA: Semantic Attribute Gradients from Adjudication (Bhatnagar, Baiju, Ahuja, arXiv 2606.15134, 2026).

The encoder is an MLLM's own vision tower; the MLLM's frozen language model judges pairs of images ("same class?")
in a JSON answer that first describes a per-dataset list of attributes. One optimiser step (Algorithm 1):

- Phase A: pooled embeddings of the class-balanced micro-batch -> DML loss (Potential Field by default).
- Phase B: balanced same/different pairs; G sampled answers each (no graph, prefix shared); binary verdict reward;
  DAPO dynamic sampling keeps pairs whose rewards vary, refilling micro-batches until K are buffered.
- Phase C: the sampled tokens replayed with gradients through the frozen LM into the vision tower (GRPO, Eq. 5)
  and the layer-ℓ attention of correct answers distilled into the pooler's attention (KL, Eq. 7).

Values the paper leaves open are this benchmark's choices, marked "ours" with the item of docs/saga-method.md §7.

Log-probabilities and the sampling temperature: answers are *sampled* from the warped distribution (logits / T with
T = 0.7, then top-p 0.95), but the log-probabilities that the GRPO term differentiates (the replay) and the
decoding-time ones it is checked against (``log_ratio_max``) are those of the **untempered** policy,
``log_softmax(logits)`` (T = 1). TRL's GRPOTrainer instead divides the logits by the sampling temperature before its
log-softmax. The paper writes ``log pi_theta(y_t | ...)`` and says nothing about T there (docs/saga-method.md §2.2),
so this is ours: the policy is the frozen LM as it is, the temperature only a sampling device.

The loss balance (Eq. 8) is in the record: ``grad_norm_<term>_<group>``, each weighted term's gradient norm on each
parameter group (tower, pooler query, W_k, W_o, proxies), medians over every ``grad_norm_every``-th step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional  # noqa: UP035 - OmegaConf structured configs need typing generics

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import Method, MethodConfig, ParamGroup, TaskInfo
from benchmark.registry import register_method

from ._diagnostics import GradNormLog, RunTotals, TermGradTracker
from ._grpo import (
    DynamicSamplingBuffer,
    PairGroup,
    answer_object,
    balanced_pairs,
    described_verdict,
    grpo_loss,
    verdict_reward,
)
from ._pooler import AttentionPooler, create_metric_loss
from ._prompt import build_prompt, prompt_fields
from ._rollout import SkeletonConstraint, build_prefix, replay, sample_rollouts, teacher_layer_index
from ._spans import attribute_token_spans, token_offsets

__all__ = ["SAGA", "SAGAConfig"]


@dataclass
class SAGAConfig(MethodConfig):
    """SAGA's hyperparameters: the paper's values (App. B, §4.1) unless marked ours (docs/saga-method.md §7)."""

    name: str = "saga"
    embedding_dim: int = 4096  # D_e (§4.1); Table 4 uses 512 and 128
    metric_loss: str = "potential_field"  # Table 1 headline; proxy_anchor | multi_similarity (Table 3)
    metric_options: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006 - the loss's own arguments
    use_grpo: bool = True  # Table 2 switches
    use_kl: bool = True
    generic_prompt: bool = False  # App. E.3 prompt (Table 2 ablation; the KL term needs use_kl=false there)
    supervisor: str = ""  # "" = the backbone's own MLLM; a name = external encoder + trainable projector (ours)
    group_size: int = 8  # G (§4.1)
    num_pairs: int = 8  # K contributing pairs per optimiser step (App. B)
    pairs_per_batch: int = 8  # candidate pairs drawn per micro-batch: "P = 8 balanced pairs" (§4.1, §7 item 6)
    max_refill_batches: int = 4  # ours: cap on extra micro-batches drawn per step to fill the buffer
    refill_dml: bool = True  # ours (§7 item 13): every consumed micro-batch adds its mean DML loss
    temperature: float = 0.7  # App. B
    top_p: float = 0.95  # App. B
    max_new_tokens: int = 1024  # App. B
    rollout_pairs_at_once: int = 0  # ours: pairs decoded together (0: all P of a micro-batch; fewer: less KV memory)
    rollout_constraint: str = "none"  # ours: none | json_skeleton (forces the answer's JSON layout; weak models)
    teacher_layer: int = 26  # ℓ (Sec. 3.4), 0-based as HF outputs.attentions[ℓ] (§7 item 10, ours)
    kl_include_keys: bool = False  # ours (§7 item 9): A_a/A_b are the attribute values' tokens only
    lambda_dml: float = 1.0  # Eq. 8: unit weights
    lambda_grpo: float = 1.0
    # ours: KL ~ DML gradient on the pooler (at 1, the paper's Eq. 8, KL's was 25x DML's on q and W_k: README)
    lambda_kl: float = 0.04
    # controls (ours, the attributes world): "verdict" is Eq. 3; "descriptions" is the rule judge: the verdict computed
    # by code from the answer's own two descriptions, GRPO on the description tokens only (the rest masked out)
    reward: str = "verdict"
    # "group" is Eq. 4; "shuffled" permutes the buffer's advantages across its pairs and rollouts (the same values and
    # gradient scale, no information about which answer was right: a control that must not help)
    advantages: str = "group"
    adv_eps: float = 1e-6  # ours (§7 item 12)
    adv_unbiased: bool = True  # ours (§7 item 12): matches the paper's figure example
    gradient_checkpointing: bool = True  # ours (§7 item 20): in the frozen LM during the replay
    pooler_lr_mult: float = 5.0  # App. B: pooler 1e-4 = 5 × the encoder's 2e-5
    proxy_lr_mult: float = 100.0  # ours (§7 item 15): the Potential Field baseline's rate (PF Sec. 4.1, its file)
    replay_chunk: int = 256  # tokens per chunk of the replay's vocabulary projection (memory, not maths)
    # pair- and rollout-sampling streams; None: derived from the run's seed (torch.initial_seed(), set by the engine)
    seed: Optional[int] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    grad_norm_every: int = 10  # ours: per-term gradient norms every N steps (one extra backward per term); 0: never


def _policy_mask(ro: Any) -> torch.Tensor:
    """The tokens GRPO sums over: every generated one, or the rule judge's descriptions (``_descriptions_only``)."""
    return ro.mask if ro.policy_mask is None else ro.policy_mask.to(ro.mask.device)


@register_method
class SAGA(Method):
    """SAGA (see the module docstring). ``next_batch`` is set by the engine: it returns the next micro-batch."""

    name = "saga"
    paper = (
        "Bhatnagar, Baiju, Ahuja. Beyond Scalar Distances: Semantic Attribute Gradients from Frozen MLLMs "
        "for Visual Embeddings. arXiv 2606.15134, 2026"
    )
    year = 2026
    url = "https://arxiv.org/abs/2606.15134"
    config_class = SAGAConfig
    needs_mllm: ClassVar[bool] = True  # the training step needs an MLLM supervisor (backbone.kind=mllm_vision)
    backward_in_parts: ClassVar[bool] = True  # a step at the paper's shape does not fit in memory as one graph
    cuda_deterministic: ClassVar[bool] = False  # top-p's cumsum, flash attention's backward: not bit-identical on CUDA
    #: The paper's engine settings (App. A/B: tower, 224 px, 3 epochs, 5 % warm-up, lr 2e-5, batch 64, last epoch)
    #: are the ``saga`` protocol (sweeps/protocols/saga.yaml); the pooler's 1e-4 is pooler_lr_mult=5.
    protocol: ClassVar[str] = "saga"

    @classmethod
    def check_config(cls, cfg: Any) -> str | None:
        """GRPO and KL need a multimodal LLM's language model: the backbone's own (an MLLM tower) or method.supervisor."""
        m, b = cfg.method, cfg.backbone
        if (m.use_grpo or m.use_kl) and b.kind != "mllm_vision" and not m.supervisor:
            return (
                f"SAGA's GRPO and KL terms need a multimodal LLM as supervisor, and backbone.kind={b.kind} "
                f"({b.name or 'the dataset default'}) has none: use protocol={cls.protocol} (the paper's Qwen3-VL-8B "
                "tower), backbone=mllm_vision backbone.name=HUB_ID_OR_DIR, or method.supervisor=<MLLM> with this "
                "encoder (or method.use_grpo=false method.use_kl=false)."
            )
        return None

    def __init__(self, cfg: Any, task: TaskInfo) -> None:
        super().__init__(cfg, task)
        if cfg.generic_prompt and cfg.use_kl:
            raise ValueError(
                "The generic prompt has no attribute descriptions, so SAGA's KL term is undefined there (App. E.3): "
                "use method.generic_prompt=true method.use_kl=false."
            )
        if cfg.reward not in ("verdict", "descriptions") or cfg.advantages not in ("group", "shuffled"):
            raise ValueError(
                f"method.reward must be verdict or descriptions (got {cfg.reward}) and method.advantages group or "
                f"shuffled (got {cfg.advantages})."
            )
        if cfg.reward == "descriptions" and cfg.generic_prompt:
            raise ValueError(
                "method.reward=descriptions reads the two attribute descriptions, which the generic "
                "prompt does not ask for: use method.generic_prompt=false."
            )
        if cfg.rollout_constraint not in ("none", "json_skeleton"):
            raise ValueError(f"method.rollout_constraint must be none or json_skeleton, not {cfg.rollout_constraint}")
        self.uses_llm = bool(cfg.use_grpo or cfg.use_kl)
        if self.uses_llm:
            self.prompt = build_prompt(task.card, generic=cfg.generic_prompt)
            self.fields = prompt_fields(task.card)
        width = int(getattr(task, "feature_dim", 0) or task.embedding_dim)
        self.pooler = AttentionPooler(width, int(cfg.embedding_dim))
        options = dict(cfg.metric_options or {})
        self.metric = create_metric_loss(cfg.metric_loss, task.num_classes, int(cfg.embedding_dim), options)
        self.projector: nn.Module | None = None
        if cfg.supervisor:  # an external encoder's tokens projected into the LM (ours: one linear layer)
            from benchmark.backbones.mllm import load_supervisor

            hidden = int(load_supervisor(cfg.supervisor).model.config.text_config.hidden_size)
            self.projector = nn.Linear(width, hidden)
        self.next_batch = None
        # The run's seed unless one is given: the engine seeds torch with it before building the method.
        self.stream_seed = int(cfg.seed) if cfg.seed is not None else int(torch.initial_seed())
        streams = np.random.SeedSequence([self.stream_seed, 0x53414741]).spawn(2)
        self._rng = np.random.default_rng(streams[0])
        self._torch_seed = int(streams[1].generate_state(1, np.uint64)[0] >> np.uint64(1))
        self._gen: dict[str, torch.Generator] = {}
        self._prefixes: dict[Any, Any] = {}
        self._constraint: SkeletonConstraint | None = None
        self._totals = RunTotals()
        self._grad_norms = GradNormLog()

    # ------------------------------------------------------------------------------------------- parameters
    def param_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup("saga_pooler", list(self.pooler.parameters()), self.cfg.pooler_lr_mult, source="App. B")]
        proxies = [p for p in self.metric.parameters() if p.requires_grad]
        if proxies:
            source = "ours, §7 item 15: the Potential Field baseline's 100x (PF Sec. 4.1)"
            groups.append(ParamGroup("metric_proxies", proxies, self.cfg.proxy_lr_mult, source=source))
        if self.projector is not None:
            groups.append(ParamGroup("projector", list(self.projector.parameters()), 1.0, source="ours"))
        return groups

    # ----------------------------------------------------------------------------------------------- embedding
    def _features(self, encoder: Any, images: torch.Tensor) -> Any:
        """Vision tokens (with DeepStack features) for the pooler and the LM; external encoders go via the projector."""
        from benchmark.backbones.mllm import MLLM_TOWERS, VisionTokens

        if isinstance(encoder.backbone, MLLM_TOWERS):
            feats = encoder.backbone.encode(images)
        else:
            tokens = encoder.tokens(images)[:, encoder.num_prefix_tokens :]
            side = int(round(tokens.shape[1] ** 0.5))
            if side * side != tokens.shape[1]:
                raise ValueError(f"An external encoder for SAGA needs a square token grid; got {tokens.shape[1]}.")
            grid = torch.tensor([[1, 2 * side, 2 * side]] * len(tokens))  # the LM's M-RoPE grid after a 2×2 merge
            feats = VisionTokens(tokens, [], grid)
        if feats.tokens.shape[-1] != self.pooler.dim:
            raise ValueError(
                f"SAGA's pooler expects tokens of width {self.pooler.dim}, the backbone gives {feats.tokens.shape[-1]}; "
                "run SAGA with backbone.embedding_dim=0 (its own pooler and head replace the encoder's)."
            )
        return feats

    def _to_llm(self, feats: Any) -> Any:
        from benchmark.backbones.mllm import VisionTokens

        if self.projector is None:
            return feats
        return VisionTokens(self.projector(feats.tokens), [], feats.grid_thw)

    def embed(self, images: torch.Tensor, encoder: Any) -> torch.Tensor:
        """z = norm(W_o · beta X) on the tower's tokens (Eq. 9); the language model is not used."""
        return self.pooler(self._features(encoder, images).tokens)[0]

    # ------------------------------------------------------------------------------------------- supervisor
    def _supervisor(self, encoder: Any, device: torch.device) -> Any:
        from benchmark.backbones.mllm import load_supervisor

        name = self.cfg.supervisor or getattr(encoder.backbone, "mllm_name", "")
        if not name:
            raise ValueError(
                "SAGA's GRPO and KL terms need a multimodal LLM: use backbone.kind=mllm_vision (its own LM supervises) "
                "or set method.supervisor=<MLLM> for another encoder; or turn both off (method.use_grpo=false "
                "method.use_kl=false)."
            )
        sup = load_supervisor(name, device)  # a checkpoint is read straight onto the device (bf16 on a GPU)
        if next(sup.model.parameters()).device != device:
            sup.to(device)
        if self.cfg.gradient_checkpointing and not sup.model.model.language_model.is_activation_checkpointing:
            sup.model.model.language_model.activation_checkpointing_enable({"use_reentrant": False})
        return sup

    def _prefix(self, sup: Any, feats: Any, device: torch.device) -> Any:
        n = int(feats.tokens.shape[1])
        key = (sup.name, n, str(device))
        if key not in self._prefixes:
            grid = feats.grid_thw[:1].repeat(2, 1) if feats.grid_thw is not None else None
            self._prefixes[key] = build_prefix(sup, self.prompt, n, grid, device)
        return self._prefixes[key]

    def _generator(self, device: torch.device) -> torch.Generator:
        if str(device) not in self._gen:
            self._gen[str(device)] = torch.Generator(device=device).manual_seed(self._torch_seed)
        return self._gen[str(device)]

    # ------------------------------------------------------------------------------------------- training
    def _rollout_batch(self, sup: Any, feats: Any, batch: int, pairs: list, stats: dict) -> list[PairGroup]:
        """Phase B for a micro-batch's candidate pairs: G answers each, all P × G decoded together (no graph, each
        pair's prefix computed once and shared), and their rewards. A group's payload is what Phase C needs."""
        cfg = self.cfg
        order = [k for i, j, _ in pairs for k in (i, j)]
        with torch.no_grad():
            vision = self._to_llm(feats.select(order))
        device = vision.tokens.device
        prefix = self._prefix(sup, feats, device)
        if cfg.rollout_constraint == "json_skeleton" and self._constraint is None:
            self._constraint = SkeletonConstraint(
                sup.tokenizer, self.task.card, cfg.generic_prompt, sup.eos_token_ids[0]
            )
        at_once = max(int(cfg.rollout_pairs_at_once) or len(pairs), 1)
        parts = []
        for first in range(0, len(pairs), at_once):  # all of them at once by default
            chunk = vision.select(torch.arange(2 * first, 2 * min(first + at_once, len(pairs))))
            ro = sample_rollouts(
                sup, prefix, chunk, cfg.group_size, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                self._constraint if cfg.rollout_constraint == "json_skeleton" else None, self._generator(device),
            )  # fmt: skip
            stats["gen_seconds"] += ro.seconds
            parts += ro.split(cfg.group_size)
        groups = []
        for (i, j, same), ro in zip(pairs, parts, strict=True):
            lengths = ro.mask.sum(1).tolist()
            tokens = ro.tokens.tolist()
            rewards = []
            for row in range(cfg.group_size):
                text = sup.tokenizer.decode(tokens[row][: lengths[row]], skip_special_tokens=True)
                reward, failure = verdict_reward(text, self.fields["verdict_key"], same, ro.truncated[row])
                if cfg.reward == "descriptions":  # the rule judge: what the two descriptions imply, by code
                    implied = described_verdict(answer_object(text), self.fields["item"], self._attributes)
                    reward = float(implied is not None and implied == same)
                rewards.append(reward)
                stats["parse_failures"] += failure is not None
            if cfg.reward == "descriptions":
                ro = self._descriptions_only(sup, ro)
            stats["rollouts"] += cfg.group_size
            stats["reward_sum"] += sum(rewards)
            stats["gen_tokens"] += sum(lengths)
            payload = {"batch": batch, "order": [i, j], "rollouts": ro, "prefix": prefix}
            groups.append(PairGroup(torch.tensor(rewards), same, payload))
        return groups

    @property
    def _attributes(self) -> list[str]:
        return [str(a) for a in self.task.card["attributes"]]

    def _descriptions_only(self, sup: Any, ro: Any) -> Any:
        """The rule judge's policy mask: each answer's tokens up to the end of its two descriptions (the text before
        ``"differences"``); the comparison and the verdict, which the reward does not read, are masked out of GRPO.
        ``ro.mask`` stays what was generated (for the replay); ``policy_mask`` is what GRPO sums over."""
        from dataclasses import replace

        policy = ro.mask.clone()
        for row in range(ro.tokens.shape[0]):
            n = int(ro.mask[row].sum())
            text, offsets = token_offsets(sup.tokenizer, ro.tokens[row, :n].tolist())
            end = text.find('"differences"')
            if end >= 0:
                cut = next((k for k, (a, _) in enumerate(offsets) if a >= end), n)
                policy[row, cut:] = False
        return replace(ro, policy_mask=policy)

    def _teacher_rows(self, sup: Any, group: PairGroup, stats: dict) -> dict[int, Any]:
        """The correct answers' attribute-value token spans (A_a, A_b) that the KL term reads (Eq. 6)."""
        ro, rows = group.payload["rollouts"], {}
        lengths = ro.mask.sum(1).tolist()
        for row in (group.rewards > 0).nonzero().flatten().tolist():
            text, offsets = token_offsets(sup.tokenizer, ro.tokens[row, : lengths[row]].tolist())
            spans = attribute_token_spans(text, offsets, self.fields["item"], self.cfg.kl_include_keys)
            stats["kl_missing_spans"] += sum(not s for s in spans)
            rows[row] = spans
        return rows

    def _policy_terms(self, sup: Any, buffer: DynamicSamplingBuffer, batches: list, encoder: Any, stats: dict,
                      tracker: TermGradTracker | None) -> tuple[float, float]:  # fmt: skip
        """Phase C, back-propagated in parts: the tower is recomputed for the buffered pairs' images only (≤ 2K), each
        pair is replayed through the frozen LM and back-propagated into those images' tokens at once (its replay graph
        freed), then the tokens' accumulated gradient goes through the tower in one backward (GRPO, Eq. 5); the KL
        term (Eq. 7) over the correct rollouts trains the pooler. Returns the two losses' values."""
        cfg = self.cfg
        if not buffer.groups:
            return 0.0, 0.0
        layer = teacher_layer_index(sup, cfg.teacher_layer, tiny=sup.name.startswith("tiny-")) if cfg.use_kl else None
        total_tokens = sum(int(_policy_mask(g.payload["rollouts"]).sum()) for g in buffer.groups)
        if cfg.advantages == "shuffled":  # the control: the buffer's advantages permuted across pairs and rollouts
            values = torch.cat([g.advantages for g in buffer.groups])
            values = values[torch.from_numpy(self._rng.permutation(len(values)))]  # the run's stream: resumable
            for k, group in enumerate(buffer.groups):
                group.advantages = values[k * cfg.group_size : (k + 1) * cfg.group_size]
        teachers = [self._teacher_rows(sup, g, stats) if cfg.use_kl else {} for g in buffer.groups]
        images = torch.stack([batches[g.payload["batch"]][0][k] for g in buffer.groups for k in g.payload["order"]])
        grpo = cfg.use_grpo and torch.is_grad_enabled()
        with torch.set_grad_enabled(grpo):
            feats = self._features(encoder, images)  # the tower again, on the contributing pairs' images only
        boundary = feats.detach()
        if grpo:  # the replays' gradients stop at the tokens and accumulate there (see Method.backward_through)
            for t in (boundary.tokens, *boundary.deepstack):
                t.requires_grad_(True)
        lm = sup.model.model.language_model
        loss_grpo, kl_terms = 0.0, []
        for k, (group, rows) in enumerate(zip(buffer.groups, teachers, strict=True)):
            ro, prefix = group.payload["rollouts"], group.payload["prefix"]
            pair = boundary.select([2 * k, 2 * k + 1])
            lm.train(cfg.gradient_checkpointing)  # checkpointing runs in train mode only; the LM has no dropout
            try:
                with torch.set_grad_enabled(grpo):
                    logprobs, maps = replay(sup, prefix, self._to_llm(pair), ro, layer, rows, cfg.replay_chunk)
            finally:
                lm.eval()
            # on-policy check: |log ρ| between the replay and the decoding-time log-probs (0 up to numerics)
            drift = (logprobs.detach() - ro.logprobs.to(logprobs.device))[ro.mask].abs()
            stats["log_ratio_max"] = max(stats["log_ratio_max"], float(drift.max()) if drift.numel() else 0.0)
            stats["log_ratio_sum"] += float(drift.sum())
            stats["log_ratio_tokens"] += drift.numel()
            if cfg.use_grpo:
                part = grpo_loss(logprobs, group.advantages.to(logprobs.device), _policy_mask(ro), total_tokens)
                if grpo:
                    self.backward_part(cfg.lambda_grpo * part)  # this pair's replay graph is freed here
                loss_grpo += float(part.detach())
            if maps:
                beta = self.pooler.attention(pair.tokens.detach())  # KL trains the pooler only (X detached)
                for alphas in maps.values():
                    terms = [
                        F.kl_div(beta[i].clamp_min(1e-12).log(), alpha.to(beta.dtype), reduction="sum")
                        for i, alpha in enumerate(alphas)
                        if alpha is not None
                    ]
                    if terms:
                        kl_terms.append(torch.stack(terms).sum())  # Eq. 7: KL_a + KL_b
        if grpo:  # the tokens' accumulated gradient through the tower, in one backward
            self.backward_through([feats.tokens, *feats.deepstack], [boundary.tokens, *boundary.deepstack])
        if tracker is not None:
            tracker.mark("grpo")
        loss_kl = torch.stack(kl_terms).mean() if kl_terms else None  # §7 item 11 (ours): over correct rollouts
        stats["kl_rollouts"] += len(kl_terms)
        if loss_kl is not None and torch.is_grad_enabled():
            self.backward_part(cfg.lambda_kl * loss_kl)
        if tracker is not None:
            tracker.mark("kl")
        return loss_grpo, float(loss_kl.detach()) if loss_kl is not None else 0.0

    def _draw(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.next_batch()
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, encoder: Any) -> dict[str, Any]:
        """Algorithm 1, back-propagated in parts: each consumed micro-batch's DML loss as soon as it is computed (its
        tower graph freed), rollouts until K contributing pairs, then GRPO pair by pair and KL (``_policy_terms``).
        The gradients equal one backward of the whole Eq. 8 loss; the returned ``loss`` is its value, detached."""
        cfg = self.cfg
        stats: dict[str, float] = defaultdict(float)
        sup = self._supervisor(encoder, images.device) if self.uses_llm else None
        buffer = DynamicSamplingBuffer(cfg.num_pairs, cfg.adv_eps, cfg.adv_unbiased)
        measure = cfg.grad_norm_every > 0 and self._totals.steps % cfg.grad_norm_every == 0 and torch.is_grad_enabled()
        scale = self.backprop.grad_accum if self.backprop is not None else 1
        tracker = TermGradTracker(self._balance_groups(encoder), scale) if measure else None
        batches, loss_dml = [(images, labels)], 0.0
        t0 = time.perf_counter()
        t_metric = t_rollout = 0.0
        while True:
            imgs, labs = batches[-1]
            ta = time.perf_counter()
            with_dml = len(batches) == 1 or cfg.refill_dml
            with torch.set_grad_enabled(with_dml and torch.is_grad_enabled()):
                feats = self._features(encoder, imgs)
            if with_dml:
                dml = self.metric(self.pooler(feats.tokens)[0], labs)
                self.backward_part(cfg.lambda_dml * dml)  # Phase A: this micro-batch's tower graph is freed here
                loss_dml += float(dml.detach())
            feats = feats.detach()
            t_metric += time.perf_counter() - ta
            if not self.uses_llm:
                break
            tb = time.perf_counter()
            pairs = balanced_pairs(labs.cpu().numpy(), cfg.pairs_per_batch, self._rng)
            groups = self._rollout_batch(sup, feats, len(batches) - 1, pairs, stats)
            stats["pairs_rolled_out"] += len(groups)
            for group in groups:
                buffer.offer(group)
                stats["same_pairs"] += group.same_class
                if buffer.full:
                    break
            t_rollout += time.perf_counter() - tb
            if buffer.full or self.next_batch is None or len(batches) > cfg.max_refill_batches:
                break
            batches.append(self._draw(images.device))
        if tracker is not None:
            tracker.mark("dml")
        tc = time.perf_counter()
        loss_grpo, loss_kl = (
            self._policy_terms(sup, buffer, batches, encoder, stats, tracker) if self.uses_llm else (0.0, 0.0)
        )
        t_replay = time.perf_counter() - tc
        if tracker is not None:
            self._grad_norms.add(tracker.norms())
        total = cfg.lambda_dml * loss_dml + cfg.lambda_grpo * loss_grpo + cfg.lambda_kl * loss_kl
        out = {
            "loss": torch.tensor(total, device=images.device),
            "loss_dml": loss_dml,
            "loss_grpo": loss_grpo,
            "loss_kl": loss_kl,
            "micro_batches": len(batches),
            "time_metric_s": t_metric,
            "time_rollout_s": t_rollout,
            "time_replay_s": t_replay,
            "time_step_s": time.perf_counter() - t0,
        }
        if self.uses_llm:
            rollouts = max(stats["rollouts"], 1)
            out |= {
                "reward_mean": stats["reward_sum"] / rollouts,
                "pairs_offered": buffer.offered,
                "pairs_rolled_out": stats["pairs_rolled_out"],  # decoded and judged (the batch decodes all P)
                "pairs_contributing": len(buffer.groups),
                "contributing_fraction": buffer.contributing_fraction,
                "refills": len(batches) - 1,
                "parse_failure_rate": stats["parse_failures"] / rollouts,
                "gen_tokens_per_s": stats["gen_tokens"] / max(stats["gen_seconds"], 1e-9),
                "kl_rollouts": stats["kl_rollouts"],
                "log_ratio_max": stats["log_ratio_max"],
            }
        self._totals.add(out, stats, buffer)
        return out

    def _balance_groups(self, encoder: Any) -> dict[str, list[nn.Parameter]]:
        """The parameter groups whose per-term gradient norms are logged (tower, pooler parts, proxies, projector)."""
        groups = {
            "tower": encoder.backbone_parameters(),
            "pooler_query": [self.pooler.query],
            "pooler_key": [self.pooler.key.weight],
            "pooler_out": [self.pooler.out.weight],
            "proxies": [p for p in self.metric.parameters() if p.requires_grad],
        }
        return groups | ({"projector": list(self.projector.parameters())} if self.projector is not None else {})

    # ------------------------------------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        """The pair-sampling and rollout random streams, so a resumed run draws what an uninterrupted one would."""
        return {"rng": self._rng.bit_generator.state, "gen": {k: g.get_state() for k, g in self._gen.items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        for key, value in state.get("gen", {}).items():
            self._generator(torch.device(key)).set_state(value.cpu())

    # ------------------------------------------------------------------------------------------- diagnostics
    def diagnostics(self) -> dict[str, float]:
        """Run-level means (reward, contributing fraction, refills, parse failures, tokens/s, each loss), the
        sampling streams' seed, and the loss balance: ``grad_norm_<term>_<group>`` medians (see the module doc)."""
        return self._totals.means() | {"stream_seed": float(self.stream_seed)} | self._grad_norms.summary()
