"""A frozen CLIP image encoder as a guide, through open_clip: the PTG-RM off-the-shelf feature (OSF).

X. Xu, S. Kong, T. Hu, Z. Liu and H. Bao, "Boosting Image Restoration via Priors from Pre-trained Models",
CVPR 2024: the refinement module is conditioned on g = G(I_d), the L2-normalised 512-d image embedding of
the degraded input by CLIP ViT-B/32 (OpenAI weights) in the released code (spec ptgrm §1.1). Radford et al.,
"Learning Transferable Visual Models From Natural Language Supervision", ICML 2021, for CLIP itself.

:class:`ClipGuide` loads any open_clip model: a built-in name with a pretrained tag (looked up in the local
cache first, downloaded only when the hub is reachable), a local weights file, open_clip's ``local-dir:`` /
``hf-hub:`` schemas, or a custom model config (``model_config``). Only the image tower is kept. Unlike the
official code, the degraded image is resized to the model's input size (224 for ViT-B/32) before CLIP's
mean/std normalisation: the official call feeds 960×512 frames that stock CLIP's fixed position embedding
cannot take (spec §1.2).

When weights are missing on an offline machine, :func:`missing_weights_error` gives the one error every guide
raises: what is missing and the three ways to provide it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from restoration.errors import ConfigError
from restoration.guides.base import Guide

__all__ = ["ClipGuide", "hub_offline", "hub_reachable", "missing_weights_error"]

_SCHEMAS = ("hf-hub:", "local-dir:")


def hub_offline() -> bool:
    """Whether the user switched the Hugging Face hub off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        flag is not None and flag.upper() in ("1", "ON", "YES", "TRUE") for flag in flags
    )


def hub_reachable(url: str | None = None, *, timeout: float = 3.0) -> bool:
    """One TCP connection to the hub (or ``url``'s host): a no-network machine fails here in milliseconds.

    huggingface_hub retries an unreachable host for about 25 s per file; this probe replaces that wait.
    """
    if hub_offline():
        return False
    if url is None:
        from huggingface_hub import constants

        url = constants.ENDPOINT
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def missing_weights_error(what: str, *, local_option: str, download: str) -> ConfigError:
    """The one error for pre-trained weights that are neither on disk nor downloadable."""
    return ConfigError(
        f"{what} not found locally and cannot be downloaded (offline or hub unreachable); provide them in "
        f"one of three ways: (1) fill the cache on a machine with internet ({download}) and copy the cache "
        "folder here (HF_HOME, or guide.cache_dir); (2) pass local weights: "
        f"{local_option}; (3) use a prior trained by this framework, no download: guide=prior "
        "guide.checkpoint=<a constyle_pretrain or ipt_pretrain checkpoint>"
    )


