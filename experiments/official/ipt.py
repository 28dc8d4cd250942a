"""IPT against ``model/ipt.py`` and ``model/__init__.py`` of https://github.com/huawei-noah/Pretrained-IPT.

    python -m experiments.official ipt --root PATH_TO/Pretrained-IPT

Presets:

- ``ipt_sr_x2``: the single-task ×2 model of conf/backbone/ipt_sr_x2.yaml on the top-left 48×48 of the input;
- ``ipt_pretrain TASK``: the six-task model with one task selected (the official ``set_scale(i)`` with the
  task's index), likewise on 48×48;
- ``ipt_tiny TASK forward_chop``: ``ipt_tiled_forward(protocol="official")`` on the whole input against the
  official ``Model.forward_chop`` (crop batch 64); ``forward_x8``: both wrapped in the ×8 self-ensemble.

``INPUT_SHAPE`` is 2×3×61×83: neither side is 48 plus a multiple of 12, so ``forward_chop`` needs its border
strips on both axes (17 tiles per image). The official code takes 0–255 images; the wrappers below scale, so
the differences are on our [0, 1] scale.

The official ``forward_chop`` hard-codes CUDA (``.cuda()`` on tensors, ``torch.nn.parallel.data_parallel``).
For the comparison on any machine, :func:`_official_calls_on_any_device` turns ``Tensor.cuda`` into the
identity while an official tiling runs, and the official module's ``P.data_parallel`` into a plain call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from experiments.official import import_official
from restoration.archs.ipt import IPT, TASK_SCALES
from restoration.tiling import ipt_tiled_forward

__all__ = ["INPUT_SHAPE", "PRESETS", "build", "official_ipt"]

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"

PRESETS = (
    "ipt_sr_x2",
    "ipt_pretrain sr_x3",
    "ipt_pretrain derain",
    "ipt_pretrain denoise_50",
    "ipt_tiny sr_x3 forward_chop",
    "ipt_tiny derain forward_chop",
    "ipt_tiny sr_x2 forward_x8",
)
INPUT_SHAPE = (2, 3, 61, 83)


def official_ipt(root: str | Path, settings: dict) -> nn.Module:
    """The official ``ipt`` built from the settings of one of our ``conf/backbone/ipt_*`` files."""
    official_module = import_official(root, "model/ipt.py")
    args = argparse.Namespace(
        n_feats=settings["n_feats"],
        rgb_range=255,
        n_colors=3,
        scale=[TASK_SCALES[task] for task in settings["tasks"]],
        patch_size=settings["patch_size"],
        patch_dim=settings["patch_dim"],
        num_heads=settings["num_heads"],
        num_layers=settings["num_layers"],
        num_queries=len(settings["tasks"]),
        dropout_rate=settings["dropout"],
        no_mlp=False,
        pos_every=False,
        no_pos=False,
        no_norm=False,
    )
    if settings["mlp_ratio"] != 4:
        raise ValueError(f"the official ipt fixes the MLP ratio at 4; the preset has {settings['mlp_ratio']}")
    return official_module.ipt(args)


@contextlib.contextmanager
def _official_calls_on_any_device(official_tiling: types.ModuleType) -> Iterator[None]:
    """Run the official tiling where its tensors are: ``.cuda()`` returns the tensor itself meanwhile."""
    cuda, parallel = torch.Tensor.cuda, official_tiling.P
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
    official_tiling.P = types.SimpleNamespace(data_parallel=lambda module, inputs, device_ids: module(inputs))
    try:
        yield
    finally:
        torch.Tensor.cuda, official_tiling.P = cuda, parallel


class _Ours(nn.Module):
    """Our IPT on one task: the plain forward on 48×48, or the tiling (``mode``) on whole images in [0, 1]."""

    def __init__(self, net: IPT, *, task: str, mode: str) -> None:
        super().__init__()
        self.net, self.task, self.mode = net, task, mode

    def forward(self, images: Tensor) -> Tensor:
        if self.mode == "forward":
            return self.net(images[..., : self.net.patch_size, : self.net.patch_size], self.task)
        return ipt_tiled_forward(
            functools.partial(self.net, task=self.task),
            images,
            scale=self.net.scale_of(self.task),
            protocol="official",
            self_ensemble=self.mode == "forward_x8",
        )


class _Official(nn.Module):
    """The official ``ipt`` on one task, on [0, 1] images, through the official ``Model`` for the tilings."""

    def __init__(
        self, net: nn.Module, *, task_index: int, mode: str, tiling_module: types.ModuleType
    ) -> None:
        super().__init__()
        net.set_scale(task_index)
        # The official Model's constructor loads checkpoints from disk; the tiling methods only need these.
        shell = tiling_module.Model.__new__(tiling_module.Model)
        nn.Module.__init__(shell)
        shell.args = argparse.Namespace(crop_batch_size=64)
        shell.model, shell.patch_size, shell.scale, shell.idx_scale = (
            net,
            net.args.patch_size,
            net.args.scale,
            task_index,
        )
        shell.n_GPUs, shell.precision, shell.device = 1, "single", torch.device("cpu")
        self.shell, self.mode, self.tiling_module = shell, mode, tiling_module

    def forward(self, images: Tensor) -> Tensor:
        images = images * 255
        if self.mode == "forward":
            size = self.shell.patch_size
            return self.shell.model(images[..., :size, :size]) / 255
        self.shell.device = images.device
        # forward_chop folds the batch into the channels and forward_x8 averages over it: one image at a time
        chop = self.shell.forward_chop
        with _official_calls_on_any_device(self.tiling_module):
            if self.mode == "forward_chop":
                restored = [chop(image[None]) for image in images]
            else:
                restored = [self.shell.forward_x8(image[None], forward_function=chop) for image in images]
        return torch.cat(restored) / 255


def build(root: str | Path, preset: str) -> tuple[nn.Module, nn.Module]:
    file, *rest = preset.split()
    settings = OmegaConf.to_container(OmegaConf.load(CONF / f"{file}.yaml"))
    settings.pop("_target_")
    task = rest[0] if rest else settings["tasks"][0]
    mode = rest[1] if len(rest) > 1 else "forward"
    official_net = official_ipt(root, settings)
    ours = IPT(**settings)
    ours.load_state_dict(official_net.state_dict(), strict=True)
    tiling_module = import_official(root, "model/__init__.py")
    official = _Official(
        official_net, task_index=ours.task_index(task), mode=mode, tiling_module=tiling_module
    )
    return _Ours(ours, task=task, mode=mode), official
