"""PTG-RM refiner: parameter counts of the spec, ablation switches, output formulas, any size, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from restoration.archs import load_pretrained
from restoration.archs.ptgrm import PTGRM, spatially_varying_conv
from restoration.archs.snr_aware import REFINER_PREFIX

from .conftest import CONF

# docs spec ptgrm.md, "Numbers to check against": parameters per component at D = 512.
COMPONENTS = {
    "R_e": (("r1", "r1norm", "r2", "r2norm", "r22"), 5_536),
    "S_m": (("mapp_position1", "mapp_position2"), 544),
    "S_c": (("mapp_position11", "mapp_position22"), 544),
    "T_m": (("mapp_space1", "mapp_space2"), 147_456),
    "T_c": (("mapp_space11", "mapp_space22"), 147_456),
    "R_m": (("r1_mask", "r2_mask"), 13_968),
    "R_l": (("transformer",), 17_172),
    "R_s": (("resnet",), 4_640),
    "channel attention": (("mapping11", "mapping12"), 1_536),
    "R_p": (("mapp11", "mapp12"), 311_040),
    "R_o": (("mapp1",), 144),
    "R_f": (("refine11",), 512),
    "R_d": (("r1_decoder", "r2_decoder", "conv_last2", "conv_last3"), 21_187),
}
ENCODER_DECODER = {
    "r1",
    "r1norm",
    "r2",
    "r2norm",
    "r22",
    "r1_decoder",
    "r2_decoder",
    "conv_last2",
    "conv_last3",
}


def _count(net: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in net.parameters())


def _top_level_names(net: torch.nn.Module) -> set[str]:
    return {name.split(".")[0] for name, _ in net.named_parameters()}


def _inputs(batch: int = 2, height: int = 32, width: int = 32, osf_dim: int = 512, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    target_out = torch.rand(batch, 3, height, width, generator=generator) * 1.4 - 0.2
    degraded = torch.rand(batch, 3, height, width, generator=generator) * 0.3
    osf = F.normalize(torch.randn(batch, osf_dim, generator=generator), dim=1)
    return target_out, degraded, osf


def test_parameter_counts_match_the_spec() -> None:
    net = PTGRM()
    assert _count(net) == 671_735
    per_module: dict[str, int] = {}
    for name, parameter in net.named_parameters():
        per_module[name.split(".")[0]] = per_module.get(name.split(".")[0], 0) + parameter.numel()
    for component, (modules, expected) in COMPONENTS.items():
        assert sum(per_module.pop(module) for module in modules) == expected, component
    assert not per_module  # every parameter belongs to a named component
    for osf_dim, expected in ((768, 802_807), (1024, 933_879)):
        assert _count(PTGRM(osf_dim=osf_dim)) == expected == 409_591 + 512 * osf_dim


@pytest.mark.parametrize(
    ("switch", "removed"),
    [
        (
            "use_sve",
            {"mapp_space1", "mapp_space2", "mapp_position1", "mapp_position2", "r1_mask", "r2_mask"}
            | {"transformer", "resnet"},
        ),
        ("use_channel_attention", {"mapping11", "mapping12"}),
        ("use_spatial_attention", {"mapp11", "mapp12", "mapp1", "mapp_position11", "mapp_position22"}),
        ("use_position", {"mapp_position1", "mapp_position2", "mapp_position11", "mapp_position22"}),
    ],
)
def test_each_ablation_removes_its_part(switch: str, removed: set[str]) -> None:
    full, ablated = PTGRM(), PTGRM(**{switch: False})
    assert _top_level_names(full) - _top_level_names(ablated) == removed
    assert _top_level_names(ablated) < _top_level_names(full)
    target_out, degraded, osf = _inputs(height=16, width=24)
    assert ablated(target_out, degraded, osf).shape == target_out.shape
    if switch == "use_channel_attention" or switch == "use_spatial_attention":
        assert ablated.refine11.in_channels == 16  # the fusion conv takes the remaining branch alone
    if switch == "use_position":
        assert ablated.r1_mask.in_channels == ablated.mapp11.in_channels == 16 + 64


def test_wide_plain_is_the_encoder_and_decoder_at_four_times_the_width() -> None:
    net = PTGRM(wide_plain=True)
    assert _top_level_names(net) == ENCODER_DECODER
    assert not net.uses_osf
    wide = 64
    encoder = 6 * wide * 9 + 2 * wide * wide * 9 + 2 * 2 * wide  # three convs, two affine instance norms
    decoder = 2 * wide * 4 * wide * 9 + (wide * wide * 9 + wide) + (wide * 3 * 9 + 3)
    assert _count(net) == encoder + decoder
    target_out, degraded, _ = _inputs(height=16, width=20)
    assert net(target_out, degraded, None).shape == target_out.shape


@pytest.mark.parametrize("fusion_residual", [True, False])
def test_fusion_residual_adds_the_attention_input(fusion_residual: bool) -> None:
    torch.manual_seed(0)
    # Without SVE the attention's input is the encoder's output, which a hook can see.
    net = PTGRM(use_sve=False, fusion_residual=fusion_residual)
    seen: dict[str, torch.Tensor] = {}
    net.r22.register_forward_hook(lambda module, args, out: seen.update(encoded=out))
    net.refine11.register_forward_hook(lambda module, args, out: seen.update(fused=out))
    net.r1_decoder.register_forward_hook(lambda module, args, out: seen.update(decoder_in=args[0]))
    net(*_inputs(height=16, width=16))
    expected = seen["fused"] + seen["encoded"] if fusion_residual else seen["fused"]
    torch.testing.assert_close(seen["decoder_in"], expected)


def test_residual_output_is_the_clamped_target_plus_the_correction() -> None:
    torch.manual_seed(0)
    net = PTGRM()
    seen: dict[str, torch.Tensor] = {}
    net.conv_last3.register_forward_hook(lambda module, args, out: seen.update(correction=out))
    target_out, degraded, osf = _inputs(height=16, width=16)
    refined = net(target_out, degraded, osf)
    assert seen["correction"].abs().max() > 1e-3
    torch.testing.assert_close(refined, target_out.clamp(0, 1) + seen["correction"])


@pytest.mark.parametrize(
    ("mask_channels", "mask_activation", "mask_bias", "mask"),
    [(1, "sigmoid", 0.0, 0.5), (3, "clamp", 0.25, 0.25)],
)
def test_masked_output_is_equation_1(
    mask_channels: int, mask_activation: str, mask_bias: float, mask: float
) -> None:
    net = PTGRM(output="masked", mask_channels=mask_channels, mask_activation=mask_activation)
    correction = torch.tensor([0.1, -0.2, 0.3])
    with torch.no_grad():
        net.conv_last3.weight.zero_()
        net.conv_last3.bias.copy_(correction)
        net.mask_head.weight.zero_()
        net.mask_head.bias.fill_(mask_bias)
    assert net.mask_head.out_channels == mask_channels
    target_out, degraded, osf = _inputs(height=12, width=12)
    expected = degraded + (target_out - degraded) * mask + correction.view(1, 3, 1, 1)
    torch.testing.assert_close(net(target_out, degraded, osf), expected)


@pytest.mark.parametrize(("height", "width"), [(37, 50), (5, 3)])
def test_any_size_gives_the_input_shape(height: int, width: int) -> None:
    net = PTGRM(output="masked")
    target_out, degraded, osf = _inputs(batch=1, height=height, width=width)
    assert net(target_out, degraded, osf).shape == (1, 3, height, width)


def _unfold_reference(features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Tensor.unfold over rows then columns of the replicate-padded features, one kernel per pixel."""
    batch, channels, height, width = features.shape
    padded = F.pad(features, (1, 1, 1, 1), mode="replicate")
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # N×C×H×W×3(row)×3(column)
    return (
        windows.reshape(batch, channels, height, width, 9)
        * kernels.view(batch, channels, 9, height, width).permute(0, 1, 3, 4, 2)
    ).sum(-1)