class ClipGuide(Guide):
    """Frozen CLIP image embedding of the degraded input: N×3×H×W in [0, 1] → N×``dim``, fp32.

    Args:
        model: an open_clip model name (``ViT-B-32``; ``open_clip.list_models()``), ``local-dir:/folder``
            (a folder with ``open_clip_config.json`` and the weights, open_clip's hub layout) or
            ``hf-hub:org/repo``.
        pretrained: a pretrained tag of ``model`` (``openai``; ``open_clip.list_pretrained()``) or a local
            weights file (``.safetensors``, ``.bin``, ``.pt``); open_clip ignores it when ``model`` has a
            schema, so it must then be null.
        cache_dir: where tagged weights are cached (null: the Hugging Face cache, ``HF_HOME``).
        model_config: a JSON model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) for a model open_clip
            does not ship; it is registered under its file stem, which ``model`` must equal.
        normalize: L2-normalise the embedding (as PTG-RM's official code does).
    """

    def __init__(
        self,
        *,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        cache_dir: str | None = None,
        model_config: str | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        clip = _load_open_clip(
            model=model, pretrained=pretrained, cache_dir=cache_dir, model_config=model_config
        )
        # the text tower is never used: dropping it halves ViT-B/32's memory
        self.visual = clip.visual
        preprocess = self.visual.preprocess_cfg
        size = self.visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("mean", torch.tensor(preprocess["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess["std"]).view(1, 3, 1, 1), persistent=False)
        self.normalize = normalize
        self.dim = _output_dim(self.visual, self.image_size)
        self.identity = f"clip:{model}:{pretrained}:{'l2' if normalize else 'raw'}"
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = images.clamp(0.0, 1.0).to(self.mean.dtype)
        if tuple(images.shape[-2:]) != self.image_size:
            # PIL-like bicubic with antialiasing, as CLIP's own preprocessing, but to the full square: the
            # embedding sees the whole image (no centre crop), at the price of a change of aspect ratio
            images = F.interpolate(images, size=self.image_size, mode="bicubic", antialias=True).clamp(0, 1)
        return (images - self.mean) / self.std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        osf = self.visual(images).float()
        return F.normalize(osf, dim=-1) if self.normalize else osf


def _output_dim(visual: torch.nn.Module, image_size: tuple[int, int]) -> int:
    if isinstance(getattr(visual, "output_dim", None), int):
        return visual.output_dim
    with torch.no_grad():  # towers without the attribute (timm, Hugging Face): measure it
        return int(visual.eval()(torch.zeros(1, 3, *image_size)).shape[-1])


def _load_open_clip(
    *, model: str, pretrained: str | None, cache_dir: str | None, model_config: str | None
) -> torch.nn.Module:
    import open_clip

    if model_config is not None:
        _register_model_config(Path(model_config), model)
    if model.startswith(_SCHEMAS):
        if pretrained:
            raise ConfigError(
                f"guide.model={model} names its weights itself; set guide.pretrained=null "
                f"(got {pretrained!r})"
            )
        return _create_with_schema(model, cache_dir)
    if open_clip.get_model_config(model) is None:
        raise ConfigError(
            f"guide.model={model!r} is not an open_clip model; expected one of open_clip.list_models() "
            "(e.g. ViT-B-32), local-dir:/folder, hf-hub:org/repo, or a custom config with guide.model_config"
        )
    if not pretrained:
        raise ConfigError(
            f"guide.pretrained is not set for {model}: a guide needs trained weights (a tag such as openai, "
            "or a local weights file)"
        )
    tag = open_clip.get_pretrained_cfg(model, pretrained)
    if tag:
        checkpoint = _tagged_weights(model, pretrained, tag, cache_dir)
    elif Path(pretrained).is_file():
        checkpoint = pretrained
    elif Path(pretrained).suffix or os.sep in pretrained:
        raise ConfigError(f"guide.pretrained={pretrained}: no such file")
    else:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ConfigError(
            f"guide.pretrained={pretrained!r} is neither a weights file nor a tag of {model}; "
            f"its tags are {tags}"
        )
    preprocess = {key: tag[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag}
    try:
        return open_clip.create_model(
            model,
            pretrained=checkpoint,
            # the tag says which activation the weights were trained with: OpenAI's CLIP uses QuickGELU, which
            # open_clip's plain ViT-B-32 config does not, and the embedding is wrong without it
            force_quick_gelu=bool(tag.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess,
        )
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise ConfigError(f"guide {model} with weights {checkpoint}: cannot load ({error})") from error


def _register_model_config(path: Path, model: str) -> None:
    import open_clip

    if not path.is_file():
        raise ConfigError(f"guide.model_config={path}: no such file")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"guide.model_config={path}: not a JSON file ({error})") from error
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys():
        raise ConfigError(
            f"guide.model_config={path}: expected an open_clip model config with embed_dim, vision_cfg "
            "and text_cfg"
        )
    if path.stem != model:
        raise ConfigError(
            f"guide.model_config={path} defines the model {path.stem!r} (its file name); set "
            f"guide.model={path.stem} (got {model!r})"
        )
    open_clip.add_model_config(path)


def _create_with_schema(model: str, cache_dir: str | None) -> torch.nn.Module:
    import open_clip

    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(
                f"guide.model={model}: expected a folder holding open_clip_config.json and the weights "
                "(open_clip_model.safetensors)"
            )
    else:
        from huggingface_hub import try_to_load_from_cache

        repo = model.removeprefix("hf-hub:")
        cached = try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=cache_dir)
        if not isinstance(cached, str) and not hub_reachable():
            raise missing_weights_error(
                f"open_clip weights {model}",
                local_option="guide.model=local-dir:/path/to/folder (open_clip_config.json + "
                "open_clip_model.safetensors)",
                download=f"python -c \"import open_clip; open_clip.create_model('{model}')\"",
            )
    try:
        return open_clip.create_model(model, cache_dir=cache_dir)
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise ConfigError(f"guide.model={model}: cannot load ({error})") from error


def _tagged_weights(model: str, tag_name: str, tag: dict, cache_dir: str | None) -> str:
    """The local file of a pretrained tag: from the cache, else downloaded when the hub is reachable."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import download_pretrained

    if tag.get("file"):
        return tag["file"]
    if tag.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(tag["hf_hub"])
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if not filename else [filename]
        for name in names:
            cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(cached, str):
                return cached
    if tag.get("url"):
        cached = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(tag["url"])
        if cached.is_file():
            return str(cached)
    if not hub_reachable(None if tag.get("hf_hub") else tag.get("url")):
        raise missing_weights_error(
            f"open_clip weights {model} / {tag_name}",
            local_option="guide.pretrained=/path/to/open_clip_model.safetensors "
            "(or guide.model=local-dir:/folder)",
            download='python -c "import open_clip; '
            f"open_clip.create_model('{model}', pretrained='{tag_name}')\"",
        )
    try:
        return download_pretrained(tag, cache_dir=cache_dir)
    except Exception as error:  # network, HTTP and checksum errors all mean "not downloadable"
        raise ConfigError(f"open_clip weights {model} / {tag_name}: download failed ({error})") from error
