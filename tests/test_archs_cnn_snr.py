"""ConStyle v2's plain CNN U-Net and the SNR-aware network: sizes, shapes, training, weights, SNR map."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from restoration.archs import load_pretrained
from restoration.archs.cnn_unet import CNNUNet
from restoration.archs.snr_aware import REFINER_PREFIX, SNRAware, SNRTransformer, compute_snr_map
from restoration.errors import ConfigError

from .conftest import fit_losses

TINY = ("cnn_unet_tiny", "snr_aware_tiny")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny networks on tiny images: a second thread costs more than it saves, and much more when the
    machine's cores are shared (1 thread: ~5 s for this file; 2 on a loaded 2-core machine: ~45 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _backbone(make_config, preset: str) -> torch.nn.Module:
    return instantiate(make_config(f"backbone={preset}").backbone)


def _lowlight_scenes(batch: int = 2, height: int = 32, width: int = 48) -> torch.Tensor:
    """Brightness ramps under a fixed-amplitude checkerboard.

    The SNR of such an image grows with its brightness, so the brighter patches pass the attention's
    0.5 threshold and the darker ones do not: the masked path of the transformer is exercised (random
    pixels would leave every patch below it).
    """
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    checkerboard = ((rows + cols) % 2 * 2 - 1).float()
    ramps = torch.linspace(0.05, 0.6, width).expand(batch, 1, height, width)
    ramps = ramps * torch.linspace(1, 0.7, batch).view(-1, 1, 1, 1)
    return (ramps + 0.03 * checkerboard).expand(batch, 3, height, width).clamp(0, 1)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # Official archs/Conv_arch.py OriginConv() at its defaults (dim=48), the network of
        # options/All_in_One/train/train_OriginModel.yml; counted by experiments/official/cnn_unet.py
        # (the official file's own note: "Total params: 5.03 M").
        ("cnn_unet", 5_032_995),
        # Official low_light_transformer2 with options/train/SID.yml (nf=64, front_RBs=1, back_RBs=1):
        # 39,795,834 parameters, of which 671,735 are the PTG-RM refiner refinement11; counted by
        # experiments/official/snr_aware.py.
        ("snr_aware", 39_124_099),
    ],
)
def test_presets_have_the_official_parameter_count(preset: str, expected: int, make_config) -> None:
    with torch.device("meta"):
        net = _backbone(make_config, preset)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("size", [(37, 53), (5, 7)])
def test_any_input_size_gives_the_same_size_out(preset: str, size: tuple[int, int], make_config) -> None:
    torch.manual_seed(0)
    net = _backbone(make_config, preset).eval()
    degraded = torch.rand(2, 3, *size)
    with torch.no_grad():
        restored = net(degraded)
    assert restored.shape == degraded.shape
    assert torch.isfinite(restored).all()


@pytest.mark.parametrize("preset", TINY)
def test_gradients_reach_every_parameter(preset: str, make_config) -> None:
    torch.manual_seed(0)
    net = _backbone(make_config, preset)
    degraded = _lowlight_scenes()
    F.l1_loss(net(degraded), torch.rand_like(degraded)).backward()
    without = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


@pytest.mark.parametrize("preset", TINY)
def test_tiny_preset_fits_a_fixed_batch(preset: str, make_config) -> None:
    torch.manual_seed(0)
    net = _backbone(make_config, preset)
    clean = torch.rand(2, 3, 32, 32)
    degraded = 0.5 * clean + 0.05 * torch.randn_like(clean)
    losses = fit_losses(net, degraded, clean, steps=15, lr=1e-3)
    # Over seeds 0-3 both tiny presets end at 0.55-0.7 of the first loss.
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def _fresh_copy_differs(
    make_config, preset: str, net: torch.nn.Module, degraded: torch.Tensor
) -> torch.nn.Module:
    """Another network of the preset, whose output differs from ``net``'s until weights are loaded."""
    torch.manual_seed(1)
    other = _backbone(make_config, preset).eval()
    with torch.no_grad():
        assert not torch.allclose(other(degraded), net(degraded))
    return other


def test_cnn_unet_loads_a_basicsr_checkpoint_strictly(tmp_path: Path, make_config) -> None:
    torch.manual_seed(0)
    net = _backbone(make_config, "cnn_unet_tiny").eval()
    # ConStyle v2 saves with BasicSR: {"params": state_dict} under the official key names.
    path = tmp_path / "net_g_latest.pth"
    torch.save({"params": net.state_dict()}, path)
    assert "Process_Module_l1.0.1.weight" in net.state_dict()  # conv 0, PReLU 1 of the first layer
    degraded = torch.rand(1, 3, 24, 40)
    other = _fresh_copy_differs(make_config, "cnn_unet_tiny", net, degraded)
    loaded = load_pretrained(other, path, strict=True)
    with torch.no_grad():
        assert torch.equal(loaded(degraded), net(degraded))


def _tiny_snr_aware(make_config, seed: int = 0) -> SNRAware:
    torch.manual_seed(seed)
    return _backbone(make_config, "snr_aware_tiny").eval()


def test_snr_aware_loads_an_snr_aware_checkpoint_strictly(tmp_path: Path, make_config) -> None:
    net = _tiny_snr_aware(make_config)
    # The SNR-Aware and PTG-RM code saves the bare state dict (models/base_model.py save_network).
    path = tmp_path / "snr_aware.pth"
    torch.save(net.state_dict(), path)
    degraded = _lowlight_scenes()
    other = _fresh_copy_differs(make_config, "snr_aware_tiny", net, degraded)
    loaded = load_pretrained(other, path, strict=True)
    with torch.no_grad():
        assert torch.equal(loaded(degraded), net(degraded))


