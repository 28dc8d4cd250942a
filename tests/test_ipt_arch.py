"""IPT: the official sizes and state-dict layout, task selection, single-task extraction, and its tilings.

The numbers come from docs of the official code (/work/shared/specs/ipt.md, "Numbers to check against"); the
official ``forward_chop`` is re-implemented below from its description (spec §3.2) with plain loops.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from restoration.archs import load_pretrained
from restoration.archs.ipt import IPT, IPT_TASKS, TASK_SCALES, _Attention, ipt_tasks_from_state_dict
from restoration.errors import ConfigError
from restoration.tiling import ipt_tiled_forward

BACKBONES = Path(__file__).resolve().parents[1] / "conf" / "backbone"
TINY = {"n_feats": 16, "num_heads": 4, "num_layers": 2}  # conf/backbone/ipt_tiny.yaml

# Spec, "Numbers to check against": every parameter, the two frozen mean-shift convs (24 values) included.
PARAMETERS = {
    "ipt_derain": 115_312_731,
    "ipt_denoise_30": 115_312_731,
    "ipt_denoise_50": 115_312_731,
    "ipt_sr_x2": 115_460_443,
    "ipt_sr_x3": 115_645_083,
    "ipt_sr_x4": 115_608_155,
    "ipt_pretrain": 118_892_394,
    "ipt_tiny": 1_820_538,  # ours, not the spec's
}


def _images(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _tiny(tasks: tuple[str, ...] = IPT_TASKS, seed: int = 0, **options: object) -> IPT:
    torch.manual_seed(seed)
    return IPT(tasks=tasks, **TINY, **options).eval()


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("backbone", sorted(PARAMETERS))
def test_backbone_configs_have_the_official_parameter_counts(backbone: str) -> None:
    config = OmegaConf.load(BACKBONES / f"{backbone}.yaml")
    with torch.device("meta"):
        net = instantiate(config)
    assert _count(net) == PARAMETERS[backbone]
    # the config's own comment states the same number
    assert f"{PARAMETERS[backbone]:,} parameters" in (BACKBONES / f"{backbone}.yaml").read_text()
    if backbone == "ipt_pretrain":
        assert net.tasks == IPT_TASKS
    elif backbone != "ipt_tiny":
        assert net.tasks == (backbone.removeprefix("ipt_"),)


def test_state_dict_has_the_official_names_and_shapes() -> None:
    with torch.device("meta"):
        net = IPT(tasks=IPT_TASKS)
    state = net.state_dict()
    assert state["sub_mean.weight"].shape == (3, 3, 1, 1) and state["add_mean.bias"].shape == (3,)
    assert state["body.query_embed.weight"].shape == (6, 256 * 576)
    assert state["body.position_encoding.pe.weight"].shape == (256, 576)
    assert state["body.position_encoding.position_ids"].shape == (1, 256)
    assert state["head.5.1.body.2.weight"].shape == (64, 64, 5, 5)
    assert state["body.mlp_head.0.weight"].shape == (2304, 576) and "body.mlp_head.3.bias" in state
    encoder = {
        name.removeprefix("body.encoder.layers.11.") for name in state if ".encoder.layers.11." in name
    }
    assert encoder == {
        "self_attn.in_proj_weight",
        "self_attn.out_proj.weight",
        *(
            f"{layer}.{kind}"
            for layer in ("linear1", "linear2", "norm1", "norm2")
            for kind in ("weight", "bias")
        ),
    }
    decoder = {name.removeprefix("body.decoder.layers.0.") for name in state if ".decoder.layers.0." in name}
    assert decoder == encoder | {
        "multihead_attn.in_proj_weight",
        "multihead_attn.out_proj.weight",
        "norm3.weight",
        "norm3.bias",
    }
    assert state["body.decoder.layers.0.multihead_attn.in_proj_weight"].shape == (1728, 576)
    assert not any(".encoder.layers.12." in name for name in state)
    # tails: ×2 and ×3 one upsampling conv, ×4 two, ×1 none (IPT_TASKS order: x2, x3, x4, rain, σ30, σ50)
    upsampler = {i: sorted(name for name in state if name.startswith(f"tail.{i}.0.")) for i in range(6)}
    assert (
        upsampler[0] == ["tail.0.0.0.bias", "tail.0.0.0.weight"]
        and state["tail.0.0.0.weight"].shape[0] == 256
    )
    assert state["tail.1.0.0.weight"].shape[0] == 576
    assert upsampler[2] == ["tail.2.0.0.bias", "tail.2.0.0.weight", "tail.2.0.2.bias", "tail.2.0.2.weight"]
    assert upsampler[3] == upsampler[4] == upsampler[5] == []
    assert state["tail.3.1.weight"].shape == (3, 64, 3, 3)
    assert ipt_tasks_from_state_dict(state) == 6


def test_mean_shift_is_frozen_and_everything_else_trains() -> None:
    net = _tiny()
    frozen = {name for name, parameter in net.named_parameters() if not parameter.requires_grad}
    assert frozen == {"sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"}
    torch.testing.assert_close(net.sub_mean.bias, -255 * torch.tensor([0.4488, 0.4371, 0.4040]))
    torch.testing.assert_close(net.add_mean.weight.flatten(1), torch.eye(3))


def test_official_state_dict_round_trips_through_load_pretrained(tmp_path: Path) -> None:
    source = _tiny(seed=1)
    path = tmp_path / "ipt_tiny.pt"
    torch.save(source.state_dict(), path)  # the released checkpoints are bare state dicts like this one
    loaded = load_pretrained(_tiny(seed=2), path)
    degraded = _images(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(degraded, "sr_x4"), source(degraded, "sr_x4"))
    assert ipt_tasks_from_state_dict(torch.load(path)) == 6
    # a six-task file into a one-task model: the task rows do not fit, and the error says so
    with pytest.raises(ConfigError, match=r"body\.query_embed\.weight"):
        load_pretrained(_tiny(("sr_x2",)), path)


@pytest.mark.parametrize("task", ["sr_x3", "denoise_50"])
def test_single_task_copies_exactly_that_task(task: str) -> None:
    multi = _tiny(seed=3)
    single = multi.single_task(task)
    index = IPT_TASKS.index(task)
    assert single.tasks == (task,) and single.scale_of(0) == TASK_SCALES[task]
    state, source = single.state_dict(), multi.state_dict()
    assert ipt_tasks_from_state_dict(state) == 1
    for name, tensor in state.items():
        if name.startswith(("head.0.", "tail.0.")):
            expected = source[name.replace(".0.", f".{index}.", 1)]
        elif name == "body.query_embed.weight":
            expected = source[name][index : index + 1]
        else:
            expected = source[name]
        assert torch.equal(tensor, expected), name
    assert not any(name.startswith(("head.1.", "tail.1.")) for name in state)
    assert not single.sub_mean.weight.requires_grad and single.body.query_embed.weight.requires_grad
    degraded = _images(2, 3, 48, 48, seed=4)
    with torch.no_grad():
        assert torch.equal(single(degraded), multi(degraded, task))
        # copies, not views: training the single-task model leaves the pre-trained one alone
        single.body.query_embed.weight.add_(1)
    assert not torch.equal(single.body.query_embed.weight, multi.body.query_embed.weight[index : index + 1])


def test_each_task_uses_its_own_head_tail_and_task_row() -> None:
    net = _tiny(seed=5)
    degraded = _images(1, 3, 48, 48, seed=6)
    with torch.no_grad():
        outputs = {task: net(degraded, task) for task in IPT_TASKS}
        for task, restored in outputs.items():
            assert restored.shape == (1, 3, 48 * TASK_SCALES[task], 48 * TASK_SCALES[task])
            assert torch.equal(restored, net(degraded, IPT_TASKS.index(task)))
        # the three ×1 tasks differ (the official scale-list indexing would send all three to entry 0)
        assert not torch.equal(outputs["derain"], outputs["denoise_30"])
        assert not torch.equal(outputs["denoise_30"], outputs["denoise_50"])
        # the task row alone changes the output
        net.body.query_embed.weight[IPT_TASKS.index("derain")] += 1
        assert not torch.equal(net(degraded, "derain"), outputs["derain"])


def test_return_tokens_gives_the_body_output_before_the_fold() -> None:
    net = _tiny(seed=7)
    degraded = _images(2, 3, 48, 48, seed=8)
    with torch.no_grad():
        restored, tokens = net(degraded, "sr_x2", return_tokens=True)
        assert tokens.shape == (2, 256, 16 * 9)
        # folding the tokens back (3×3 patches, channel-major) and running the tail gives the output
        body = F.fold(tokens.transpose(1, 2), output_size=48, kernel_size=3, stride=3)
        head = net.head[0](net.sub_mean(degraded * 255))
        torch.testing.assert_close(net.add_mean(net.tail[0](body + head)) / 255, restored, rtol=0, atol=1e-6)


def test_inference_path_equals_the_autograd_path() -> None:
    # Without autograd on the CPU the linear layers run fused through oneDNN; with it, through F.linear.
    net = _tiny(seed=22)
    degraded = _images(2, 3, 48, 48, seed=23)
    with torch.inference_mode():
        fused = net(degraded, "sr_x2")
    plain = net(degraded, "sr_x2")
    assert plain.requires_grad
    torch.testing.assert_close(fused, plain.detach(), rtol=1e-5, atol=1e-5)


def test_training_step_reaches_only_the_tasks_own_weights() -> None:
    net = _tiny(seed=24, dropout=0.1).train()
    restored, tokens = net(_images(2, 3, 48, 48, seed=25), "denoise_30", return_tokens=True)
    (restored.mean() + tokens.mean()).backward()
    index = IPT_TASKS.index("denoise_30")
    assert net.head[index][0].weight.grad is not None and net.tail[index][1].weight.grad is not None
    assert all(net.head[i][0].weight.grad is None for i in range(6) if i != index)
    row_has_grad = net.body.query_embed.weight.grad.abs().sum(1) > 0
    assert row_has_grad.tolist() == [i == index for i in range(6)]
    assert net.sub_mean.weight.grad is None
    # dropout is active in training and off in evaluation
    with torch.no_grad():
        degraded = _images(1, 3, 48, 48, seed=26)
        assert not torch.equal(net(degraded, "derain"), net(degraded, "derain"))
        net.eval()
        assert torch.equal(net(degraded, "derain"), net(degraded, "derain"))


@pytest.mark.parametrize("flag", ["no_mlp", "no_pos", "no_norm", "pos_every"])
def test_flags_change_the_layout_like_the_official_ones(flag: str) -> None:
    base, flagged = _tiny(seed=9), _tiny(seed=9, **{flag: True})
    removed = set(base.state_dict()) - set(flagged.state_dict())
    expected = {
        "no_mlp": {
            name
            for name in base.state_dict()
            if re.match(r"body\.(linear_encoding|mlp_head|query_embed)", name)
        },
        "no_pos": {"body.position_encoding.pe.weight", "body.position_encoding.position_ids"},
        "no_norm": {name for name in base.state_dict() if re.search(r"\.norm\d\.", name)},
        "pos_every": set(),
    }[flag]
    assert removed == expected and (expected or flag == "pos_every")
    assert not set(flagged.state_dict()) - set(base.state_dict())
    if flag == "pos_every":  # same weights, positions used differently
        flagged.load_state_dict(base.state_dict())
    degraded = _images(1, 3, 48, 48, seed=10)
    with torch.no_grad():
        restored = flagged(degraded, "derain")
        assert restored.shape == (1, 3, 48, 48) and torch.isfinite(restored).all()
        assert not torch.allclose(restored, base(degraded, "derain"))


@pytest.mark.parametrize("same", ["query_key_value", "query_key", "key_value", "none"])
def test_attention_equals_torch_multihead_attention(same: str) -> None:
    torch.manual_seed(11)
    reference = nn.MultiheadAttention(24, 4, bias=False).eval()
    ours = _Attention(dim=24, num_heads=4, dropout=0.0).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    query, key, value, residual = _images(4, 2, 10, 24, seed=12).unbind(0)
    key = {"query_key_value": query, "query_key": query}.get(same, key)
    value = {"query_key_value": query, "key_value": key}.get(same, value)
    with torch.no_grad():
        expected = reference(*(x.transpose(0, 1) for x in (query, key, value)), need_weights=False)[0]
        attended = ours(query, key, value, residual=residual)
        torch.testing.assert_close(attended, residual + expected.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_tasks_raise() -> None:
    net = _tiny(("sr_x2", "derain"))
    with pytest.raises(ValueError, match=r"48×48 inputs, got \(1, 3, 47, 48\).*ipt_tiled_forward"):
        net(torch.zeros(1, 3, 47, 48))
    with pytest.raises(ValueError, match="48×48 inputs"):
        net(torch.zeros(1, 4, 48, 48))
    for task in ("denoise_30", 2, -1, "x2"):
        with pytest.raises(ValueError, match=r"unknown task .*\['sr_x2', 'derain'\]"):
            net.task_index(task)
    assert net.task_index("derain") == net.task_index(1) == 1 and net.scale_of("sr_x2") == 2
    with pytest.raises(ValueError, match="sr_x5"):
        IPT(tasks=("sr_x5",), **TINY)
    with pytest.raises(ValueError, match="distinct"):
        IPT(tasks=("derain", "derain"), **TINY)
    with pytest.raises(ValueError, match="exclude each other"):
        IPT(tasks=("derain",), pos_every=True, no_pos=True, **TINY)
    with pytest.raises(ValueError, match="not divisible by num_heads 5"):
        IPT(tasks=("derain",), n_feats=16, num_heads=5, num_layers=1)


# ---- tiling ---------------------------------------------------------------------------------------------


def _recording(forward: Callable[[Tensor], Tensor], calls: list[int]) -> Callable[[Tensor], Tensor]:
    def wrapped(tiles: Tensor) -> Tensor:
        calls.append(tiles.shape[0])
        return forward(tiles)

    return wrapped


def _seamy(scale: int) -> Callable[[Tensor], Tensor]:
    """A cheap forward whose tiles disagree where they overlap: zero-padded conv plus a ramp over the tile."""
    torch.manual_seed(13)
    conv = nn.Sequential(nn.Conv2d(3, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale))
    ramp = torch.linspace(0, 1, 48 * scale)

    def forward(tiles: Tensor) -> Tensor:
        with torch.no_grad():
            return conv(tiles) + ramp[:, None] - ramp

    return forward


def _reference_forward_chop(forward: Callable[[Tensor], Tensor], image: Tensor, scale: int) -> Tensor:
    """Spec §3.2 written out with loops, one tile at a time, in forward_chop's order of pastes: raw tile
    sums, the top and left strips over them, the averaged trimmed centres inside, the bottom and right
    spliced in."""
    patch, stride, s = 48, 12, scale
    height, width = image.shape[-2:]
    h_cut, w_cut = (height - patch) % stride, (width - patch) % stride
    tops = list(range(0, height - h_cut - patch + 1, stride))
    lefts = list(range(0, width - w_cut - patch + 1, stride))
    trim = stride * s

    # every tile the protocol uses, run in one batch
    positions = sorted(
        {(top, left) for top in tops for left in lefts}
        | {(row, left) for row in (0, height - patch) for left in lefts}
        | {(top, col) for top in tops for col in (0, width - patch)}
        | {(height - patch, width - patch)}
    )
    tiles = torch.stack([image[:, top : top + patch, left : left + patch] for top, left in positions])
    outputs = dict(zip(positions, forward(tiles), strict=True))

    def restored(top: int, left: int) -> Tensor:
        return outputs[top, left]

    def blended(tile_tops: list[int], tile_lefts: list[int], *, trim_rows: bool, trim_cols: bool) -> Tensor:
        """Tiles summed; where trimmed centres reach (all but ``trim`` at trimmed borders), their average."""
        rows, cols = (tile_tops[-1] + patch - tile_tops[0]) * s, (tile_lefts[-1] + patch - tile_lefts[0]) * s
        total, centres, count = (
            torch.zeros(3, rows, cols),
            torch.zeros(3, rows, cols),
            torch.zeros(rows, cols),
        )
        row_trim, col_trim = (trim if trim_rows else 0), (trim if trim_cols else 0)
        for top in tile_tops:
            for left in tile_lefts:
                out = restored(top, left)
                r, c = (top - tile_tops[0]) * s, (left - tile_lefts[0]) * s
                total[:, r : r + patch * s, c : c + patch * s] += out
                rows_in = slice(r + row_trim, r + patch * s - row_trim)
                cols_in = slice(c + col_trim, c + patch * s - col_trim)
                centres[:, rows_in, cols_in] += out[
                    :, row_trim : patch * s - row_trim, col_trim : patch * s - col_trim
                ]
                count[rows_in, cols_in] += 1
        inside = (slice(row_trim, rows - row_trim), slice(col_trim, cols - col_trim))
        total[:, inside[0], inside[1]] = centres[:, inside[0], inside[1]] / count[inside]
        return total

    grid = blended(tops, lefts, trim_rows=True, trim_cols=True)
    output = torch.zeros(3, *grid.shape[-2:])
    for top in tops:  # raw sums; the pastes and splices below cover every one of them
        for left in lefts:
            output[:, top * s : (top + patch) * s, left * s : (left + patch) * s] += restored(top, left)
    output[:, : patch * s, :] = blended([0], lefts, trim_rows=False, trim_cols=True)
    output[:, :, : patch * s] = blended(tops, [0], trim_rows=True, trim_cols=False)
    output[:, trim:-trim, trim:-trim] = grid[:, trim:-trim, trim:-trim]
    bottom = blended([height - patch], lefts, trim_rows=False, trim_cols=True)
    right = blended(tops, [width - patch], trim_rows=True, trim_cols=False)
    corner = restored(height - patch, width - patch)
    keep_rows, skip_rows = int((patch - h_cut) / 2 * s), int((patch - h_cut) / 2 * s + 0.5)
    keep_cols, skip_cols = int((patch - w_cut) / 2 * s), int((patch - w_cut) / 2 * s + 0.5)
    grid_rows, grid_cols = output.shape[-2:]
    left_part = torch.cat([output[:, : grid_rows - keep_rows], bottom[:, skip_rows:]], dim=1)
    right_part = torch.cat([right[:, : grid_rows - keep_rows], corner[:, skip_rows:]], dim=1)
    return torch.cat([left_part[:, :, : grid_cols - keep_cols], right_part[:, :, skip_cols:]], dim=2)


@pytest.mark.parametrize(
    ("height", "width", "scale"), [(481, 321, 1), (97, 130, 2), (61, 50, 3), (48, 48, 2)]
)
def test_official_protocol_equals_a_loop_reimplementation(height: int, width: int, scale: int) -> None:
    forward = _seamy(scale)
    image = _images(1, 3, height, width, seed=14)
    calls: list[int] = []
    tiled = ipt_tiled_forward(_recording(forward, calls), image, scale=scale, batch_size=100)
    reference = _reference_forward_chop(forward, image[0], scale)
    assert tiled.shape == (1, 3, height * scale, width * scale) == (1, *reference.shape)
    torch.testing.assert_close(tiled[0], reference, rtol=1e-6, atol=1e-6)
    if (height, width) == (481, 321):  # spec §3.2: 851 in the grid, 2×37 + 2×23 in the strips, 1 corner
        assert sum(calls) == 972 and max(calls) == 100


def test_official_protocol_with_a_tiny_ipt_equals_the_reimplementation() -> None:
    net = _tiny(seed=15)
    image = _images(1, 3, 50, 61, seed=16)  # 9 tiles: 2 in the grid, 2 + 2 + 1 + 1 in strips, 1 corner
    with torch.no_grad():
        forward = lambda tiles: net(tiles, "sr_x3")  # noqa: E731
        tiled = ipt_tiled_forward(forward, image, scale=3)
        torch.testing.assert_close(
            tiled[0], _reference_forward_chop(forward, image[0], 3), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "options", [{}, {"protocol": "fast"}, {"protocol": "fast", "overlap": 10, "blend": "average"}]
)
@pytest.mark.parametrize("task", ["sr_x2", "derain"])
def test_one_tile_image_gives_the_plain_forward(options: dict, task: str) -> None:
    net = _tiny(seed=17)
    image = _images(2, 3, 48, 48, seed=18)
    with torch.no_grad():
        tiled = ipt_tiled_forward(lambda tiles: net(tiles, task), image, scale=net.scale_of(task), **options)
        torch.testing.assert_close(tiled, net(image, task), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"protocol": "fast"}, {"protocol": "fast", "blend": "average"}])
@pytest.mark.parametrize(
    ("height", "width", "scale"), [(481, 321, 1), (48, 61, 3), (59, 107, 3), (107, 59, 1)]
)
def test_every_output_pixel_is_covered(options: dict, height: int, width: int, scale: int) -> None:
    ones = lambda tiles: tiles.new_ones(tiles.shape[0], 3, 48 * scale, 48 * scale)  # noqa: E731
    restored = ipt_tiled_forward(ones, torch.zeros(1, 3, height, width), scale=scale, **options)
    assert torch.equal(restored, torch.ones(1, 3, height * scale, width * scale))
    # a forward that commutes with cropping comes back unchanged, whatever the tiling
    nearest = lambda tiles: F.interpolate(tiles, scale_factor=scale, mode="nearest") * 2 - 1  # noqa: E731
    image = _images(2, 3, height, width, seed=19)
    torch.testing.assert_close(ipt_tiled_forward(nearest, image, scale=scale, **options), nearest(image))


def test_fast_protocol_keeps_the_central_36_of_each_tile_like_mindspore() -> None:
    # 48 + 3·36 columns: tiles at 0, 36, 72, 108, each cut in the middle of its 12-pixel overlaps
    image = torch.arange(156.0).expand(1, 3, 48, 156)  # every pixel holds its column
    origin_of_tile = lambda tiles: tiles[:, :, :1, :1].expand(-1, -1, 48, 48)  # noqa: E731
    calls: list[int] = []
    restored = ipt_tiled_forward(_recording(origin_of_tile, calls), image, scale=1, protocol="fast")
    expected = torch.tensor([0] * 42 + [36] * 36 + [72] * 36 + [108] * 42, dtype=torch.float)
    assert torch.equal(restored[0, 0, 0], expected) and sum(calls) == 4


@pytest.mark.parametrize(
    ("options", "tiles"), [({"overlap": 12}, 126), ({"overlap": 10}, 117), ({"overlap": 0}, 77)]
)
def test_fast_protocol_tile_counts(options: dict, tiles: int) -> None:
    calls: list[int] = []
    ipt_tiled_forward(
        _recording(lambda t: t, calls), torch.zeros(1, 3, 481, 321), scale=1, protocol="fast", **options
    )
    assert sum(calls) == tiles  # against 972 for the official protocol


def test_images_of_a_batch_are_tiled_independently() -> None:
    forward = _seamy(2)
    images = _images(3, 3, 61, 75, seed=20)
    for options in ({}, {"protocol": "fast", "overlap": 20}):
        together = ipt_tiled_forward(forward, images, scale=2, batch_size=7, **options)
        alone = torch.cat([ipt_tiled_forward(forward, image[None], scale=2, **options) for image in images])
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


def test_self_ensemble_averages_the_eight_flips_and_transposes() -> None:
    forward = _seamy(2)
    image = _images(1, 3, 50, 61, seed=21)
    ensembled = ipt_tiled_forward(forward, image, scale=2, self_ensemble=True)
    runs = []
    for transpose in (False, True):
        for flips in ((), (-1,), (-2,), (-2, -1)):
            transformed = image.flip(flips) if flips else image
            transformed = transformed.transpose(-2, -1) if transpose else transformed
            restored = ipt_tiled_forward(forward, transformed, scale=2)
            restored = restored.transpose(-2, -1) if transpose else restored
            runs.append(restored.flip(flips) if flips else restored)
    torch.testing.assert_close(ensembled, torch.stack(runs).mean(0), rtol=0, atol=1e-6)
    assert not torch.allclose(ensembled, ipt_tiled_forward(forward, image, scale=2))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"protocol": "exact"}, "protocol must be"),
        ({"overlap": 12}, "protocol='official' fixes the overlap"),
        ({"blend": "seam"}, "protocol='official' fixes the overlap"),
        ({"protocol": "fast", "overlap": 48}, "overlap must satisfy"),
        ({"protocol": "fast", "blend": "linear"}, "blend must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"tile": 30}, "divisible by 4"),
    ],
)
def test_bad_tiling_options_raise(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ipt_tiled_forward(lambda t: t, torch.zeros(1, 3, 60, 60), scale=1, **options)


def test_small_images_and_wrong_forwards_raise() -> None:
    with pytest.raises(ValueError, match="H, W >= tile = 48"):
        ipt_tiled_forward(lambda t: t, torch.zeros(1, 3, 47, 60), scale=1)
    with pytest.raises(ValueError, match="expected B×C×96×96"):
        ipt_tiled_forward(lambda t: t, torch.zeros(1, 3, 60, 60), scale=2)
