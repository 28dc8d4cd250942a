"""Stage ``constyle_pretrain``: MoCo-style pre-training of the ConStyle v2 prompter.

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2406.18242
(2024); official code ``archs/ConStyle_v2_arch.py`` (the MoCo wrapper ``ConStyle_v2``) and
``models/constyle_v2_model.py`` (the losses). The query encoder is the stage's ``net`` (a
:class:`~restoration.archs.constyle.ConStyleEncoder`) and sees the degraded image (``batch["lq"]``); a
momentum copy of it, the key encoder (official ``encoder_k``, m = 0.999, never in the optimizer), sees the
clean image (``batch["key"]``, a crop the datamodule draws independently of the query's, as the official
recipe, with ``datamodule.key_view=true``; else ``batch["gt"]``, the clean image of the query's own crop); a
queue of K latents (official 65,760 × 128) gives the negatives. Per step,
in the official order: query forward, momentum update of the key encoder, key forward, logits against the
queue as it was before this step, then the queue write. The losses, each weighted:

- ``infonce``: cross-entropy of ``[q1·k1, q1·queue] / T`` with the positive at index 0 (T = 0.07);
- ``content``: MSE between the query and key latents q1, k1;
- ``style``: Gram matrices ``G = z zᵀ / (B·D)`` of the batch's q0 against the queue slice after the write
  pointer, and of q1 against the slice being overwritten; ``style_form`` picks the form
  (:func:`style_loss`): ``official`` is −MSE(G, G'), unbounded below; ``bounded`` (the default) is
  1 / (1 + MSE(G, G')), in (0, 1]. Where the official loss is used (MSE of order 1e-5 at batch 32) the two
  differ by the constant 1 and their gradients by a factor (1 + MSE)⁻² ≈ 1, so the default keeps the
  official objective while removing its one degenerate direction: scaling q0/q1 up (BatchNorm's γ) lowers
  the official loss without limit;
- ``pretext``: cross-entropy of the query's classifier on the class labels (``pretext: class``, the
  ``folder`` datamodule's class sub-folders, ImageNet layout) or on the degradation type ids
  (``pretext: degradation``, for data without classes), for the first ``class_steps`` steps (official 50k);
- ``distillation``: KL(softmax(teacher) ‖ softmax(query logits)), batch mean, no temperature, for the first
  ``kd_steps`` steps (official: all); the teacher is the key encoder on the clean image or, when
  ``teacher.name`` is set, a frozen timm classifier loaded from a local file (:class:`TimmTeacher`).

Two modes: ``faithful`` reproduces the official wrapper (raw latents, a ``randn`` queue that stores the
query latents q1, no shuffle-BN); ``standard`` is MoCo v2 (L2-normalised q0, q1 and k1, a normalised random
queue that stores the keys). Neither shuffles BatchNorm across GPUs; under DDP the queue receives every
rank's latents, so it stays identical on all ranks (K must then be divisible by batch × ranks).

The key encoder runs in train mode as in the official code and MoCo (BatchNorm on batch statistics,
classifier dropout on); the momentum update moves its parameters only, as in both, and its BatchNorm
running statistics come from its own forward passes on clean images (used only by validation).

Validation (PSNR means nothing for a prompter) scores the EMA query encoder on whole images:
``val/pretext_top1`` (classifier top-1 on the labels or types, the official ImageNet metric),
``val/infonce_top1`` (the positive key beats every queue entry), ``val/infonce`` (the InfoNCE loss) and
``val/cosine`` (mean cosine of q1 of the degraded and of the clean image); the same under ``test/``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.aggregation import MeanMetric

from restoration.archs import load_pretrained
from restoration.archs.constyle import ConStyleEncoder
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.stages.chassis import HostCopies, TrainingChassis

__all__ = [
    "ConStylePretrainStage",
    "EmbeddingQueue",
    "TimmTeacher",
    "content_loss",
    "distillation_loss",
    "gram_matrix",
    "info_nce_logits",
    "info_nce_loss",
    "momentum_update",
    "style_loss",
]

LOSS_NAMES = ("infonce", "content", "style", "pretext", "distillation")
_MODES = ("faithful", "standard")
_STYLE_FORMS = ("official", "bounded")
_PRETEXTS = ("class", "degradation")
_SCORES = ("pretext_top1", "infonce_top1", "infonce", "cosine")


# ---- losses ------------------------------------------------------------------------------------


def info_nce_logits(query: Tensor, positive: Tensor, queue: Tensor, *, temperature: float) -> Tensor:
    """``[q·k, q·queue] / T``: N×(1 + K) logits, the positive first (N×D latents, a D×K queue)."""
    positive_logits = (query * positive).sum(dim=1, keepdim=True)
    return torch.cat([positive_logits, query @ queue], dim=1) / temperature


def info_nce_loss(logits: Tensor) -> Tensor:
    """Cross-entropy of :func:`info_nce_logits` with the positive (index 0) as the target."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def content_loss(query: Tensor, key: Tensor) -> Tensor:
    """Mean squared error between the query and key latents (official ``ContentLoss``)."""
    return (query - key).square().mean()