def test_spatially_varying_conv_matches_an_unfold_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 7, 9, generator=generator)
    kernels = torch.randn(2, 4 * 9, 7, 9, generator=generator)
    torch.testing.assert_close(
        spatially_varying_conv(features, kernels), _unfold_reference(features, kernels)
    )
    # A kernel with one tap at row offset 0, column offset +1 reads the right neighbour; the last
    # column, past the border, repeats itself (replicate padding).
    shift = torch.zeros(2, 4, 9, 7, 9)
    shift[:, :, 3 * 1 + 2] = 1.0
    shifted = spatially_varying_conv(features, shift.view(2, 36, 7, 9))
    torch.testing.assert_close(shifted, torch.cat([features[..., 1:], features[..., -1:]], dim=-1))
    with pytest.raises(ValueError, match="kernels of shape"):
        spatially_varying_conv(features, kernels[:, :9])


@pytest.mark.parametrize("output", ["residual", "masked"])
def test_gradients_reach_every_parameter(output: str) -> None:
    torch.manual_seed(0)
    net = PTGRM(output=output)
    net(*_inputs(height=16, width=16)).square().mean().backward()
    no_gradient = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_gradient


def test_refiner_weights_load_from_a_whole_network_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    source, loaded = PTGRM(), PTGRM()
    # An official PTG-RM checkpoint: the SNR-aware network's keys beside the refiner's under refinement11.
    state = {REFINER_PREFIX + name: tensor for name, tensor in source.state_dict().items()}
    state["conv_first_1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "ptg_rm.pth")
    load_pretrained(loaded, tmp_path / "ptg_rm.pth", prefix=REFINER_PREFIX)
    inputs = _inputs(height=8, width=8)
    torch.testing.assert_close(loaded(*inputs), source(*inputs))


def test_bad_arguments_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="output='mask'"):
        PTGRM(output="mask")
    with pytest.raises(ValueError, match="mask_channels=2"):
        PTGRM(mask_channels=2)
    with pytest.raises(ValueError, match="osf_dim=None"):
        PTGRM(osf_dim=None)
    net = PTGRM()
    target_out, degraded, osf = _inputs(height=8, width=8)
    with pytest.raises(ValueError, match=r"osf of shape \(2, 768\); expected \(2, 512\)"):
        net(target_out, degraded, torch.zeros(2, 768))
    with pytest.raises(ValueError, match="osf of shape None"):
        net(target_out, degraded, None)
    with pytest.raises(ValueError, match="degraded of shape"):
        net(target_out, degraded[..., :4], osf)


@pytest.mark.parametrize(("preset", "width", "parameters"), [("ptgrm", 16, 671_735), ("ptgrm_tiny", 8, None)])
def test_refiner_presets_build_with_the_guide_width(preset: str, width: int, parameters: int | None) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        config = compose(config_name=f"refiner/{preset}").refiner
    assert config.osf_dim is None  # filled in by the stage from the guide
    net = instantiate(config)(osf_dim=512)
    assert isinstance(net, PTGRM) and net.r1.out_channels == width and net.output == "residual"
    if parameters is not None:
        assert _count(net) == parameters
    target_out, degraded, osf = _inputs(batch=1, height=12, width=16)
    assert net(target_out, degraded, osf).shape == target_out.shape
