"""The prompted ConStyle U-Nets (restoration/archs/prompted.py): official sizes, shapes, prompts, weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from restoration.archs import load_pretrained
from restoration.archs.constyle import ConStyleEncoder
from restoration.archs.prompted import PromptedUNet
from restoration.errors import ConfigError

from .conftest import CONF

TINY = ("constyle_nafnet_tiny", "constyle_restormer_tiny", "constyle_maxim_tiny", "constyle_cnn_tiny")
# The prompter inside every official module: query and momentum encoders without the classifier.
OFFICIAL_PROMPTER = 2 * 1_190_832


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny networks on tiny images: a second thread costs more than it saves on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompter() -> ConStyleEncoder:
    torch.manual_seed(0)
    return ConStyleEncoder(num_classes=None).eval()


def _tiny(make_config, preset: str, seed: int = 0) -> PromptedUNet:
    torch.manual_seed(seed)
    return instantiate(make_config(f"backbone={preset}").backbone)


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("preset", "official_total", "size_multiple"),
    [
        # Totals of the official constructors at their defaults (Train=True: the prompter's query and
        # momentum encoders included), as built by experiments/official/constyle.py; the files' own
        # notes (Train=False, one encoder) say 12.74M, 15.57M, 8.10M and 6.78M. Sizes: three halvings;
        # MAXIM's 16×16 blocks and grids at H/2 and 8×8 at the H/8 bottleneck need multiples of 64.
        ("constyle_nafnet", 13_930_704, 8),
        ("constyle_restormer", 16_765_792, 8),
        ("constyle_maxim", 9_292_496, 64),
        ("constyle_cnn", 7_973_331, 8),
    ],
)
def test_presets_have_the_official_size(preset: str, official_total: int, size_multiple: int) -> None:
    with torch.device("meta"):
        net = instantiate(OmegaConf.load(CONF / "backbone" / f"{preset}.yaml"))
        prompters = [ConStyleEncoder(num_classes=None) for _ in range(2)]
    assert _count(net) == official_total - OFFICIAL_PROMPTER
    assert _count(net) + sum(_count(encoder) for encoder in prompters) == official_total
    assert net.size_multiple == size_multiple


@pytest.mark.parametrize("preset", TINY)
def test_restores_prompted_images_of_the_same_size(preset: str, make_config, prompter) -> None:
    net = _tiny(make_config, preset)
    degraded = torch.rand(2, 3, net.size_multiple * 2, net.size_multiple * 3)
    with torch.no_grad():
        prompts = prompter(degraded)
    restored = net(degraded, prompts.q1, prompts.prompts)
    assert restored.shape == degraded.shape
    assert torch.isfinite(restored).all()
    restored.square().mean().backward()
    assert all(p.grad is not None for name, p in net.named_parameters() if p.requires_grad), preset


@pytest.mark.parametrize("preset", TINY)
def test_wrong_sizes_and_prompts_are_refused(preset: str, make_config, prompter) -> None:
    net = _tiny(make_config, preset)
    side = net.size_multiple * 2
    degraded = torch.rand(1, 3, side, side)
    with torch.no_grad():
        prompts = prompter(degraded)
        bad_size = torch.rand(1, 3, side + 4, side)
        with pytest.raises(ValueError, match=f"not a multiple of size_multiple={net.size_multiple}"):
            net(bad_size, prompts.q1, prompter(bad_size).prompts)
        half = prompter(degraded[..., : side // 2, :]).prompts
        with pytest.raises(ValueError, match="prompt fea0"):
            net(degraded, prompts.q1, half)
        with pytest.raises(ValueError, match="latent"):
            net(degraded, prompts.q1[:, :64], prompts.prompts)
        with pytest.raises(ValueError, match="3 prompts"):
            net(degraded, prompts.q1, prompts.prompts[:2])


@pytest.mark.parametrize("preset", TINY)
def test_the_latent_and_each_prompt_map_change_the_output(preset: str, make_config, prompter) -> None:
    net = _tiny(make_config, preset).eval()
    degraded = torch.rand(2, 3, net.size_multiple * 2, net.size_multiple * 2)
    with torch.no_grad():
        prompts = prompter(degraded)
        restored = net(degraded, prompts.q1, prompts.prompts)
        # Unit-scale replacements: a random prompter's own outputs are small (~1e-3 at H/8).
        changed = [net(degraded, torch.randn_like(prompts.q1), prompts.prompts)]
        for index, prompt in enumerate(prompts.prompts):
            maps = [*prompts.prompts[:index], torch.randn_like(prompt), *prompts.prompts[index + 1 :]]
            changed.append(net(degraded, prompts.q1, maps))
    differences = [(other - restored).abs().amax().item() for other in changed]
    assert min(differences) > 1e-5, differences


@pytest.mark.parametrize("preset", TINY)
def test_official_style_checkpoints_load_without_the_prompter(
    preset: str, make_config, prompter, tmp_path: Path
) -> None:
    saved = _tiny(make_config, preset, seed=1).eval()
    # Official checkpoints hold the prompter (ConStyle.encoder_q/encoder_k, queue) beside the restorer.
    state = {
        **saved.state_dict(),
        **{f"ConStyle.encoder_q.{name}": value for name, value in prompter.state_dict().items()},
        "ConStyle.queue": torch.randn(128, 32),
    }
    path = tmp_path / "net_g.pth"
    torch.save({"params": state}, path)
    loaded = _tiny(make_config, preset, seed=2).eval()
    with pytest.raises(ConfigError, match="unexpected: ConStyle"):
        load_pretrained(loaded, path)
    load_pretrained(loaded, path, exclude=("ConStyle.",))
    degraded = torch.rand(1, 3, saved.size_multiple, saved.size_multiple)
    with torch.no_grad():
        prompts = prompter(degraded)
        torch.testing.assert_close(
            loaded(degraded, prompts.q1, prompts.prompts), saved(degraded, prompts.q1, prompts.prompts)
        )