def gram_matrix(latents: Tensor) -> Tensor:
    """The N×N Gram matrix of N×D latents divided by N·D, as the official style loss normalises it."""
    return latents @ latents.T / latents.numel()


def style_loss(query: Tensor, negatives: Tensor, *, form: str = "bounded") -> Tensor:
    """Style term between the Grams of a batch of latents and of as many negatives from the queue.

    Args:
        query: N×D latents of the batch (q0 or q1).
        negatives: N×D latents from the queue.
        form: ``"official"``: −MSE of the Grams (official ``StyleLoss``), unbounded below;
            ``"bounded"``: 1 / (1 + MSE) in (0, 1], equal to the official form plus 1 to first order in
            the MSE, with gradients that vanish instead of growing as the Grams move apart.
    """
    if form not in _STYLE_FORMS:
        raise ValueError(f"style_loss form={form!r}; expected one of {list(_STYLE_FORMS)}")
    if query.shape != negatives.shape:
        raise ValueError(
            f"style_loss: query {tuple(query.shape)} and negatives {tuple(negatives.shape)} differ"
        )
    if form == "official":
        return -(gram_matrix(query) - gram_matrix(negatives)).square().mean()
    # in float64 the Gram of finite float32 latents cannot overflow (|entry| <= D·(3.4e38)² << 1.8e308),
    # so the bounded form stays finite even for latents that blew up
    distance = (gram_matrix(query.double()) - gram_matrix(negatives.double())).square().mean()
    return (1.0 / (1.0 + distance)).to(query.dtype)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(softmax(teacher) ‖ softmax(student)), summed over classes, mean over the batch; no temperature."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1), reduction="batchmean"
    )


@torch.no_grad()
def momentum_update(key_encoder: nn.Module, query_encoder: nn.Module, *, momentum: float) -> None:
    """``key ← m·key + (1 − m)·query`` for every parameter (buffers untouched, as MoCo and ConStyle)."""
    keys = list(key_encoder.parameters())
    queries = [param.detach() for param in query_encoder.parameters()]
    torch._foreach_mul_(keys, momentum)
    torch._foreach_add_(keys, queries, alpha=1.0 - momentum)


# ---- the queue and the teacher -----------------------------------------------------------------


