"""Tiny guide models with random weights, saved in the real formats the guides load.

Tests never download: they build small open_clip / diffusers / framework models, save them the way users
get them (an open_clip config + safetensors weights; a diffusers ``save_pretrained`` folder; one of our
Lightning-style ``.ckpt`` files with its run config) and load them through the guides' normal code path.
Other test modules (experiment smoke tests) import these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = [
    "TINY_CLIP_CONFIG",
    "TinyOpenClip",
    "save_official_constyle_prompter",
    "save_random_open_clip_in_cache",
    "save_tiny_ipt_prior",
    "save_tiny_open_clip",
    "save_tiny_prior",
    "save_tiny_stable_diffusion",
]

# An open_clip ViT of 2 layers at 32×32 with 16×16 patches (4 tokens + CLS) and a 16-d embedding.
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_CLIP_NAME = "tiny-clip-test"


class TinyOpenClip(NamedTuple):
    """Where :func:`save_tiny_open_clip` put the model, as ``ClipGuide`` arguments."""

    model: str  # the model name (the config's file stem): guide.model
    model_config: Path  # the JSON model config: guide.model_config
    pretrained: Path  # the weights: guide.pretrained
    local_dir: Path  # the same in open_clip's hub layout: guide.model=local-dir:<this>, guide.pretrained=null
    dim: int


def save_tiny_open_clip(folder: str | Path, *, seed: int = 0) -> TinyOpenClip:
    """A random tiny CLIP in ``folder``: ``tiny-clip-test.json`` and ``open_clip_model.safetensors``."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config_path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME)
        # open_clip initialises the projection and embeddings small; spread them so features differ clearly
        for parameter in model.visual.parameters():
            parameter.data.add_(0.02 * torch.randn_like(parameter))
    weights = folder / "open_clip_model.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(weights))
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": preprocess})
    )
    return TinyOpenClip(TINY_CLIP_NAME, config_path, weights, folder, TINY_CLIP_CONFIG["embed_dim"])


def save_tiny_stable_diffusion(folder: str | Path, *, seed: int = 0) -> Path:
    """A random tiny Stable Diffusion (VAE ×2 down, 4 latent channels; UNet widths 8, 16) in diffusers layout.

    Use with ``guide.resolution=32``: dims are 8 (``vae``) and 8 + 32 = 40 (``vae+unet``).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=8,
            norm_num_groups=4,
            attention_head_dim=2,
        )
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    return folder


def _save_checkpoint(path: Path, network: torch.nn.Module, backbone: dict) -> Path:
    """A checkpoint as restoration.run writes it: EMA weights under ``ema.module.`` and the run config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"ema.module.{name}": tensor for name, tensor in network.state_dict().items()}
    state |= {f"net.{name}": tensor.clone() for name, tensor in network.state_dict().items()}
    torch.save({"state_dict": state, "config": {"backbone": backbone}}, path)
    return path


def save_tiny_prior(folder: str | Path, *, seed: int = 0) -> Path:
    """A random ConStyle prompter (7-class head) saved as a constyle_pretrain checkpoint; guide dim 128."""
    from restoration.archs.constyle import ConStyleEncoder

    backbone = {"_target_": "restoration.archs.constyle.ConStyleEncoder", "num_classes": 7, "latent_dim": 128}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = ConStyleEncoder(num_classes=7, latent_dim=128)
        # BatchNorm statistics away from their 0 / 1 initial values, as after training
        for name, buffer in encoder.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return _save_checkpoint(Path(folder) / "constyle_prior.ckpt", encoder, backbone)


def save_tiny_ipt_prior(folder: str | Path, *, seed: int = 0) -> Path:
    """A random two-task IPT (12×12 input, 36-value tokens) saved as an ipt_pretrain checkpoint (dim 36)."""
    from restoration.archs.ipt import IPT

    backbone = {
        "_target_": "restoration.archs.ipt.IPT",
        "tasks": ["derain", "denoise_30"],
        "n_feats": 4,
        "patch_size": 12,
        "patch_dim": 3,
        "num_heads": 2,
        "num_layers": 2,
        "mlp_ratio": 2,
    }
    options = {key: value for key, value in backbone.items() if key != "_target_"}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = IPT(**options)
    return _save_checkpoint(Path(folder) / "ipt_prior.ckpt", network, backbone)


def save_official_constyle_prompter(path: str | Path, *, seed: int = 0) -> Path:
    """A random ConStyle v2 prompter at paper size, official layout (``params_ema`` → ``encoder_q.``).

    The file users download as ``pretrained_ConStyle_v2.pth`` and put in ``weights/`` (``paths.weights_dir``).
    """
    from restoration.archs.constyle import ConStyleEncoder

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = ConStyleEncoder(num_classes=None)
        for name, buffer in encoder.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"params_ema": {f"encoder_q.{name}": value for name, value in encoder.state_dict().items()}}, path
    )
    return path


def save_random_open_clip_in_cache(model: str = "ViT-B-32", tag: str = "openai", *, seed: int = 0) -> Path:
    """Random weights of open_clip's ``model`` where a download of its ``tag`` would leave them.

    The Hugging Face cache (``HF_HOME``) layout that ``huggingface_hub`` writes: ``refs/main`` naming a
    snapshot holding ``open_clip_model.safetensors``. With them, ``guide.model=<model>
    guide.pretrained=<tag>`` loads offline exactly as it does for a user who downloaded the real weights.
    """
    import open_clip
    from huggingface_hub import constants
    from safetensors.torch import save_file

    repo = open_clip.get_pretrained_cfg(model, tag)["hf_hub"].strip("/")
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    weights = folder / "snapshots" / revision / "open_clip_model.safetensors"
    if weights.is_file():
        return weights
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip = open_clip.create_model(model, force_quick_gelu=True)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in clip.state_dict().items()}, str(weights))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return weights
