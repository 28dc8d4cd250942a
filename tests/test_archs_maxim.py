"""MAXIM-1S (restoration/archs/maxim.py): official size and keys, any input size, training, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from restoration.archs import load_pretrained
from restoration.archs.common import pad_to_multiple
from restoration.archs.maxim import Maxim, mix_across_grid, mix_within_blocks, nearest_downsample
from restoration.errors import ConfigError

from .conftest import CONF, fit_losses


def _preset(name: str, **overrides) -> nn.Module:
    return instantiate(OmegaConf.load(CONF / "backbone" / f"{name}.yaml"), **overrides)


def _tiny(**overrides) -> Maxim:
    settings = OmegaConf.to_container(OmegaConf.load(CONF / "backbone" / "maxim_1s_tiny.yaml"))
    del settings["_target_"]
    return Maxim(**{**settings, **overrides})


def _is_unused_official_layer(name: str) -> bool:
    """The port's never-called layers: every encoder's cross-gating block, every decoder's down-sampling."""
    return ".cross_gating_block." in name or (
        "decoder_block" in name and "UNetEncoderBlock_0.Conv_1." in name
    )


def test_official_preset_has_the_official_size_and_keys() -> None:
    with torch.device("meta"):
        net = _preset("maxim_1s")
        defaults = Maxim()
    state = net.state_dict()
    assert {name: p.shape for name, p in defaults.state_dict().items()} == {
        name: p.shape for name, p in state.items()
    }
    # Maxim() of ConStyle v2 archs/Maxim_arch.py, counted by instantiating it through
    # experiments/official/maxim.py: 8,175,683 parameters in 984 state-dict entries.
    assert sum(p.numel() for p in net.parameters()) == 8_175_683
    assert len(state) == 984
    # Of those, 2,041,312 sit in layers its forward never calls: frozen here.
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(_is_unused_official_layer(name) for name in frozen)
    assert sum(p.numel() for p in net.parameters() if not p.requires_grad) == 2_041_312
    assert net.size_multiple == 64  # 8×8 blocks and grid in the bottleneck at 1/8 resolution
    shapes = {  # a few official keys with their shapes, one of each kind of block
        "stage_0_input_conv_2.weight": (128, 3, 3, 3),
        "stage_0_encoder_block_0.SplitHeadMultiAxisGmlpLayer_1.GridGmlpLayer.GridGatingUnit.Dense_0.weight": (
            256,
            256,
        ),
        "stage_0_encoder_block_2.channel_attention_block_11.channel_attention.Conv_0.weight": (32, 128, 1, 1),
        "stage_0_global_block_1.channel_attention_block_1_1.channel_mixing.Dense_1.bias": (128,),
        "stage_0_cross_gating_block_0.ConvTranspose_0.weight": (64, 32, 2, 2),
        "stage_0_cross_gating_block_2.SplitHeadMultiAxisGating_y.Dense_1.weight": (64, 64),
        "UpSampleRatio_8.Conv_0.weight": (32, 128, 1, 1),
        "UpSampleRatio_11.Conv_0.weight": (128, 32, 1, 1),
        "stage_0_decoder_block_1.UNetEncoderBlock_0.Conv_0.weight": (64, 256, 1, 1),
        "stage_0_decoder_block_0.UNetEncoderBlock_0.Conv_1.weight": (32, 32, 4, 4),
        "stage_0_output_conv_0.weight": (3, 32, 3, 3),
    }
    assert {name: tuple(state[name].shape) for name in shapes} == shapes


def test_tiny_preset_is_small_and_fully_trainable() -> None:
    with torch.device("meta"):
        net = _tiny()
    assert sum(p.numel() for p in net.parameters()) < 200_000  # 172k: a few seconds per smoke run
    assert all(p.requires_grad for p in net.parameters())
    assert not any(_is_unused_official_layer(name) for name in net.state_dict())
    assert net.size_multiple == 16


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the tiny preset
        {"depth": 2, "num_supervision_scales": 1, "block_size_hr": (2, 4), "high_res_stages": 1},
    ],
    ids=["tiny", "depth2"],
)
def test_any_size_comes_out_as_it_went_in(settings: dict) -> None:
    torch.manual_seed(0)
    net = _tiny(**settings).eval()
    images = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        restored = net(images)
        # Padding inside forward is the same as padding outside and cropping: no shift, no border mix-up.
        padded = net(pad_to_multiple(images, net.size_multiple))[..., :37, :53]
        tiny = net(torch.rand(1, 3, 5, 7))
    assert restored.shape == images.shape and tiny.shape == (1, 3, 5, 7)
    assert torch.isfinite(restored).all()
    torch.testing.assert_close(restored, padded, rtol=0, atol=1e-6)


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    net = _tiny()
    net(torch.rand(2, 3, 24, 40)).square().mean().backward()
    # (not "non-zero": a channel attention's squeeze has 2 ReLU units at 8 features, which may both be off)
    assert [name for name, p in net.named_parameters() if p.grad is None] == []


