"""Frozen feature guides (CLIP, Stable Diffusion, framework priors) and the OSF disk cache.

Every model is tiny, random and saved in its real format first (tests/guide_models.py), then loaded through
the same code path as released weights. The network is never touched.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from restoration.data.sources import ImageFolder, PairedFolders
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.guides.cache import OSFCache, guide_key, precompute
from restoration.guides.checkpoint import trained_network
from restoration.guides.clip import ClipGuide
from restoration.guides.constyle import ConStylePrompter
from restoration.guides.prior import IPTGuide, prior_guide
from restoration.guides.stable_diffusion import StableDiffusionGuide
from tests.guide_models import (
    TinyOpenClip,
    save_tiny_ipt_prior,
    save_tiny_open_clip,
    save_tiny_prior,
    save_tiny_stable_diffusion,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def guide_config(name: str) -> DictConfig:
    """``conf/guide/<name>.yaml`` as the guide gets it: without ``input`` and ``cache``, which restoration.run
    takes out (how PTG-RM gets the features; their defaults: the whole image's, cached)."""
    config = OmegaConf.load(CONF / "guide" / f"{name}.yaml")
    assert (config.pop("input"), config.pop("cache")) == ("frame", True)
    return config


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyOpenClip:
    return save_tiny_open_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def clip_guide(tiny_clip: TinyOpenClip) -> ClipGuide:
    return ClipGuide(
        model=tiny_clip.model, model_config=str(tiny_clip.model_config), pretrained=str(tiny_clip.pretrained)
    )


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection attempt fails at once, as on a machine without network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def degraded_batch(count: int = 2, height: int = 40, width: int = 56) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(1))


def assert_frozen(guide: Guide, images: torch.Tensor, dim: int) -> torch.Tensor:
    """The guarantees every guide gives: no trainable parameter, eval forever, no graph, N×dim finite fp32."""
    assert guide.dim == dim
    assert all(not parameter.requires_grad for parameter in guide.parameters())
    guide.train()
    assert not any(module.training for module in guide.modules())
    images = images.clone().requires_grad_(True)
    with torch.enable_grad():
        osf = guide(images)
    assert osf.shape == (len(images), dim)
    assert osf.dtype == torch.float32
    assert not osf.requires_grad and osf.grad_fn is None
    assert torch.isfinite(osf).all()
    return osf


# ----------------------------------------------------------------------------------------------------- CLIP


