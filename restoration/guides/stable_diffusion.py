"""A frozen Stable Diffusion as a guide: pooled VAE-latent (and UNet mid-block) features of degraded images.

Xu et al., "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024, report a PTG-RM
variant "-s" guided by Stable Diffusion (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022), but neither the paper nor the released code says which component, layer,
resolution or pooling gives their 1-D vector (spec ptgrm §1.4). What this file implements is therefore our
choice, kept simple:

- the image is resized to ``resolution`` (512, SD 1.x/2.x-base's training size) and scaled to [-1, 1];
- the VAE encoder's posterior **mean** (not a sample: the guide must be deterministic), times the VAE's
  ``scaling_factor``, is pooled by a global average and a global max over space (2 × latent channels values);
- with ``features="vae+unet"`` that latent also goes through the UNet at a small ``timestep`` with no noise
  added (deterministic; at t = 50 of 1000 the noise the UNet expects is small) and with an all-zero text
  embedding (no text encoder is loaded; with zero tokens the cross-attention contributes only its output
  bias, whatever the token count). The mid-block output, the UNet's most global features, is pooled the same
  way (2 × the last block width, 2560 for SD 2.1). The up path is never run.
- each pooled part is L2-normalised and the parts are concatenated and scaled so the whole vector has norm 1,
  so that the 8 VAE values are not drowned by the 2560 UNet values.

Weights come from a local diffusers folder (``vae/`` and ``unet/`` from ``save_pretrained``) or a hub id
looked up in the cache first and downloaded only when the hub is reachable.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.guides.clip import hub_reachable, missing_weights_error

__all__ = ["StableDiffusionGuide"]

FEATURES = ("vae", "vae+unet")


class _MidBlockReached(Exception):
    """Raised by the mid-block hook to stop the UNet: its up path is half the cost and unused."""


class StableDiffusionGuide(Guide):
    """Frozen Stable Diffusion features of the degraded input: N×3×H×W in [0, 1] → N×``dim``, fp32.

    Args:
        model: a hub id (``stabilityai/stable-diffusion-2-1-base``) or a local folder in the diffusers layout,
            with ``vae/`` and (for ``vae+unet``) ``unet/`` sub-folders.
        resolution: side of the square the image is resized to (512; a multiple of 8).
        features: ``"vae"`` (pooled latent) or ``"vae+unet"`` (also the pooled UNet mid-block output).
        timestep: the diffusion timestep given to the UNet (0..999), only with ``vae+unet``.
        cache_dir: the Hugging Face cache to use (null: ``HF_HOME``'s).
    """

    def __init__(
        self,
        *,
        model: str = "stabilityai/stable-diffusion-2-1-base",
        resolution: int = 512,
        features: str = "vae+unet",
        timestep: int = 50,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ConfigError(f"guide.features={features!r}; expected one of {list(FEATURES)}")
        if resolution < 8 or resolution % 8:
            raise ConfigError(f"guide.resolution={resolution}; expected a positive multiple of 8")
        if not 0 <= timestep < 1000:
            raise ConfigError(f"guide.timestep={timestep}; expected 0..999")
        from diffusers import AutoencoderKL

        vae = _load(AutoencoderKL, model, "vae", cache_dir)
        # only the encoder side is used: the decoder is dropped with the rest of the pipeline
        self.vae_encoder = vae.encoder
        self.vae_quant_conv = (
            vae.quant_conv if getattr(vae, "quant_conv", None) is not None else nn.Identity()
        )
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)
        self.resolution = resolution
        self.timestep = timestep
        self.dim = 2 * self.latent_channels
        self.unet: nn.Module | None = None
        if features == "vae+unet":
            from diffusers import UNet2DConditionModel

            unet = _load(UNet2DConditionModel, model, "unet", cache_dir)
            _check_unet(unet, model, self.latent_channels)
            # never reached: the hook stops the forward after the mid block
            unet.up_blocks = nn.ModuleList()
            self.unet = unet
            self.text_width = int(unet.config.cross_attention_dim)
            self.dim += 2 * int(unet.config.block_out_channels[-1])
        self.identity = f"stable_diffusion:{model}:{resolution}:{features}:{timestep}"
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = images.clamp(0.0, 1.0).float()
        size = (self.resolution, self.resolution)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True).clamp(0.0, 1.0)
        return images * 2.0 - 1.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        moments = self.vae_quant_conv(self.vae_encoder(images))
        latent = (moments[:, : self.latent_channels] - self.shift_factor) * self.scaling_factor
        parts = [_pooled(latent)]
        if self.unet is not None:
            parts.append(_pooled(self._mid_block(latent)))
        parts = [F.normalize(part.float(), dim=-1) for part in parts]
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def _mid_block(self, latent: torch.Tensor) -> torch.Tensor:
        assert self.unet is not None
        found: list[torch.Tensor] = []

        def stop(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            found.append(output)
            raise _MidBlockReached

        handle = self.unet.mid_block.register_forward_hook(stop)
        timesteps = torch.full((len(latent),), self.timestep, device=latent.device, dtype=torch.long)
        text = latent.new_zeros(len(latent), 1, self.text_width)
        try:
            self.unet(latent, timesteps, encoder_hidden_states=text)
        except _MidBlockReached:
            pass
        finally:
            handle.remove()
        return found[0]


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """Global average and global max over space: N×C×H×W → N×2C."""
    return torch.cat([features.mean(dim=(-2, -1)), features.amax(dim=(-2, -1))], dim=-1)


def _check_unet(unet: nn.Module, model: str, latent_channels: int) -> None:
    config = unet.config
    if config.in_channels != latent_channels:
        raise ConfigError(
            f"guide.model={model}: the UNet takes {config.in_channels} channels but the VAE latent has "
            f"{latent_channels}; expected one Stable Diffusion checkpoint"
        )
    if config.get("addition_embed_type") is not None or not isinstance(config.cross_attention_dim, int):
        raise ConfigError(
            f"guide.model={model}: a UNet with extra conditioning (SDXL-style) is not supported; use an "
            "SD 1.x/2.x checkpoint or guide.features=vae"
        )
    if unet.mid_block is None:
        raise ConfigError(f"guide.model={model}: this UNet has no mid block; use guide.features=vae")


def _load(model_class: type, model: str, subfolder: str, cache_dir: str | None) -> nn.Module:
    """A diffusers model from a local folder, the cache, or (when reachable) the hub."""
    folder = Path(model)
    looks_local = folder.is_absolute() or model.startswith(".") or model.count("/") != 1
    if folder.is_dir() or looks_local:
        if not (folder / subfolder / "config.json").is_file():
            raise ConfigError(
                f"guide.model={model}: expected a diffusers folder (save_pretrained layout) with "
                f"{subfolder}/config.json and its weights"
            )
        try:
            return model_class.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ConfigError(f"guide.model={model}: cannot load {subfolder}/ ({error})") from error
    try:
        return model_class.from_pretrained(
            model, subfolder=subfolder, cache_dir=cache_dir, local_files_only=True
        )
    except OSError:
        pass  # not in the cache
    if not hub_reachable():
        raise missing_weights_error(
            f"Stable Diffusion weights {model} ({subfolder}/)",
            local_option="guide.model=/path/to/sd_folder (a diffusers save_pretrained folder with vae/ "
            "and unet/)",
            download=f"hf download {model} --include 'vae/*' 'unet/*' 'model_index.json'",
        )
    try:
        return model_class.from_pretrained(model, subfolder=subfolder, cache_dir=cache_dir)
    except Exception as error:  # network, HTTP and format errors all mean "not loadable"
        raise ConfigError(f"guide.model={model}: cannot download {subfolder}/ ({error})") from error
