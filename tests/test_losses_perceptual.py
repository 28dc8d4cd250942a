"""The VGG19 perceptual loss of PTG-RM: the weighted L1 over relu1_1..relu5_1 by hand, local weights only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from restoration.errors import ConfigError
from restoration.losses import VGGPerceptualLoss

# torchvision vgg19().features: conv indices up to relu5_1 and their (in, out) channels; "M": a max-pool.
_LAYOUT = [0, 2, "M", 5, 7, "M", 10, 12, 14, 16, "M", 19, 21, 23, 25, "M", 28]
_CHANNELS = [
    (3, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 256),
    *[(256, 256)] * 3,
    (256, 512),
    *[(512, 512)] * 4,
]
# the activations PTG-RM compares: after conv 0 (relu1_1), 5 (relu2_1), 10, 19 and 28
_TAPS = {0: 1 / 32, 5: 1 / 16, 10: 1 / 8, 19: 1 / 4, 28: 1.0}


def save_random_vgg19(path: Path) -> dict[str, torch.Tensor]:
    """A random torchvision-format VGG19 file (only the feature layers PTG-RM uses, plus a classifier key)."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {"classifier.0.bias": torch.zeros(4096)}
    convs = [index for index in _LAYOUT if index != "M"]
    for index, (inputs, outputs) in zip(convs, _CHANNELS, strict=True):
        scale = (2.0 / (9 * inputs)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(outputs, inputs, 3, 3, generator=generator) * scale
        state[f"features.{index}.bias"] = torch.randn(outputs, generator=generator) * 0.01
    torch.save(state, path)
    return state


def _by_hand(
    state: dict[str, torch.Tensor], restored: torch.Tensor, target: torch.Tensor, mean: bool
) -> torch.Tensor:
    def taps(images: torch.Tensor) -> dict[int, torch.Tensor]:
        found = {}
        for layer in _LAYOUT:
            if layer == "M":
                images = F.max_pool2d(images, 2)
                continue
            weight, bias = state[f"features.{layer}.weight"], state[f"features.{layer}.bias"]
            images = F.relu(F.conv2d(images, weight, bias, padding=1))
            if layer in _TAPS:
                found[layer] = images
        return found

    ours, theirs = taps(restored), taps(target)
    return sum(
        weight
        * ((ours[layer] - theirs[layer]).abs().mean() if mean else (ours[layer] - theirs[layer]).abs().sum())
        for layer, weight in _TAPS.items()
    )


@pytest.mark.parametrize(("normalize", "reduction"), [(False, "sum"), (True, "mean")])
def test_matches_the_weighted_l1_over_five_relu_features(
    tmp_path: Path, normalize: bool, reduction: str
) -> None:
    state = save_random_vgg19(tmp_path / "vgg19.pth")
    loss = VGGPerceptualLoss(weights=str(tmp_path / "vgg19.pth"), normalize=normalize, reduction=reduction)
    generator = torch.Generator().manual_seed(1)
    restored = torch.rand(2, 3, 32, 32, generator=generator, requires_grad=True)
    target = torch.rand(2, 3, 32, 32, generator=generator)
    value = loss(restored, target)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    prepare = (lambda images: (images - mean) / std) if normalize else (lambda images: images)
    expected = _by_hand(state, prepare(restored.detach()), prepare(target), reduction == "mean")
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=0)
    value.backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0
    assert all(not param.requires_grad and param.grad is None for param in loss.parameters())
    loss.train()
    assert not loss.training


def test_missing_or_wrong_weights_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=rf"{tmp_path}/hub/checkpoints/vgg19-dcbb9e9d.pth not found \(put"):
        VGGPerceptualLoss()
    with pytest.raises(ConfigError, match=r"nowhere\.pth not found \(check the path"):
        VGGPerceptualLoss(weights=str(tmp_path / "nowhere.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(
        ConfigError, match=r"partial\.pth: not torchvision VGG19 weights: missing or misshapen"
    ):
        VGGPerceptualLoss(weights=str(tmp_path / "partial.pth"))