def test_never_called_official_layers_are_frozen_and_get_no_gradient() -> None:
    torch.manual_seed(0)
    net = _tiny(keep_unused_layers=True)
    net(torch.rand(1, 3, 16, 16)).square().mean().backward()
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    without_gradient = {name for name, p in net.named_parameters() if p.grad is None}
    assert (
        frozen
        == without_gradient
        == {name for name, _ in net.named_parameters() if _is_unused_official_layer(name)}
    )
    assert len(frozen) == 222  # as many as in the official network: 6 cross-gating blocks, 3 convs


def test_tiny_preset_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = _tiny()
    target = torch.rand(2, 3, 16, 16)
    degraded = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    losses = fit_losses(net, degraded, target, steps=10, lr=1e-3)
    assert losses[-1] < 0.85 * losses[0], losses  # about 0.75 with seeds 0-2


@pytest.mark.parametrize("keep_unused_layers", [False, True])
def test_checkpoint_round_trips_through_load_pretrained(keep_unused_layers: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = _tiny(keep_unused_layers=keep_unused_layers).eval()
    path = tmp_path / "maxim.pth"
    torch.save({"params": saved.state_dict()}, path)
    torch.manual_seed(1)
    loaded = load_pretrained(_tiny(keep_unused_layers=keep_unused_layers), path, strict=True).eval()
    images = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(loaded(images), saved(images))


def test_official_checkpoint_needs_the_never_called_layers(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"params": _tiny(keep_unused_layers=True).state_dict()}, path)
    with pytest.raises(ConfigError, match=r"unexpected: .*cross_gating_block"):
        load_pretrained(_tiny(keep_unused_layers=False), path, strict=True)


def test_block_mixing_uses_row_major_tokens_inside_each_block() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 4, 6, 3)  # N×H×W×C, blocks of 2×3
    dense = nn.Linear(6, 6)
    expected = features.clone()
    for top in range(0, 4, 2):
        for left in range(0, 6, 3):
            tokens = features[:, top : top + 2, left : left + 3].reshape(2, 6, 3)  # token = row·3 + column
            mixed = dense(tokens.transpose(1, 2)).transpose(1, 2)
            expected[:, top : top + 2, left : left + 3] = mixed.reshape(2, 2, 3, 3)
    torch.testing.assert_close(mix_within_blocks(features, dense, (2, 3)), expected)


def test_grid_mixing_mixes_pixels_one_cell_apart() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 4, 6, 3)  # a 2×3 grid of 2×2 cells
    dense = nn.Linear(6, 6)
    expected = features.clone()
    for row in range(2):
        for column in range(2):
            tokens = features[:, row::2, column::2].reshape(2, 6, 3)  # token = cell_row·3 + cell_column
            mixed = dense(tokens.transpose(1, 2)).transpose(1, 2)
            expected[:, row::2, column::2] = mixed.reshape(2, 2, 3, 3)
    torch.testing.assert_close(mix_across_grid(features, dense, (2, 3)), expected)


def test_mixing_rejects_maps_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="5×6 does not divide into blocks of 2×3"):
        mix_within_blocks(torch.zeros(1, 5, 6, 3), nn.Linear(6, 6), (2, 3))


@pytest.mark.parametrize("factor", [2, 4])
def test_nearest_downsample_samples_pixel_centres(factor: int) -> None:
    images = torch.arange(16.0 * 16).reshape(1, 1, 16, 16)
    centres = [int((k + 0.5) * factor) for k in range(16 // factor)]  # the official index formula
    assert torch.equal(nearest_downsample(images, factor), images[:, :, centres][:, :, :, centres])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"out_channels": 1}, "in_channels == out_channels"),
        ({"num_supervision_scales": 4}, "num_supervision_scales=4"),
        ({"high_res_stages": 4}, "high_res_stages=4"),
        ({"block_size_hr": (0, 4)}, r"block_size_hr=\(0, 4\)"),
        ({"features": 2}, "channels_reduction=4"),
    ],
)
def test_bad_settings_fail_early(settings: dict, message: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        _tiny(**settings)
