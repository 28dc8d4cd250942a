"""PTG-RM's SNR-aware target network (``low_light_transformer2``) against ``restoration.archs.snr_aware``.

    python -m experiments.official snr_aware --root PATH_TO/pretrain_model_boost_restoration

The official module also holds the PTG-RM refiner (``refinement11``), which needs a CLIP condition. Its
random weights are saved with the rest in the official checkpoint format (a bare state dict), which ours
loads with ``load_pretrained`` (strict on our keys; ``SNRAware.checkpoint_filter_fn`` sets the refiner's
aside); the refiner is then replaced by a pass-through, so the official module's parameters and output are
those of the target network alone (its second output, ``out_noise2``).

The official forward computes an unused coordinate grid with ``.cuda()``; on a CPU-only machine that
call is made a no-op while the official network runs. The official SNR map comes from the official
recipe (``cv2.blur`` of the data loader, the formula of the training wrapper), ours from the network.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
import types
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments.official import import_official
from restoration.archs.pretrained import load_pretrained

# The official class hard-codes 6 short-range blocks, 6 layers of 8 heads of 64: only the full preset.
PRESETS = ("snr_aware",)
# The official network does not pad: a size divisible by 16 (two halvings, then 4×4 patches).
INPUT_SHAPE = (2, 3, 64, 96)

_CONF = Path(__file__).resolve().parents[2] / "conf"


def _import_low_light_transformer(root: str | Path) -> types.ModuleType:
    # Only the refiner uses einops, and it never runs here: a stand-in lets the file import without it.
    if importlib.util.find_spec("einops") is None and "einops" not in sys.modules:
        einops = types.ModuleType("einops")
        einops.rearrange = None
        sys.modules["einops"] = einops
    return import_official(root, "models/archs/low_light_transformer648_final.py")


_import_official = functools.cache(_import_low_light_transformer)


class _PassThroughRefiner(torch.nn.Module):
    def forward(
        self, clip_condition_list: object, target_out: torch.Tensor, inp_img: torch.Tensor
    ) -> torch.Tensor:
        return target_out


def build(root: str | Path, preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    official_module = _import_official(root)
    with initialize_config_dir(version_base="1.3", config_dir=str(_CONF)):
        config = compose(config_name="config", overrides=[f"backbone={preset}"]).backbone
    ours = instantiate(config)
    # options/train/SID.yml; nframes, groups, predeblur and w_TSA are unused by the class.
    official = official_module.low_light_transformer2(
        nf=config.width,
        nframes=5,
        groups=8,
        front_RBs=config.front_blocks,
        back_RBs=config.back_blocks,
        predeblur=True,
        HR_in=True,
        w_TSA=True,
    )
    # Layer-norm weights start at 1 and residual-block biases at 0: perturb every vector parameter so
    # that a norm or bias copied to the wrong place shows in the outputs.
    with torch.no_grad():
        for parameter in official.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ptg_rm.pth"
        torch.save(official.state_dict(), path)  # the official save_network format: a bare state dict
        load_pretrained(ours, path)
    official.refinement11 = _PassThroughRefiner()
    return ours, official


def _scenes(images: torch.Tensor) -> torch.Tensor:
    """The random batch, its second image (if any) replaced by a brightness ramp under a checkerboard.

    Random pixels give an SNR map whose maximum dwarfs every 4×4 patch, so no patch passes the 0.5
    threshold (uniform attention); the SNR of the ramp, whose checkerboard has a fixed amplitude, grows
    with its brightness, so its brighter half is attended to and its darker half hidden (the masked path).
    """
    scenes = images.clone()
    if len(scenes) < 2:
        return scenes
    height, width = images.shape[-2:]
    ramp = torch.linspace(0.1, 0.8, width).expand(height, width)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    checkerboard = ((rows + cols) % 2 * 2 - 1).float()
    scenes[1] = (ramp + 0.05 * checkerboard).expand(3, height, width)
    return scenes


def _official_snr_map(images: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    # data/dataset_SID.py: the "noise-free" image is a 5×5 box blur of the 0-255 image.
    blurred = np.stack([cv2.blur(image.permute(1, 2, 0).numpy() * 255.0, (5, 5)) / 255.0 for image in images])
    blurred = torch.from_numpy(blurred).float().permute(0, 3, 1, 2)
    dark, light = (images * luma).sum(1, keepdim=True), (blurred * luma).sum(1, keepdim=True)
    snr = light / ((dark - light).abs() + 0.0001)
    peak = snr.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return (snr / (peak + 0.0001)).clamp(0, 1)


def run_official(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    scenes = _scenes(images)
    with mock.patch.object(torch.Tensor, "cuda", lambda tensor, *args, **kwargs: tensor):
        _, target_out = net(scenes, _official_snr_map(scenes), None)
    return target_out


def run_ours(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(_scenes(images))
