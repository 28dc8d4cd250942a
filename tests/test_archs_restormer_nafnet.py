"""Restormer and NAFNet: official sizes, any input size, training, checkpoints, TLC, dual-pixel Restormer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from restoration.archs import load_pretrained
from restoration.archs.nafnet import LocalAvgPool2d, NAFBlock, NAFNet
from restoration.archs.restormer import BiasFreeLayerNorm, Restormer, TransformerBlock, TransposedAttention
from restoration.errors import ConfigError

from .conftest import CONF, fit_losses

TINY = ("restormer_tiny", "nafnet_tiny")


def _backbone(preset: str, **overrides) -> nn.Module:
    return instantiate(OmegaConf.load(CONF / "backbone" / f"{preset}.yaml"), **overrides)


def _tiny_nafnet(**overrides) -> NAFNet:
    """The tiny NAFNet with non-zero residual scales, so that every block contributes to the output."""
    net = _backbone("nafnet_tiny", **overrides)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in net.named_parameters():
        if name.endswith(("beta", "gamma")):
            parameter.data = torch.rand(parameter.shape, generator=generator) - 0.5
    return net


@pytest.mark.parametrize(
    ("preset", "parameters"),
    [
        ("restormer", 26_126_644),  # Restormer paper / official Restormer: 26.13M
        ("nafnet_w32_sidd", 29_159_715),
        ("nafnet_w64_gopro", 67_888_835),
        ("nafnet_w64_sidd", 115_982_915),
    ],
)
def test_official_presets_have_the_official_parameter_counts(preset: str, parameters: int) -> None:
    with torch.device("meta"):
        net = _backbone(preset)
    assert sum(parameter.numel() for parameter in net.parameters()) == parameters


@pytest.mark.parametrize(
    "build",
    [
        lambda: _backbone("restormer_tiny"),
        lambda: _backbone("restormer_tiny", norm_type="bias_free"),
        lambda: _tiny_nafnet(),
        lambda: _tiny_nafnet(pooling_type="tlc", train_size=16),
    ],
    ids=["restormer", "restormer_bias_free", "nafnet", "nafnet_tlc"],
)
@pytest.mark.parametrize("size", [(37, 53), (3, 5)])
def test_any_input_size_gives_the_same_size_out(build, size: tuple[int, int]) -> None:
    net = build().eval()
    degraded = torch.rand(2, 3, *size)
    with torch.no_grad():
        restored = net(degraded)
    assert restored.shape == degraded.shape
    assert torch.isfinite(restored).all()


def test_dual_pixel_restormer_maps_both_views_to_one_image() -> None:
    net = _backbone("restormer_tiny", in_channels=6, dual_pixel=True).eval()
    assert "skip_conv.weight" in net.state_dict()
    with torch.no_grad():
        restored = net(torch.rand(1, 6, 37, 53))
    assert restored.shape == (1, 3, 37, 53)
    with pytest.raises(ValueError, match="in_channels \\(6\\) must equal out_channels \\(3\\)"):
        Restormer(in_channels=6, out_channels=3)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Restormer(dim=8, heads=(1, 3, 2, 2)), "16 channels cannot be split into 3 heads"),
        (lambda: Restormer(num_blocks=(1, 1, 1)), "four entries"),
        (lambda: Restormer(norm_type="BiasFree"), "norm_type 'BiasFree'"),
        (lambda: NAFNet(encoder_blocks=(1, 1), decoder_blocks=(1,)), "as many decoder levels"),
        (lambda: NAFNet(pooling_type="local"), "pooling_type 'local'"),
        (lambda: NAFNet(pooling_type="tlc", train_size=(256, 256, 3)), "train_size"),
    ],
)
def test_bad_settings_are_value_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("preset", TINY)
def test_gradients_reach_every_parameter(preset: str) -> None:
    net = _tiny_nafnet() if preset == "nafnet_tiny" else _backbone(preset)
    net(torch.rand(1, 3, 16, 16)).square().mean().backward()
    without = [
        name
        for name, parameter in net.named_parameters()
        if parameter.grad is None or not parameter.grad.any()
    ]
    assert without == []


@pytest.mark.parametrize("preset", TINY)
def test_tiny_preset_fits_a_fixed_batch(preset: str) -> None:
    torch.manual_seed(0)
    net = _backbone(preset)
    clean = torch.rand(2, 3, 16, 16)
    degraded = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
    losses = fit_losses(net, degraded, clean, steps=5, lr=5e-3)
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    "build",
    [lambda: _backbone("restormer_tiny"), lambda: _tiny_nafnet(pooling_type="tlc", train_size=16)],
    ids=["restormer", "nafnet_tlc"],
)
def test_official_container_round_trips_through_load_pretrained(build, tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved, loaded = build().eval(), build().eval()
    torch.save({"params": saved.state_dict()}, tmp_path / "net.pth")  # BasicSR's release format
    load_pretrained(loaded, tmp_path / "net.pth", strict=True)
    degraded = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(degraded), saved(degraded))


def test_bias_free_checkpoint_does_not_fit_the_with_bias_restormer(tmp_path: Path) -> None:
    torch.save(
        {"params": _backbone("restormer_tiny", norm_type="bias_free").state_dict()}, tmp_path / "net.pth"
    )
    with pytest.raises(ConfigError, match=r"missing: encoder_level1\.0\.norm1\.body\.bias"):
        load_pretrained(_backbone("restormer_tiny"), tmp_path / "net.pth")


def test_blocks_keep_the_official_key_names() -> None:
    # Other networks reuse these blocks and load official checkpoints through these names.
    assert sorted(TransformerBlock(16, num_heads=1).state_dict()) == [
        "attn.project_out.weight",
        "attn.qkv.weight",
        "attn.qkv_dwconv.weight",
        "attn.temperature",
        "ffn.dwconv.weight",
        "ffn.project_in.weight",
        "ffn.project_out.weight",
        "norm1.body.bias",
        "norm1.body.weight",
        "norm2.body.bias",
        "norm2.body.weight",
    ]
    assert sorted(NAFBlock(16).state_dict()) == sorted(
        [
            "beta",
            "gamma",
            "norm1.weight",
            "norm1.bias",
            "norm2.weight",
            "norm2.bias",
            "sca.1.weight",
            "sca.1.bias",
        ]
        + [f"conv{index}.{kind}" for index in range(1, 6) for kind in ("weight", "bias")]
    )


def test_transposed_attention_is_the_papers_channel_attention() -> None:
    """Softmax over channel affinities of L2-normalised queries and keys times the temperature (MDTA)."""
    torch.manual_seed(0)
    attention = TransposedAttention(8, num_heads=2)
    attention.temperature.data = torch.tensor([0.5, 3.0]).view(2, 1, 1)
    features = torch.randn(2, 8, 5, 7)
    queries, keys, values = attention.qkv_dwconv(attention.qkv(features)).reshape(2, 3, 2, 4, 35).unbind(1)
    queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    weights = (queries @ keys.transpose(-2, -1) * attention.temperature).softmax(dim=-1)
    expected = attention.project_out((weights @ values).reshape(2, 8, 5, 7))
    torch.testing.assert_close(attention(features), expected)


def test_bias_free_norm_scales_without_centring() -> None:
    features = torch.randn(2, 6, 4, 4) + 3.0
    normalised = BiasFreeLayerNorm(6)(features)
    torch.testing.assert_close(
        normalised, features / (features.var(dim=1, keepdim=True, correction=0) + 1e-5).sqrt()
    )
    assert normalised.mean(dim=1).abs().min() > 1.0  # a layer norm would centre each pixel on 0


@pytest.mark.parametrize(("height", "width", "kernel"), [(9, 11, (4, 3)), (6, 10, (8, 5)), (10, 6, (3, 9))])
def test_local_average_is_a_box_filter_with_replicated_borders(
    height: int, width: int, kernel: tuple[int, int]
) -> None:
    features = torch.randn(2, 3, height, width)
    window = (min(kernel[0], height), min(kernel[1], width))
    means = F.avg_pool2d(features, window, stride=1)
    rows, columns = window[0] - 1, window[1] - 1
    expected = F.pad(
        means, (columns // 2, columns - columns // 2, rows // 2, rows - rows // 2), mode="replicate"
    )
    torch.testing.assert_close(LocalAvgPool2d(kernel)(features), expected)


def test_tlc_is_global_pooling_up_to_the_base_size_and_local_beyond() -> None:
    """TLC's window is 1.5× the training crop at each level: no larger input sees a difference."""
    global_net = _tiny_nafnet().eval()
    tlc_net = _tiny_nafnet(pooling_type="tlc", train_size=16).eval()
    tlc_net.load_state_dict(global_net.state_dict(), strict=True)
    with torch.no_grad():
        at_base = torch.rand(1, 3, 24, 24)  # 1.5 × 16
        assert torch.equal(tlc_net(at_base), global_net(at_base))
        at_train = torch.rand(1, 3, 16, 16)
        assert torch.equal(tlc_net(at_train), global_net(at_train))
        larger = torch.rand(1, 3, 48, 48)
        assert (tlc_net(larger) - global_net(larger)).abs().max() > 1e-4


def test_local_average_over_a_window_covering_the_map_is_the_global_average() -> None:
    features = torch.randn(2, 3, 7, 5)
    torch.testing.assert_close(LocalAvgPool2d((7, 8))(features), features.mean(dim=(-2, -1), keepdim=True))
