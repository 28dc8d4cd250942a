"""Stage ``prompted_restore``: a prompt-guided restoration network trained under a frozen ConStyle prompter.

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2406.18242
(2024); official training: ``models/irconstyle_model.py`` with ``train_ConStylev2Model.yml``.

Every step the prompter maps the degraded batch to its latent q1 and the three prompt maps (under
``no_grad``), and the restoration network takes ``net(degraded, q1, prompts)``; the loss is L1 to the
ground truth. The prompter is a :class:`~restoration.guides.constyle.ConStylePrompter`: it lives outside
the optimizer (which sees ``net`` only), outside the EMA (a copy of ``net`` only) and stays in eval mode,
so nothing of it changes during training. ``prompter_mode="official"`` reproduces the one behaviour of the
official "frozen" prompter that shapes what the network learns: its BatchNorm layers normalise each
training batch with that batch's statistics (the official prompter stays in train mode); see
:class:`PromptedRestoreStage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from restoration.archs.constyle import PrompterOutput
from restoration.errors import ConfigError
from restoration.stages.base import RestorationStage

__all__ = ["PromptedRestoreStage"]

_PROMPTER_MODES = ("frozen", "official")
_PROMPT_INPUTS = ("prompter", "zeros")


class PromptedRestoreStage(RestorationStage):
    """Train ``net(degraded, q1, prompts)`` to map ``batch["lq"]`` to ``batch["gt"]``, prompted by ``guide``.

    Args:
        guide: the frozen prompter (``guide=constyle guide.checkpoint=...``): an object with
            ``prompt(images) -> PrompterOutput`` computed without gradients.
        loss: ``(restored, target) -> scalar``; L1 in the official recipe.
        prompter_mode: ``"frozen"``: the prompter in eval mode throughout (BatchNorm running statistics);
            ``"official"``: in training steps its BatchNorm layers use the statistics of the batch, as
            the official code's prompter left in train mode. Its running statistics are still not
            updated (the official ones are, but its EMA network then tests with BatchNorm buffers at
            their initial values, a mismatch not reproduced here), and validation uses them in both modes.
        prompt_input: ``"prompter"`` (the method); ``"zeros"``: the same network fed an all-zero latent and
            all-zero prompt maps, i.e. the same U-Net and parameters without the prompter's information, the
            control that isolates what the prompts add (the prompter is then not run).
        **base: the shared options of :class:`~restoration.stages.base.RestorationStage`
            (network, optimizer, scheduler, EMA, validation).
    """

    def __init__(
        self,
        *,
        guide: nn.Module | None = None,
        loss: nn.Module,
        prompter_mode: str = "frozen",
        prompt_input: str = "prompter",
        **base: Any,
    ) -> None:
        if guide is None or not callable(getattr(guide, "prompt", None)):
            found = "none" if guide is None else type(guide).__name__
            raise ConfigError(
                f"stage prompted_restore needs a prompter guide (found {found}); "
                "set guide=constyle guide.checkpoint=<prompter checkpoint>"
            )
        if prompter_mode not in _PROMPTER_MODES:
            raise ConfigError(f"stage.prompter_mode={prompter_mode!r}; expected one of {_PROMPTER_MODES}")
        if prompt_input not in _PROMPT_INPUTS:
            raise ConfigError(f"stage.prompt_input={prompt_input!r}; expected one of {_PROMPT_INPUTS}")
        super().__init__(**base)
        self.guide = guide.eval().requires_grad_(False)
        self.loss = loss
        self.prompter_mode = prompter_mode
        self.prompt_input = prompt_input

    def prompts(self, degraded: torch.Tensor, *, training: bool = False) -> PrompterOutput:
        """The prompter's q1 and prompt maps for ``degraded`` (batch statistics in official training)."""
        if self.prompt_input == "zeros":
            return self._zero_prompts(degraded)
        if training and self.prompter_mode == "official":
            if degraded.shape[0] < 2:
                raise ConfigError(
                    "stage.prompter_mode=official normalises with batch statistics and needs "
                    "datamodule.batch_size >= 2"
                )
            with _batch_statistics(self.guide):
                return self.guide.prompt(degraded)
        return self.guide.prompt(degraded)

    def _zero_prompts(self, degraded: torch.Tensor) -> PrompterOutput:
        """All-zero q1 and prompt maps of the shapes the network takes (H/2, H/4, H/8)."""
        count, _, height, width = degraded.shape
        prompts = tuple(
            degraded.new_zeros(count, channels, height >> level, width >> level)
            for level, channels in enumerate(self.net.prompt_channels, start=1)
        )
        latent = degraded.new_zeros(count, self.net.latent_dim)
        return PrompterOutput(q0=latent, q1=latent, prompts=prompts, logits=None)

    def run_network(self, net: nn.Module, degraded: torch.Tensor) -> torch.Tensor:
        # Whole images are padded (and tiled) before this, so the prompts match the network's input.
        prompts = self.prompts(degraded)
        return net(degraded, prompts.q1, prompts.prompts)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        degraded = batch["lq"]
        height, width = degraded.shape[-2:]
        if height % self.pad_multiple or width % self.pad_multiple:
            raise ConfigError(
                f"training crops of {height}×{width} are not a multiple of the network's size multiple "
                f"{self.pad_multiple}; set datamodule.crop_size to a multiple of it"
            )
        prompts = self.prompts(degraded, training=True)
        restored = self.net(degraded, prompts.q1, prompts.prompts)
        loss = self.loss(restored, batch["gt"])
        self.log("train/loss", loss, prog_bar=True)
        return self.checked_loss(loss)


@contextmanager
def _batch_statistics(module: nn.Module) -> Iterator[None]:
    """Make the BatchNorm layers of ``module`` use batch statistics, leaving the running ones untouched."""
    norms = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    saved = [(layer.training, layer.track_running_stats) for layer in norms]
    for layer in norms:
        # training without tracking: batch statistics, and the running buffers are neither read nor written
        layer.training, layer.track_running_stats = True, False
    try:
        yield
    finally:
        for layer, (training, tracking) in zip(norms, saved, strict=True):
            layer.training, layer.track_running_stats = training, tracking