def test_snr_aware_loads_a_ptg_rm_checkpoint_and_sets_the_refiner_aside(tmp_path: Path, make_config) -> None:
    net = _tiny_snr_aware(make_config)
    refiner = {f"{REFINER_PREFIX}conv_last3.weight": torch.zeros(3, 16, 3, 3)}
    path = tmp_path / "ptg_rm.pth"
    torch.save({**net.state_dict(), **refiner}, path)
    degraded = _lowlight_scenes()
    loaded = load_pretrained(_fresh_copy_differs(make_config, "snr_aware_tiny", net, degraded), path)
    assert loaded.pretrained_mismatch == {"missing": [], "unexpected": list(refiner)}
    with torch.no_grad():
        assert torch.equal(loaded(degraded), net(degraded))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", r"1 missing: conv_last\.bias"),
        ("add", r"1 unexpected: extra\.weight"),
    ],
)
def test_snr_aware_release_loading_stays_strict_on_its_own_keys(
    change: str, message: str, tmp_path: Path, make_config
) -> None:
    state = _tiny_snr_aware(make_config).state_dict()
    if change == "drop":
        del state["conv_last.bias"]
    else:
        state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=message):
        load_pretrained(_tiny_snr_aware(make_config), path)


def _reference_snr_map(image: np.ndarray) -> np.ndarray:
    """The SNR map of one 3×H×W float64 image, pixel by pixel (cv2.blur's reflect-101 border)."""
    luminance = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    height, width = luminance.shape

    def mirror(index: int, size: int) -> int:
        return -index if index < 0 else 2 * (size - 1) - index if index >= size else index

    blurred = np.zeros_like(luminance)
    for row in range(height):
        for col in range(width):
            window = [
                luminance[mirror(row + dr, height), mirror(col + dc, width)]
                for dr in range(-2, 3)
                for dc in range(-2, 3)
            ]
            blurred[row, col] = sum(window) / 25
    snr = blurred / (np.abs(luminance - blurred) + 1e-4)
    return np.clip(snr / (snr.max() + 1e-4), 0, 1)


def test_snr_map_matches_a_pixel_by_pixel_computation() -> None:
    images = torch.rand(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = np.stack([_reference_snr_map(image) for image in images.numpy()])[:, None]
    np.testing.assert_allclose(compute_snr_map(images).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_snr_map_of_flat_images_by_hand() -> None:
    # Flat image of value c: blur = c, noise 0, so SNR = c / 1e-4 everywhere, the maximum too, and the
    # map is (c / 1e-4) / (c / 1e-4 + 1e-4). At c = 1e-6: 0.01 / 0.0101 = 1 / 1.01. Black: 0 / 1e-4 = 0.
    flat = torch.full((1, 3, 8, 9), 1e-6)
    torch.testing.assert_close(compute_snr_map(flat), torch.full((1, 1, 8, 9), 1 / 1.01))
    assert torch.equal(compute_snr_map(torch.zeros(1, 3, 8, 9)), torch.zeros(1, 1, 8, 9))


def test_snr_aware_uses_a_given_snr_map(make_config) -> None:
    net = _tiny_snr_aware(make_config)
    degraded = _lowlight_scenes()
    with torch.no_grad():
        computed = net(degraded)
        assert torch.equal(net(degraded, snr_map=compute_snr_map(degraded)), computed)
        assert not torch.allclose(net(degraded, snr_map=torch.ones(2, 1, 32, 48)), computed)


def _masked_attention_reference(layer, tokens: torch.Tensor, patch_snr: torch.Tensor) -> torch.Tensor:
    """One layer as the paper's code writes it: scores / sqrt(d), hidden keys filled with -1e9, softmax."""
    attention = layer.slf_attn
    batch, length, _ = tokens.shape
    normed = attention.layer_norm(tokens)
    heads = [
        projection(normed).view(batch, length, attention.heads, -1).transpose(1, 2)
        for projection in (attention.w_qs, attention.w_ks, attention.w_vs)
    ]
    query, key, value = heads
    scores = query @ key.transpose(-2, -1) / attention.head_dim**0.5
    scores = scores.masked_fill((patch_snr <= 0.5)[:, None, None, :], -1e9)
    attended = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, length, -1)
    tokens = tokens + attention.fc(attended)
    return layer.pos_ffn(tokens)


def test_snr_masked_attention_matches_the_masked_fill_formulation() -> None:
    torch.manual_seed(0)
    transformer = SNRTransformer(dim=32, layers=1, heads=2, head_dim=8, hidden_dim=64)
    tokens = torch.randn(3, 10, 32)
    # Some keys hidden; every key hidden (the -1e9 fill then gives uniform attention); none hidden.
    patch_snr = torch.stack([torch.linspace(0, 1, 10), torch.full((10,), 0.5), torch.full((10,), 0.9)])
    with torch.no_grad():
        expected = _masked_attention_reference(transformer.layer_stack[0], tokens, patch_snr)
        torch.testing.assert_close(transformer(tokens, patch_snr), expected)


def test_bad_inputs_and_settings_fail_early() -> None:
    with pytest.raises(ValueError, match=r"N×3×H×W RGB images, got shape \(1, 1, 16, 16\)"):
        SNRAware(width=4, short_range_blocks=0, transformer_layers=0)(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"snr_map of shape \(1, 1, 8, 8\); expected \(1, 1, 16, 16\)"):
        SNRAware(width=4, short_range_blocks=0, transformer_layers=0)(
            torch.rand(1, 3, 16, 16), snr_map=torch.rand(1, 1, 8, 8)
        )
    with pytest.raises(ValueError, match="width=7; expected an even number"):
        CNNUNet(width=7)
    with pytest.raises(ValueError, match="heads=0; expected >= 1"):
        SNRAware(heads=0)
