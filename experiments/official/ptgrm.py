"""PTG-RM's refiner (official ``refinement2``) against ``restoration.archs.ptgrm.PTGRM``.

    python -m experiments.official ptgrm --root PATH_TO/pretrain_model_boost_restoration

The official refiner exists only inside the official SNR-aware network (``low_light_transformer2``, as
its attribute ``refinement11``). That whole network is built with random weights, every vector
parameter perturbed (norm weights start at 1 and biases at 0, which would hide a misplaced copy), and
saved in the official checkpoint format (a bare state dict). Ours loads the refiner's part strictly with
``load_pretrained(PTGRM(...), path, prefix="refinement11.")`` and is compared with the official
``refinement11`` on the same target output, degraded input and unit-norm 512-d feature.
"""

from __future__ import annotations

import functools
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.official import import_official
from restoration.archs import load_pretrained
from restoration.archs.snr_aware import REFINER_PREFIX

# The official class hard-codes nf = 16 and a 512-d feature: only the full preset.
PRESETS = ("ptgrm",)
# The official refiner does not pad: a size divisible by 4.
INPUT_SHAPE = (2, 3, 64, 96)
# CLIP ViT-B/32's embedding, the only feature of the release.
OSF_DIM = 512

_CONF = Path(__file__).resolve().parents[2] / "conf"


def _import_low_light_transformer(root: str | Path) -> types.ModuleType:
    # cv2 is imported by the file but unused by the networks
    return import_official(root, "models/archs/low_light_transformer648_final.py", stub_modules=("cv2",))


_import_official = functools.cache(_import_low_light_transformer)


def build(root: str | Path, preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    official_module = _import_official(root)
    # conf/refiner is composed by the ptgrm stage, which fills in the guide's feature width.
    config = OmegaConf.load(_CONF / "refiner" / f"{preset}.yaml")
    ours = instantiate(config)(osf_dim=OSF_DIM)
    # options/train/SID.yml; the refiner itself takes no options from it.
    official = official_module.low_light_transformer2(
        nf=64, nframes=5, groups=8, front_RBs=1, back_RBs=1, predeblur=True, HR_in=True, w_TSA=True
    )
    with torch.no_grad():
        for name, parameter in official.refinement11.named_parameters():
            if parameter.ndim <= 1 or name.endswith("temperature"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ptg_rm.pth"
        torch.save(official.state_dict(), path)  # the official save_network format: a bare state dict
        load_pretrained(ours, path, prefix=REFINER_PREFIX)
    return ours, official.refinement11


def _inputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A target output reaching outside [0, 1] (so the clamp matters), a dark input and a unit feature."""
    target_out = images * 1.4 - 0.2
    degraded = images * 0.2
    generator = torch.Generator().manual_seed(len(images))
    osf = F.normalize(torch.randn(len(images), OSF_DIM, generator=generator), dim=1)
    return target_out, degraded, osf


def run_official(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    target_out, degraded, osf = _inputs(images)
    return net([osf], target_out, degraded)


def run_ours(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(*_inputs(images))
