"""The frozen ConStyle v2 prompter as a guide (Fan et al., arXiv 2406.18242, 2024).

:class:`ConStylePrompter` loads a pre-trained :class:`~restoration.archs.constyle.ConStyleEncoder` and
keeps it truly frozen: eval mode (BatchNorm uses its running statistics), no gradients, no momentum
encoder or queue, and no EMA copy, unlike the official code, whose "frozen" prompter stays in train mode
(ConStyle spec §3.6). As a :class:`~restoration.guides.base.Guide` it maps images to the 128-d latent q1;
:meth:`ConStylePrompter.prompt` gives everything a prompted U-Net takes (q1 and the three prompt maps).

Weights come from either
- a checkpoint of our ``constyle_pretrain`` stage (``*.ckpt``; the EMA encoder, buffers included), or
- the official ``pretrained_ConStyle_v2.pth`` (or an official ConStyle restoration checkpoint): the
  ``encoder_q.`` (or ``ConStyle.encoder_q.``) weights of ``params_ema``. The official EMA copies parameters
  only, so its BatchNorm statistics can still be at their initial 0 / 1; they are then taken from
  ``params`` (the trained network) and a warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from restoration.archs import read_state_dict
from restoration.archs.constyle import ConStyleEncoder, PrompterOutput
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.guides.checkpoint import checkpoint_config, trained_network

__all__ = ["OFFICIAL_PREFIXES", "ConStylePrompter"]

log = logging.getLogger(__name__)

# where the official files keep the prompter: pretrained_ConStyle_v2.pth, and the restoration nets
OFFICIAL_PREFIXES = ("encoder_q.", "ConStyle.encoder_q.")


class ConStylePrompter(Guide):
    """A frozen ConStyle prompter loaded from ``checkpoint``.

    Args:
        checkpoint: a ``constyle_pretrain`` checkpoint (``.ckpt``) or an official ConStyle weights file.
    """

    def __init__(self, *, checkpoint: str) -> None:
        super().__init__()
        if checkpoint is None:
            raise ConfigError(
                "guide.checkpoint is not set: pass a prompter checkpoint, e.g. guide.checkpoint=..."
            )
        if not Path(checkpoint).is_file():
            raise ConfigError(
                f"guide.checkpoint={checkpoint}: no such file; put the official pretrained_ConStyle_v2.pth "
                "there, or train a prompter (experiment=constyle_pretrain) and pass "
                "guide.checkpoint=<its checkpoints/last.ckpt>"
            )
        if checkpoint_config(checkpoint) is not None:
            encoder, _ = trained_network(
                checkpoint, expected=ConStyleEncoder, hint=" (a constyle_pretrain run)"
            )
        else:
            encoder = _official_encoder(Path(checkpoint))
        self.encoder = encoder
        self.dim = encoder.latent_dim
        self.freeze()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images).q1

    @torch.no_grad()
    def prompt(self, images: torch.Tensor) -> PrompterOutput:
        """q1 and the three prompt maps of an N×3×H×W batch in [0, 1] (no gradients)."""
        return self.encoder(images)


def _official_encoder(path: Path) -> ConStyleEncoder:
    state = read_state_dict(path)
    prefix = next((p for p in OFFICIAL_PREFIXES if any(name.startswith(p) for name in state)), "")
    encoder = ConStyleEncoder(num_classes=None)
    wanted = encoder.state_dict()
    weights = {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}
    weights = {name: tensor for name, tensor in weights.items() if not name.startswith("classifier.")}
    missing = sorted(set(wanted) - set(weights))
    if missing:
        raise ConfigError(
            f"guide.checkpoint={path}: not a ConStyle prompter; missing {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    if _statistics_at_init(weights):
        trained = read_state_dict(path, key="params") if _has_entry(path, "params") else {}
        trained = {name.removeprefix(prefix): tensor for name, tensor in trained.items()}
        if not trained or _statistics_at_init(trained):
            log.warning("%s: the prompter's BatchNorm statistics are at their initial values", path)
        else:
            log.warning(
                "%s: BatchNorm statistics of params_ema are at their initial values; using params'", path
            )
            for name in weights:
                if "running_" in name or "num_batches_tracked" in name:
                    weights[name] = trained[name]
    encoder.load_state_dict({name: weights[name] for name in wanted})
    return encoder


def _statistics_at_init(state: dict[str, torch.Tensor]) -> bool:
    means = [tensor for name, tensor in state.items() if name.endswith("running_mean")]
    variances = [tensor for name, tensor in state.items() if name.endswith("running_var")]
    return (
        bool(means)
        and all(bool((m == 0).all()) for m in means)
        and all(bool((v == 1).all()) for v in variances)
    )


def _has_entry(path: Path, key: str) -> bool:
    if path.suffix == ".safetensors":
        return False
    content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return isinstance(content, dict) and key in content
