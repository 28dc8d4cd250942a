"""Stage ``ptgrm``: a target restoration network refined by PTG-RM, guided by a frozen pre-trained model.

Xu, Kong, Hu, Liu and Bao, "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024.
The target network F restores the degraded image, Î_c = F(I_d); the frozen guide G gives the off-the-shelf
feature g = G(I_d) of the degraded image; the refinement module R gives the final output
Ī_c = R(Î_c, I_d, g). As the paper and the official ``models/Video_base_model8_cos11_final.py``, F and R
are trained together under the same loss on both outputs, L(Î_c, GT) + λ1·L(Ī_c, GT) with λ1 = 1, and the
official SID loss is Charbonnier plus 0.1 × a VGG19 perceptual loss. The target can also be frozen
(``train_target="frozen"``: R alone is trained on a given target).

The trainable network is :class:`TargetAndRefiner` (``net.target``, ``net.refiner``), so the optimizer,
the EMA, checkpoints and validation of the base stage cover both. The guide and the VGG19 of the
perceptual loss are frozen towers: outside ``net`` (so outside the optimizer and the EMA), without
gradients (so DDP neither reduces nor broadcasts them), and left out of checkpoints (they are rebuilt
from their config; loading a checkpoint keeps the freshly built ones).

The feature g comes with the batch when the datamodule has it (``batch["osf"]``: ``guide.input=frame``, the
official feature of the whole degraded image, computed once per image before training); otherwise the guide
encodes the degraded training crop in the step (``guide.input=crop``, the only choice for degradations
synthesized every step). Validation takes the batch's ``osf`` too where it has one, and otherwise runs the
guide on the whole validation image, the same feature.

Validation scores both the refined output (``val/psnr``) and the target's (``val/target/psnr``), and the
grids show both, so the gain of the module is visible in every run.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from restoration.archs.common import pad_to_multiple
from restoration.archs.pretrained import load_pretrained
from restoration.archs.snr_aware import REFINER_PREFIX
from restoration.data.batch import Batch
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.losses import VGGPerceptualLoss
from restoration.signals import stop_point
from restoration.stages.base import RestorationStage
from restoration.tiling import tiled_forward

__all__ = ["PTGRMStage", "TargetAndRefiner"]

log = logging.getLogger(__name__)

# PTG-RM works on a 1/4-resolution latent (two stride-2 convolutions): H and W must be multiples of 4.
_REFINER_MULTIPLE = 4


class TargetAndRefiner(nn.Module):
    """The target network followed by PTG-RM: ``(degraded, osf) -> (refined, target_out)``.

    Args:
        target: the target restoration network F, ``degraded -> target_out`` (unclamped).
        refiner: PTG-RM, ``(target_out, degraded, osf) -> refined``; ``None``: the target alone
            (``refined`` is ``target_out``), the control of a ``refiner=`` sweep.
        freeze_target: keep the target in eval mode without gradients (``train()`` does not change it).
    """

    def __init__(self, *, target: nn.Module, refiner: nn.Module | None, freeze_target: bool = False) -> None:
        super().__init__()
        self.target = target
        self.refiner = refiner
        self.freeze_target = freeze_target
        self.size_multiple = math.lcm(getattr(target, "size_multiple", 1), _REFINER_MULTIPLE)
        if freeze_target:
            target.requires_grad_(False)
            target.eval()

    def train(self, mode: bool = True) -> TargetAndRefiner:
        super().train(mode)
        if self.freeze_target:
            self.target.eval()
        return self

    def forward(self, degraded: torch.Tensor, osf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        target_out = self.target(degraded)
        if self.refiner is None:
            return target_out, target_out
        return self.refiner(target_out, degraded, osf), target_out


class PTGRMStage(RestorationStage):
    """Train a target network and PTG-RM on ``batch["lq"] -> batch["gt"]``, guided by a frozen ``guide``.

    Args:
        net: the target network F (the ``backbone`` group; ``backbone_weights.path=`` initialises it).
        guide: the frozen pre-trained model G (the ``guide`` group), ``images -> N×guide.dim`` features.
        refiner: PTG-RM (the ``refiner`` group): a module, or a ``_partial_`` factory whose ``osf_dim``
            is filled in with ``guide.dim`` when left ``None``. ``None`` (``refiner=none``, an empty
            option) trains the target alone with the same loss, data and steps: the control row of a
            sweep such as ``refiner=none,ptgrm,wide_plain`` (the guide is then not run).
        loss: the pixel loss ``(restored, target) -> scalar`` of L (official SID: Charbonnier, sum).
        train_target: ``"joint"`` trains F together with R (the paper); ``"frozen"`` keeps F fixed in
            eval mode and trains R alone.
        lambda_refined: λ1, the weight of the refined output's loss (1 in all the paper's experiments).
        perceptual_weight: weight of the VGG19 perceptual term of L (official SID: 0.1); 0 turns it off.
            It needs torchvision's VGG19 weights on disk (see ``vgg_weights``).
        vgg_weights: the VGG19 weights file; ``None`` looks in the torch hub cache
            (``~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth``).
        vgg_normalize: ImageNet-normalise the VGG19 input; the official loss does not (``False``).
        vgg_reduction: ``"sum"`` as the official loss, or ``"mean"`` (should match ``loss``).
        **base: the shared options of :class:`~restoration.stages.base.RestorationStage`.
    """

    scored_outputs = ("target",)
    frozen_towers = ("guide", "perceptual")

    def __init__(
        self,
        *,
        net: nn.Module,
        guide: Guide | None = None,
        refiner: nn.Module | Callable[..., nn.Module] | None = None,
        loss: nn.Module,
        train_target: str = "joint",
        lambda_refined: float = 1.0,
        perceptual_weight: float = 0.0,
        vgg_weights: str | None = None,
        vgg_normalize: bool = False,
        vgg_reduction: str = "sum",
        **base: Any,
    ) -> None:
        if guide is None:
            raise ConfigError("stage=ptgrm needs a pre-trained guide: set guide=clip (or another option)")
        if train_target not in ("joint", "frozen"):
            raise ConfigError(f"stage.train_target={train_target!r}; expected 'joint' or 'frozen'")
        if perceptual_weight < 0:
            raise ConfigError(f"stage.perceptual_weight={perceptual_weight}; expected >= 0 (0 turns it off)")
        if refiner is None and train_target == "frozen":
            raise ConfigError(
                "refiner=none with stage.train_target=frozen leaves nothing to train; set refiner=ptgrm"
            )
        if refiner is None:
            log.info(
                "ptgrm: refiner=none, the target network alone under this stage's loss; the guide is unused"
            )
            self.scored_outputs = ()
        else:
            refiner = _build_refiner(refiner, osf_dim=guide.dim)
            _take_released_refiner(net, refiner)
        combined = TargetAndRefiner(target=net, refiner=refiner, freeze_target=train_target == "frozen")
        super().__init__(net=combined, **base)
        self.guide = guide.requires_grad_(False).eval()
        self.loss = loss
        self.train_target = train_target
        self.lambda_refined = lambda_refined
        self.perceptual_weight = perceptual_weight
        self.perceptual = (
            VGGPerceptualLoss(weights=vgg_weights, normalize=vgg_normalize, reduction=vgg_reduction)
            if perceptual_weight > 0
            else None
        )
        if train_target == "frozen":
            log.info("ptgrm: the target network is frozen; only the refinement module is trained")
        # the features of the batch being evaluated (RestorationStage._evaluate passes on the images only)
        self._batch_osf: torch.Tensor | None = None

    @property
    def osf_guide(self) -> Guide | None:
        """The guide whose features the stage takes (``None`` with ``refiner=none``: it is not run), for the
        datamodule to precompute them (``restoration.run``)."""
        return self.guide if self.net.refiner is not None else None

    # ---- training ---------------------------------------------------------------------------

    def criterion(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L: the pixel loss plus ``perceptual_weight`` × the VGG19 perceptual loss."""
        value = self.loss(restored, target)
        if self.perceptual is not None:
            value = value + self.perceptual_weight * self.perceptual(restored, target)
        return value

    def losses(
        self, degraded: torch.Tensor, clean: torch.Tensor, osf: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training loss L(target_out, GT) + λ1·L(refined, GT), and its two terms.

        ``osf``: the guide's features of the images the crops come from; ``None`` runs the guide on the crops.
        """
        if self.net.refiner is None:
            loss_target = self.criterion(self.net.target(degraded), clean)
            return loss_target, loss_target, torch.zeros_like(loss_target)
        if osf is None:
            osf = self.guide(degraded)
        refined, target_out = self.net(degraded, osf)
        # With a frozen target this term is a constant (no gradient), kept so the logged loss means the same.
        loss_target = self.criterion(target_out, clean)
        loss_refined = self.criterion(refined, clean)
        return loss_target + self.lambda_refined * loss_refined, loss_target, loss_refined

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        loss, loss_target, loss_refined = self.losses(batch["lq"], batch["gt"], batch.get("osf"))
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/loss_target": loss_target, "train/loss_refined": loss_refined})
        return self.checked_loss(loss)

    # ---- inference --------------------------------------------------------------------------

    @contextmanager
    def _features_of(self, batch: Batch) -> Iterator[None]:
        """Let :meth:`restore_for_evaluation` take ``batch``'s ``osf`` while the batch is evaluated."""
        self._batch_osf = batch.get("osf")
        try:
            yield
        finally:
            self._batch_osf = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        with self._features_of(batch):
            super().validation_step(batch, batch_idx)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        with self._features_of(batch):
            super().test_step(batch, batch_idx)

    def restore_for_evaluation(
        self, degraded: torch.Tensor, osf: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The refined images and the target's output.

        ``osf``: the guide's features of the whole images (default: the evaluated batch's, if it has them);
        otherwise the guide sees each whole unpadded image. Tiles and padding share their image's feature.
        """
        net = self.eval_net
        osf = self._batch_osf if osf is None else osf
        if self.net.refiner is None:
            osf = degraded.new_zeros(len(degraded), 1)
        elif osf is None:
            osf = self.guide(degraded)
        elif len(osf) != len(degraded):
            raise ValueError(f"osf has {len(osf)} rows for {len(degraded)} images")

        def forward(images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            stop_point()  # before each image or batch of tiles, a requested stop is taken here
            refined, target_out = net(pad_to_multiple(images, self.pad_multiple), features)
            # one tensor, so that tiles of both outputs are blended alike
            return torch.cat([refined, target_out], dim=1)[..., : images.shape[-2], : images.shape[-1]]

        if self.tile is None:
            both = forward(degraded, osf)
        else:
            # Tiles of one image share its feature vector: tile image by image.
            both = torch.cat(
                [
                    tiled_forward(
                        lambda tiles, g=osf[i : i + 1]: forward(tiles, g.expand(len(tiles), -1)),
                        degraded[i : i + 1],
                        tile=self.tile,
                        overlap=self.tile_overlap,
                    )
                    for i in range(len(degraded))
                ]
            )
        refined, target_out = both.split(3, dim=1)
        return refined, {"target": target_out} if self.scored_outputs else {}

    def restore(self, degraded: torch.Tensor) -> torch.Tensor:
        return self.restore_for_evaluation(degraded)[0]


def _take_released_refiner(target: nn.Module, refiner: nn.Module) -> None:
    """Load the refiner of a released PTG-RM file that ``backbone_weights.path`` loaded the target from.

    The official SNR-Aware + PTG-RM checkpoint holds both networks, the refiner as ``refinement11.*``; the
    target set those keys aside (:meth:`~restoration.archs.snr_aware.SNRAware.checkpoint_filter_fn`), and
    the refiner takes them here, strictly, so that the released model is evaluated whole through one door.
    """
    aside = (getattr(target, "pretrained_mismatch", None) or {}).get("unexpected", [])
    if not any(name.startswith(REFINER_PREFIX) for name in aside):
        return
    load_pretrained(refiner, target.pretrained_path, prefix=REFINER_PREFIX)
    log.info("ptgrm: the refiner's weights loaded from %s (%s*)", target.pretrained_path, REFINER_PREFIX)


def _build_refiner(refiner: nn.Module | Callable[..., nn.Module], *, osf_dim: int) -> nn.Module:
    """The refinement module for a guide of ``osf_dim`` features; a mismatch is a ConfigError."""
    if isinstance(refiner, nn.Module):
        built_dim = getattr(refiner, "osf_dim", osf_dim)
        if built_dim != osf_dim:
            raise ConfigError(f"refiner.osf_dim={built_dim} but the guide gives {osf_dim}-d features")
        return refiner
    configured = refiner.keywords.get("osf_dim") if isinstance(refiner, functools.partial) else None
    if configured is None:
        return refiner(osf_dim=osf_dim)
    if configured != osf_dim:
        raise ConfigError(
            f"refiner.osf_dim={configured} but the guide gives {osf_dim}-d features; "
            "set refiner.osf_dim=null to take the guide's"
        )
    return refiner()
