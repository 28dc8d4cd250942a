"""A restoration model pre-trained by this framework as a guide: PTG-RM's "-r" prior, with no download.

Xu et al., "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024, also guide their
refinement module with "a restoration model pre-trained on SDSD" (variant -r); which model and which features
are not released (spec ptgrm §1.4). Here the prior is a checkpoint of one of our pre-training runs (or its
official release):

- ConStyle v2's prompter (Fan et al., arXiv 2406.18242, 2024): its 128-d latent q1, through
  :class:`~restoration.guides.constyle.ConStylePrompter`;
- IPT (Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021): :class:`IPTGuide`, the tokens of
  its transformer for one task, mean-pooled over the 256 token positions (576-d for the released size).

:func:`prior_guide` picks the right one from the checkpoint ("auto") and is the ``_target_`` of
``conf/guide/prior.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from restoration.archs import load_pretrained, read_state_dict
from restoration.archs.constyle import ConStyleEncoder
from restoration.archs.ipt import IPT, IPT_TASKS, TASK_SCALES, ipt_tasks_from_state_dict
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.guides.checkpoint import checkpoint_config, trained_network
from restoration.guides.constyle import OFFICIAL_PREFIXES, ConStylePrompter

__all__ = ["IPTGuide", "prior_guide"]

log = logging.getLogger(__name__)

KINDS = ("auto", "constyle", "ipt")
TOKENS = ("encoder", "body")


class _EncoderDone(Exception):
    """Raised by the hook on IPT's last encoder layer: the decoder and the tail are not needed."""


class IPTGuide(Guide):
    """A frozen IPT: mean-pooled transformer tokens of the degraded image, N×3×H×W in [0, 1] → N×``dim``.

    The image is resized to IPT's input size (48×48, the body's fixed token grid) and goes through ``task``'s
    head and the shared transformer. ``tokens="encoder"`` pools the encoder output, which depends on the task
    only through its head; ``"body"`` pools the body's output tokens (after the task-conditioned decoder), the
    ones IPT's patch-contrastive pre-training loss acts on.

    Args:
        network: the IPT, with its trained weights.
        task: which of ``network.tasks`` to run (null: the first).
        tokens: ``"encoder"`` or ``"body"``.
        name: what the weights are (for the cache identity and messages), e.g. the checkpoint path.
    """

    def __init__(
        self, *, network: IPT, task: str | None = None, tokens: str = "encoder", name: str = ""
    ) -> None:
        super().__init__()
        if tokens not in TOKENS:
            raise ConfigError(f"guide.tokens={tokens!r}; expected one of {list(TOKENS)}")
        if task is None:
            task = network.tasks[0]
            if len(network.tasks) > 1:
                log.warning(
                    "IPT guide %s: running the task %s (its first); set guide.task to choose", name, task
                )
        if task not in network.tasks:
            raise ConfigError(f"guide.task={task!r}: this IPT has the tasks {list(network.tasks)}")
        self.network = network
        self.task = task
        self.tokens = tokens
        self.input_size = (network.patch_size, network.patch_size)
        self.dim = network.body.dim
        self.identity = f"ipt:{name}:{task}:{tokens}"
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = images.clamp(0.0, 1.0).float()
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bicubic", antialias=True).clamp(
                0.0, 1.0
            )
        return images

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.tokens == "body":
            _, tokens = self.network(images, self.task, return_tokens=True)
            return tokens.mean(dim=1).float()
        found: list[torch.Tensor] = []

        def stop(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            found.append(output)
            raise _EncoderDone

        handle = self.network.body.encoder.layers[-1].register_forward_hook(stop)
        try:
            self.network(images, self.task)
        except _EncoderDone:
            pass
        finally:
            handle.remove()
        return found[0].mean(dim=1).float()


def prior_guide(
    *, checkpoint: str, kind: str = "auto", task: str | None = None, tokens: str = "encoder"
) -> Guide:
    """The guide held in ``checkpoint``: a ConStyle prompter or an IPT.

    Args:
        checkpoint: a ``.ckpt`` of a ``constyle_pretrain`` or ``ipt_pretrain`` / ``ipt_finetune`` run, or an
            official file (``pretrained_ConStyle_v2.pth``, ``IPT_pretrain.pt`` or a fine-tuned IPT ``.pt``).
        kind: ``"auto"`` (from the stored run config, or the weight names of an official file), ``"constyle"``
            or ``"ipt"``.
        task: IPT only: the task whose head runs (null: the first of the checkpoint's tasks; required for an
            official single-task file, whose task it does not record).
        tokens: IPT only: ``"encoder"`` or ``"body"`` tokens, see :class:`IPTGuide`.
    """
    if kind not in KINDS:
        raise ConfigError(f"guide.kind={kind!r}; expected one of {list(KINDS)}")
    if checkpoint is None:
        raise ConfigError(
            "guide.checkpoint is not set: pass a constyle_pretrain or ipt_pretrain checkpoint (.ckpt) "
            "or an official ConStyle / IPT weights file"
        )
    path = Path(checkpoint)
    config = checkpoint_config(path)
    found = _kind_of(path, config) if kind == "auto" else kind
    if found == "constyle":
        if task is not None:
            raise ConfigError(f"guide.task={task!r} is for IPT priors; {path} holds a ConStyle prompter")
        return ConStylePrompter(checkpoint=str(path))
    if config is not None:
        network, _ = trained_network(path, expected=IPT, hint=" (guide.kind=ipt)")
    else:
        network = _official_ipt(path, task)
    return IPTGuide(network=network, task=task, tokens=tokens, name=str(path))


def _kind_of(path: Path, config: dict | None) -> str:
    if config is not None:
        target = str((config.get("backbone") or {}).get("_target_", ""))
        for kind, network in (("constyle", ConStyleEncoder), ("ipt", IPT)):
            if target == f"{network.__module__}.{network.__name__}":
                return kind
        raise ConfigError(
            f"guide.checkpoint={path}: its backbone {target or '(none)'} is not a prior this guide can run; "
            "expected a ConStyle prompter or an IPT checkpoint"
        )
    names = read_state_dict(path).keys()
    if any(name.startswith(OFFICIAL_PREFIXES) for name in names):
        return "constyle"
    if "body.query_embed.weight" in names or any(name.startswith("head.0.") for name in names):
        return "ipt"
    raise ConfigError(
        f"guide.checkpoint={path}: neither a checkpoint of this framework nor an official ConStyle / IPT "
        "weights file; set guide.kind if it is one"
    )


def _official_ipt(path: Path, task: str | None) -> IPT:
    """The IPT of an official release at the paper's sizes: the six-task pre-trained or a fine-tuned model."""
    state = read_state_dict(path)
    count = ipt_tasks_from_state_dict(state)
    if count == len(IPT_TASKS):
        tasks = IPT_TASKS
    elif count == 1 and task in TASK_SCALES:
        tasks = (task,)
    else:
        raise ConfigError(
            f"guide.checkpoint={path}: an official IPT with {count} task(s); for a fine-tuned model set "
            f"guide.task to its task (one of {list(IPT_TASKS)})"
        )
    network = IPT(tasks=tasks)
    load_pretrained(network, path)
    return network