class EmbeddingQueue(HostCopies):
    """A ring buffer of K latents in the official layout: ``queue`` D×K and ``queue_ptr``, both checkpointed.

    Args:
        dim: latent width D (128).
        size: K, the number of negatives (official 65,760 = 2,055 × 32); a multiple of the batch size.
        normalise: start from unit columns (MoCo v2) rather than the official raw ``randn``.
    """

    def __init__(self, *, dim: int, size: int, normalise: bool = False) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ConfigError(f"queue dim={dim}, size={size}; expected positive sizes")
        queue = torch.randn(dim, size)
        self.register_buffer("queue", F.normalize(queue, dim=0) if normalise else queue)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.set_host_value("queue_ptr", 0)  # a step never waits for the device to read the pointer

    @property
    def size(self) -> int:
        return self.queue.shape[1]

    @torch.no_grad()
    def push(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Write N×D ``latents`` at the pointer and advance it by N (mod K).

        Returns the N×D slices read before the write: the one after the written slice (wrapping round)
        and the one overwritten, the negatives of the official style loss for q0 and q1.
        """
        count = latents.shape[0]
        if self.size % count:
            raise ConfigError(
                f"stage.queue_size={self.size} is not a multiple of the {count} latents written per step "
                "(datamodule.batch_size × devices); choose e.g. a queue size of "
                f"{max(1, self.size // count) * count}"
            )
        start = self.host_value("queue_ptr")
        following = (start + count) % self.size
        overwritten = self.queue[:, start : start + count].T.clone()
        after = self.queue[:, following : following + count].T.clone()
        self.queue[:, start : start + count] = latents.detach().T.to(self.queue.dtype)
        self.queue_ptr.fill_(following)
        self.set_host_value("queue_ptr", following)
        return after, overwritten


class TimmTeacher(Guide):
    """A frozen timm classifier as the distillation teacher, built without downloading anything.

    Args:
        name: timm model name, e.g. ``resnet50``.
        checkpoint: local weights file (any container :func:`~restoration.archs.load_pretrained` reads),
            loaded strictly.
        num_classes: classes of its head; must match the prompter's classifier.
    """

    def __init__(self, *, name: str, checkpoint: str | None, num_classes: int) -> None:
        super().__init__()
        import timm

        if checkpoint is None or not Path(checkpoint).is_file():
            raise ConfigError(
                f"stage.teacher.checkpoint={checkpoint}: no such file; the timm teacher {name} is built "
                "without downloading, so give its weights as a local file"
            )
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        except RuntimeError as error:  # timm's "Unknown model"
            raise ConfigError(f"stage.teacher.name={name}: {error}") from error
        load_pretrained(self.model, checkpoint)
        config = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        self.dim = num_classes
        self.freeze()

    def preprocess(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def encode(self, images: Tensor) -> Tensor:
        return self.model(images)


# ---- the stage ---------------------------------------------------------------------------------


class ConStylePretrainStage(TrainingChassis):
    """Pre-train a ConStyle prompter with a momentum key encoder, a latent queue and five weighted losses.

    Args:
        net: the query encoder, a :class:`~restoration.archs.constyle.ConStyleEncoder`; its EMA copy,
            BatchNorm statistics included, is what validation scores and the frozen prompter guide loads.
        optimizer: ``_partial_`` optimizer factory (AdamW 3e-4 in the paper).
        scheduler: ``_partial_`` per-step LR scheduler factory, or ``None``.
        mode: ``"faithful"`` (official wrapper) or ``"standard"`` (MoCo v2), see the module docstring.
        queue_size: K, a multiple of the batch size (× devices).
        momentum: m of the key encoder's update (0.999).
        temperature: T of the InfoNCE logits (0.07).
        loss_weights: weight per loss (``infonce``, ``content``, ``style``, ``pretext``, ``distillation``);
            missing names keep 1 (all 1 officially), 0 switches a term off.
        style_form: ``"bounded"`` or ``"official"``, see :func:`style_loss`.
        pretext: labels of the pretext classification: ``"class"`` (class sub-folders) or ``"degradation"``
            (degradation type ids).
        class_steps: the pretext loss is active for the first this many steps (official ``class_iter`` 50k).
        kd_steps: the distillation loss is active for the first this many steps; ``None``: always.
        teacher: ``{"name": timm model or None, "checkpoint": local file}``; with a name, the distillation
            teacher is that frozen classifier on the clean image instead of the key encoder.
        ema_decay: decay of the EMA copy of ``net`` (0.999).
        ema_warmup: ramp the EMA decay up over the first updates (:class:`~restoration.stages.chassis.EMA`).
    """

    # the timm teacher is rebuilt from its own file, not stored in checkpoints
    frozen_towers = ("teacher",)
    # identical on every rank (it receives every rank's latents): not broadcast by DDP at every step
    bookkeeping = ("ema", "queue")

    def __init__(
        self,
        *,
        net: ConStyleEncoder,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        mode: str = "faithful",
        queue_size: int = 65760,
        momentum: float = 0.999,
        temperature: float = 0.07,
        loss_weights: Mapping[str, float] | None = None,
        style_form: str = "bounded",
        pretext: str = "class",
        class_steps: int = 50000,
        kd_steps: int | None = None,
        teacher: Mapping[str, Any] | None = None,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
    ) -> None:
        for key, value, allowed in (
            ("mode", mode, _MODES),
            ("style_form", style_form, _STYLE_FORMS),
            ("pretext", pretext, _PRETEXTS),
        ):
            if value not in allowed:
                raise ConfigError(f"stage.{key}={value!r}; expected one of {list(allowed)}")
        unknown = sorted(set(loss_weights or {}) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(
                f"stage.loss_weights has unknown term(s) {unknown}; expected {list(LOSS_NAMES)}"
            )
        if not 0.0 <= momentum < 1.0 or temperature <= 0.0:
            raise ConfigError(
                f"stage.momentum={momentum}, stage.temperature={temperature}; expected 0 <= m < 1 and T > 0"
            )
        self.loss_weights = {name: 1.0 for name in LOSS_NAMES} | {
            name: float(weight) for name, weight in (loss_weights or {}).items()
        }
        needs_classifier = [name for name in ("pretext", "distillation") if self.loss_weights[name]]
        if needs_classifier and net.num_classes is None:
            raise ConfigError(
                f"stage.loss_weights {needs_classifier} need the prompter's classifier but the backbone has "
                "num_classes=null; set backbone.num_classes or those weights to 0"
            )
        super().__init__(
            net=net, optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, ema_warmup=ema_warmup
        )
        self.mode = mode
        self.momentum = momentum
        self.temperature = temperature
        self.style_form = style_form
        self.pretext = pretext
        self.class_steps = class_steps
        self.kd_steps = kd_steps
        # official encoder_k: starts as a copy of the query encoder and only moves by the momentum update
        self.key_encoder = copy.deepcopy(net).requires_grad_(False)
        self.queue = EmbeddingQueue(dim=net.latent_dim, size=queue_size, normalise=mode == "standard")
        teacher_name = (teacher or {}).get("name")
        if teacher_name and net.num_classes is None:
            raise ConfigError("stage.teacher needs the prompter's classifier; set backbone.num_classes")
        self.teacher = (
            TimmTeacher(name=teacher_name, checkpoint=teacher.get("checkpoint"), num_classes=net.num_classes)
            if teacher_name
            else None
        )
        # the loss terms of the latest training step (which windows were open)
        self.last_terms: tuple[str, ...] = ()
        self.scores = nn.ModuleDict(
            {f"{split}_{name}": MeanMetric() for split in ("val", "test") for name in _SCORES}
        )

    # ---- training ---------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self._check_pretext_labels(datamodule)
        batch_size = getattr(datamodule, "batch_size", None)
        if batch_size is not None:
            per_step = batch_size * self.trainer.world_size
            if batch_size < 2 or self.queue.size % per_step:
                raise ConfigError(
                    f"constyle_pretrain: datamodule.batch_size={batch_size} on {self.trainer.world_size} "
                    f"device(s) with stage.queue_size={self.queue.size}; the BatchNorm heads need batches of "
                    "at least 2 and the queue size must be a multiple of batch_size × devices"
                )

    def embed(self, latents: Tensor) -> Tensor:
        """The latents the losses compare: raw (faithful) or L2-normalised (standard)."""
        return F.normalize(latents, dim=1) if self.mode == "standard" else latents

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        degraded, clean = batch["lq"], batch.get("key", batch["gt"])
        if degraded.shape[0] < 2:
            raise ConfigError("constyle_pretrain needs datamodule.batch_size >= 2 (BatchNorm1d heads)")
        query = self.net(degraded)
        with torch.no_grad():  # official order: momentum update, then the key forward
            momentum_update(self.key_encoder, self.net, momentum=self.momentum)
            key = self.key_encoder(clean)
        q0, q1, k1 = self.embed(query.q0), self.embed(query.q1), self.embed(key.q1)
        # a copy: the queue is written below, and backward still needs the values q1 was multiplied with
        logits = info_nce_logits(q1, k1, self.queue.queue.clone(), temperature=self.temperature)
        after, overwritten = self._push(q1 if self.mode == "faithful" else k1)

        weights, step, terms = self.loss_weights, self.global_step, {}
        if weights["infonce"]:
            terms["infonce"] = info_nce_loss(logits)
        if weights["content"]:
            terms["content"] = content_loss(q1, k1)
        if weights["style"]:
            terms["style"] = style_loss(q0, after, form=self.style_form) + style_loss(
                q1, overwritten, form=self.style_form
            )
        if weights["pretext"] and step < self.class_steps:
            labels = self.pretext_labels(batch)
            terms["pretext"] = F.cross_entropy(query.logits, labels)
            self.log("train/pretext_top1", (query.logits.argmax(1) == labels).float().mean())
        if weights["distillation"] and (self.kd_steps is None or step < self.kd_steps):
            teacher_logits = self.teacher(clean) if self.teacher is not None else key.logits
            terms["distillation"] = distillation_loss(query.logits, teacher_logits)
        loss = sum((weights[name] * value for name, value in terms.items()), start=degraded.new_zeros(()))
        self.last_terms = tuple(terms)
        self.log_dict({f"train/{name}": value for name, value in terms.items()})
        self.log("train/infonce_top1", (logits.argmax(1) == 0).float().mean())
        self.log("train/loss", loss, prog_bar=True)
        return self.checked_loss(loss)

    def _push(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Enqueue every rank's latents; return this rank's share of the two style slices."""
        gathered = self.all_gather(latents.detach())
        if gathered.ndim == 3:  # (ranks, batch, dim) under DDP
            gathered = gathered.flatten(0, 1)
        after, overwritten = self.queue.push(gathered)
        count = latents.shape[0]
        own = (
            slice(self.global_rank * count, (self.global_rank + 1) * count)
            if len(gathered) > count
            else slice(None)
        )
        return after[own], overwritten[own]

    def pretext_labels(self, batch: dict[str, Any]) -> Tensor:
        """The pretext targets: class labels or degradation type ids (checked once, in ``on_fit_start``)."""
        labels = batch["label"] if self.pretext == "class" else batch["type"]
        return torch.as_tensor(labels, device=batch["lq"].device).long()

    def _check_pretext_labels(self, datamodule: Any) -> None:
        """Stop before training when the data's labels or types do not fit the pretext classifier."""
        if datamodule is None or self.net.num_classes is None:
            return
        if self.pretext == "degradation":
            names = tuple(getattr(datamodule, "degradation_names", ()))
            if len(names) > self.net.num_classes:
                raise ConfigError(
                    f"stage.pretext=degradation: {len(names)} degradation types do not fit the prompter's "
                    f"{self.net.num_classes}-way classifier; raise backbone.num_classes"
                )
            return
        source = getattr(datamodule, "sources", {}).get("train")
        if source is None or not source.scanned:
            return
        lowest, highest = source.label_range()
        if lowest < 0:
            raise ConfigError(
                "stage.pretext=class but the data has no class labels (class sub-folders, ImageNet layout); "
                "use datamodule=folder on such a tree or stage.pretext=degradation"
            )
        if highest >= self.net.num_classes:
            raise ConfigError(
                f"stage.pretext=class: label {highest} does not fit the prompter's "
                f"{self.net.num_classes}-way classifier; raise backbone.num_classes"
            )

    # ---- validation and test ----------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        raise ConfigError(
            "constyle_pretrain trains a prompter, which restores no images; predict=... is unavailable"
        )

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def _score(self, batch: dict[str, Any], split: str) -> None:
        degraded, clean = batch["lq"], batch["gt"]
        query, clean_query, key = self.eval_net(degraded), self.eval_net(clean), self.key_encoder(clean)
        logits = info_nce_logits(
            self.embed(query.q1), self.embed(key.q1), self.queue.queue, temperature=self.temperature
        )
        self.scores[f"{split}_infonce_top1"].update((logits.argmax(1) == 0).float())
        self.scores[f"{split}_infonce"].update(
            F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long), reduction="none")
        )
        self.scores[f"{split}_cosine"].update(F.cosine_similarity(query.q1, clean_query.q1, dim=1))
        if query.logits is not None:
            labels = self.pretext_labels(batch)
            self.scores[f"{split}_pretext_top1"].update((query.logits.argmax(1) == labels).float())

    def _log_scores(self, split: str) -> None:
        values = {}
        for name in _SCORES:
            metric = self.scores[f"{split}_{name}"]
            if metric.update_count:
                values[f"{split}/{name}"] = metric.compute()
            metric.reset()
        self.log_evaluation(values)