def test_clip_guide_matches_open_clip_on_resized_normalised_input(
    clip_guide: ClipGuide, tiny_clip: TinyOpenClip
) -> None:
    import open_clip
    from safetensors.torch import load_file

    images = degraded_batch()
    osf = assert_frozen(clip_guide, images, dim=16)
    torch.testing.assert_close(osf.norm(dim=-1), torch.ones(2))
    # the reference: the same weights loaded by hand, CLIP's own normalisation after a bicubic resize to 32²
    reference = open_clip.create_model(tiny_clip.model).eval()
    reference.load_state_dict(load_file(str(tiny_clip.pretrained)))
    resized = F.interpolate(images, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.encode_image((resized - mean) / std, normalize=True)
    torch.testing.assert_close(osf, expected)
    assert not hasattr(clip_guide, "text") and "transformer.resblocks.0.attn.in_proj_weight" not in dict(
        clip_guide.named_parameters()
    )  # the text tower is dropped


def test_clip_guide_inputs_are_resized_and_clamped(clip_guide: ClipGuide) -> None:
    prepared = clip_guide.preprocess(torch.full((1, 3, 50, 70), 2.0))
    assert prepared.shape == (1, 3, 32, 32)
    torch.testing.assert_close(prepared, clip_guide.preprocess(torch.ones(1, 3, 32, 32)))


def test_clip_guide_loads_open_clip_local_dir_layout(clip_guide: ClipGuide, tiny_clip: TinyOpenClip) -> None:
    local = ClipGuide(model=f"local-dir:{tiny_clip.local_dir}", pretrained=None)
    images = degraded_batch()
    torch.testing.assert_close(local(images), clip_guide(images))


def test_clip_guide_tag_is_read_from_the_cache_with_its_activation_and_statistics(
    tiny_clip: TinyOpenClip, clip_guide: ClipGuide, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import open_clip

    # a tag like ViT-B-32/openai (hub weights, QuickGELU, own mean/std), its file already in a hub cache
    tag = {"hf_hub": "test-org/tiny-clip/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}
    real_tag_lookup = open_clip.get_pretrained_cfg
    monkeypatch.setattr(
        open_clip,
        "get_pretrained_cfg",
        lambda model, name: tag if name == "test-tag" else real_tag_lookup(model, name),
    )
    snapshot = tmp_path / "hub" / "models--test-org--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(tiny_clip.pretrained.read_bytes())
    (tmp_path / "hub" / "models--test-org--tiny-clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--test-org--tiny-clip" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    guide = ClipGuide(
        model=tiny_clip.model,
        model_config=str(tiny_clip.model_config),
        pretrained="test-tag",
        cache_dir=str(tmp_path / "hub"),
    )
    torch.testing.assert_close(guide.mean.flatten(), torch.full((3,), 0.5))
    torch.testing.assert_close(guide.std.flatten(), torch.full((3,), 0.25))
    blocks = guide.visual.transformer.resblocks
    assert isinstance(blocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    # the same weights with GELU and the same statistics give a different embedding
    images = degraded_batch()
    prepared = guide.preprocess(images)
    torch.testing.assert_close(guide.encode(prepared), guide(images))
    assert not torch.allclose(guide.encode(prepared), clip_guide.encode(prepared), atol=1e-4)


def test_clip_guide_bad_arguments_name_the_key(
    tiny_clip: TinyOpenClip, tmp_path: Path, no_network: None
) -> None:
    with pytest.raises(ConfigError, match=r"guide.model_config=.*set guide.model=tiny-clip-test"):
        ClipGuide(model="ViT-B-32", model_config=str(tiny_clip.model_config), pretrained="x.pt")
    with pytest.raises(ConfigError, match="no such file"):
        ClipGuide(model="ViT-B-32", pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="neither a weights file nor a tag of ViT-B-32"):
        ClipGuide(model="ViT-B-32", pretrained="no_such_tag")
    with pytest.raises(ConfigError, match="not an open_clip model"):
        ClipGuide(model="ViT-Q-99", pretrained="openai")


def test_clip_guide_offline_without_weights_gives_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    attempts: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: attempts.append(args))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: attempts.append(args))
    with pytest.raises(ConfigError) as error:
        ClipGuide(model="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path / "empty"))
    assert attempts == []  # HF_HUB_OFFLINE is honoured: not even a connection attempt
    message = str(error.value)
    assert "\n" not in message
    for expected in (
        "ViT-B-32 / openai",
        "HF_HOME",
        "guide.pretrained=/path/to/",
        "guide=prior guide.checkpoint=",
    ):
        assert expected in message


def test_clip_guide_unreachable_hub_fails_fast(no_network: None, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        ClipGuide(model="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path / "empty"))
    assert time.monotonic() - start < 5.0


def test_clip_config_composes_to_the_released_setting() -> None:
    config = guide_config("clip")
    assert config._target_ == "restoration.guides.clip.ClipGuide"
    assert (config.model, config.pretrained) == ("ViT-B-32", "openai")


def test_clip_config_instantiates_with_local_weights(tiny_clip: TinyOpenClip) -> None:
    config = guide_config("clip")
    config.model, config.model_config, config.pretrained = (
        tiny_clip.model,
        str(tiny_clip.model_config),
        str(tiny_clip.pretrained),
    )
    guide = instantiate(config)
    assert isinstance(guide, ClipGuide) and guide.dim == 16


# ------------------------------------------------------------------------------------------ Stable Diffusion


def test_stable_diffusion_vae_features_are_the_pooled_posterior_mean(tiny_sd: Path) -> None:
    from diffusers import AutoencoderKL

    guide = StableDiffusionGuide(model=str(tiny_sd), resolution=32, features="vae")
    images = degraded_batch()
    osf = assert_frozen(guide, images, dim=8)
    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae").eval()
    resized = F.interpolate(images, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        latent = vae.encode(resized * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert latent.shape == (2, 4, 16, 16)
    expected = F.normalize(torch.cat([latent.mean(dim=(2, 3)), latent.amax(dim=(2, 3))], dim=1), dim=1)
    torch.testing.assert_close(osf, expected)


def test_stable_diffusion_unet_features_are_the_pooled_mid_block(tiny_sd: Path) -> None:
    from diffusers import UNet2DConditionModel

    guide = StableDiffusionGuide(model=str(tiny_sd), resolution=32, features="vae+unet", timestep=50)
    images = degraded_batch()
    osf = assert_frozen(guide, images, dim=8 + 32)
    torch.testing.assert_close(osf.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(osf, guide(images))  # deterministic: no noise, no sampling
    # reference: a full forward of the untouched UNet, its mid-block output caught on the way
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").eval()
    resized = F.interpolate(images, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        moments = guide.vae_quant_conv(guide.vae_encoder(resized * 2 - 1))
        latent = moments[:, :4] * guide.scaling_factor
        caught = []
        unet.mid_block.register_forward_hook(lambda module, inputs, output: caught.append(output))
        unet(latent, torch.full((2,), 50), encoder_hidden_states=torch.zeros(2, 77, 8))
    mid = caught[0]
    expected = F.normalize(torch.cat([mid.mean(dim=(2, 3)), mid.amax(dim=(2, 3))], dim=1), dim=1)
    torch.testing.assert_close(osf[:, 8:] * math.sqrt(2), expected)
    assert len(guide.unet.up_blocks) == 0  # the unused up path is not even held in memory


def test_stable_diffusion_bad_arguments(tiny_sd: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"guide.features"):
        StableDiffusionGuide(model=str(tiny_sd), features="text")
    with pytest.raises(ConfigError, match="multiple of 8"):
        StableDiffusionGuide(model=str(tiny_sd), resolution=30)
    with pytest.raises(ConfigError, match=r"vae/config.json"):
        StableDiffusionGuide(model=str(tmp_path / "nothing"), features="vae")


def test_stable_diffusion_offline_without_weights_gives_one_clear_error(
    no_network: None, tmp_path: Path
) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as error:
        StableDiffusionGuide(model="stabilityai/stable-diffusion-2-1-base", cache_dir=str(tmp_path / "empty"))
    assert time.monotonic() - start < 5.0
    message = str(error.value)
    assert "\n" not in message
    for expected in (
        "stabilityai/stable-diffusion-2-1-base",
        "guide.model=/path/to/sd_folder",
        "guide=prior",
    ):
        assert expected in message


def test_stable_diffusion_config_instantiates_with_a_local_folder(tiny_sd: Path) -> None:
    config = guide_config("stable_diffusion")
    config.model, config.resolution = str(tiny_sd), 32
    guide = instantiate(config)
    assert isinstance(guide, StableDiffusionGuide) and guide.dim == 40


# ---------------------------------------------------------------------------------------------------- priors


def test_prior_constyle_checkpoint_gives_the_prompter_latent(tmp_path: Path) -> None:
    checkpoint = save_tiny_prior(tmp_path)
    guide = prior_guide(checkpoint=str(checkpoint))
    assert isinstance(guide, ConStylePrompter)
    images = degraded_batch(height=32, width=32)
    osf = assert_frozen(guide, images, dim=128)
    encoder, _ = trained_network(checkpoint)
    torch.testing.assert_close(osf, encoder.eval()(images).q1)


@pytest.mark.parametrize("tokens", ["encoder", "body"])
def test_prior_ipt_checkpoint_gives_pooled_tokens(tmp_path: Path, tokens: str) -> None:
    checkpoint = save_tiny_ipt_prior(tmp_path)
    guide = prior_guide(checkpoint=str(checkpoint), task="denoise_30", tokens=tokens)
    assert isinstance(guide, IPTGuide)
    images = degraded_batch()
    osf = assert_frozen(guide, images, dim=36)
    network, _ = trained_network(checkpoint)
    resized = F.interpolate(images, size=(12, 12), mode="bicubic", antialias=True).clamp(0, 1)
    caught = []
    network.body.encoder.layers[1].register_forward_hook(lambda module, inputs, output: caught.append(output))
    with torch.no_grad():
        _, body_tokens = network.eval()(resized, "denoise_30", return_tokens=True)
    expected = (caught[0] if tokens == "encoder" else body_tokens).mean(dim=1)
    torch.testing.assert_close(osf, expected)


def test_prior_official_constyle_file_is_detected(tmp_path: Path) -> None:
    from restoration.archs.constyle import ConStyleEncoder

    encoder = ConStyleEncoder(num_classes=None)
    for name, buffer in encoder.named_buffers():
        if name.endswith("running_var"):
            buffer.fill_(2.0)
    path = tmp_path / "pretrained_ConStyle_v2.pth"
    torch.save({"params_ema": {f"encoder_q.{k}": v for k, v in encoder.state_dict().items()}}, path)
    assert isinstance(prior_guide(checkpoint=str(path)), ConStylePrompter)


def test_prior_bad_checkpoints_and_options(tmp_path: Path) -> None:
    ipt = save_tiny_ipt_prior(tmp_path)
    with pytest.raises(ConfigError, match=r"guide.task='sr_x4': this IPT has the tasks"):
        prior_guide(checkpoint=str(ipt), task="sr_x4")
    with pytest.raises(ConfigError, match=r"guide.tokens"):
        prior_guide(checkpoint=str(ipt), tokens="decoder")
    with pytest.raises(ConfigError, match=r"guide.kind"):
        prior_guide(checkpoint=str(ipt), kind="clip")
    with pytest.raises(ConfigError, match="expected IPT"):
        prior_guide(checkpoint=str(save_tiny_prior(tmp_path)), kind="ipt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "config": {"backbone": {"_target_": "restoration.archs.unet.UNet"}}}, other)
    with pytest.raises(ConfigError, match=r"restoration.archs.unet.UNet is not a prior"):
        prior_guide(checkpoint=str(other))
    with pytest.raises(ConfigError, match="no such file"):
        prior_guide(checkpoint=str(tmp_path / "missing.ckpt"))


def test_prior_config_instantiates(tmp_path: Path) -> None:
    config = guide_config("prior")
    assert OmegaConf.is_missing(config, "checkpoint")
    config.checkpoint = str(save_tiny_ipt_prior(tmp_path))
    config.task = "derain"
    guide = instantiate(config)
    assert isinstance(guide, IPTGuide) and guide.task == "derain" and guide.dim == 36


# ------------------------------------------------------------------------------------------------- OSF cache


class CountingGuide(Guide):
    """A small random guide (per-channel means through a 1×1 conv) that counts its calls."""

    def __init__(self, *, seed: int) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(3, 4, 1)
        generator = torch.Generator().manual_seed(seed)
        torch.nn.init.normal_(self.mix.weight, generator=generator)
        torch.nn.init.normal_(self.mix.bias, generator=generator)
        self.dim = 4
        self.calls = 0
        self.freeze()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.mix(images).mean(dim=(2, 3))


def write_png(path: Path, seed: int, size: tuple[int, int] = (20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def paired_source(root: Path, count: int = 3) -> PairedFolders:
    for index in range(count):
        write_png(root / "lq" / f"{index}.png", seed=index, size=(20 + 4 * index, 24))
        write_png(root / "gt" / f"{index}.png", seed=100 + index, size=(20 + 4 * index, 24))
    source = PairedFolders(lq_dir=str(root / "lq"), gt_dir=str(root / "gt"))
    source.scan()
    return source


def test_precompute_hits_misses_and_table_order(tmp_path: Path) -> None:
    source = paired_source(tmp_path / "data")
    guide = CountingGuide(seed=0)
    table = precompute(guide, source, tmp_path / "cache")
    assert table.shape == (3, 4) and guide.calls == 3
    for index in range(3):
        _, degraded = source.read(index)
        torch.testing.assert_close(table[index], guide(degraded.unsqueeze(0))[0])  # the full image
    guide.calls = 0
    torch.testing.assert_close(precompute(guide, source, tmp_path / "cache"), table)
    assert guide.calls == 0


def test_cache_entry_is_invalidated_when_the_file_changes(tmp_path: Path) -> None:
    source = paired_source(tmp_path / "data")
    guide = CountingGuide(seed=0)
    table = precompute(guide, source, tmp_path / "cache")
    changed = write_png(source.entries[1].lq, seed=7, size=(24, 24))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    guide.calls = 0
    updated = precompute(guide, source, tmp_path / "cache")
    assert guide.calls == 1
    torch.testing.assert_close(updated[[0, 2]], table[[0, 2]])
    assert not torch.allclose(updated[1], table[1])


def test_different_guides_do_not_collide(tmp_path: Path) -> None:
    source = paired_source(tmp_path / "data", count=2)
    first, second = CountingGuide(seed=0), CountingGuide(seed=1)
    assert guide_key(first) != guide_key(second)
    assert guide_key(first) == guide_key(CountingGuide(seed=0))  # same class, options and weights
    table_first = precompute(first, source, tmp_path / "cache")
    table_second = precompute(second, source, tmp_path / "cache")
    assert second.calls == 2 and not torch.allclose(table_first, table_second)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_get_or_compute_with_full_images(tmp_path: Path, clip_guide: ClipGuide) -> None:
    source = paired_source(tmp_path / "data", count=2)
    files = [entry.lq for entry in source.entries]
    images = [source.read(index)[1] for index in range(2)]  # full images of different sizes
    cache = OSFCache(tmp_path / "cache", guide_key=guide_key(clip_guide))
    assert cache.get(files[0]) is None
    osf = cache.get_or_compute(files, images, clip_guide)
    assert osf.shape == (2, clip_guide.dim)
    torch.testing.assert_close(cache.get(files[1]), clip_guide(images[1].unsqueeze(0))[0])
    torch.testing.assert_close(cache.get_or_compute(files, images, clip_guide), osf)


def test_precompute_needs_paired_data(tmp_path: Path) -> None:
    write_png(tmp_path / "clean" / "a.png", seed=0)
    source = ImageFolder(root=str(tmp_path / "clean"))
    source.scan()
    with pytest.raises(ConfigError, match="needs paired data"):
        precompute(CountingGuide(seed=0), source, tmp_path / "cache")
