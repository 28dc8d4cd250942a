"""``python -m restoration.evaluate``: every benchmark preset on a tiny fake copy of its sets, built in the
exact layout, with a checkpoint in the container its method releases (random weights); the table against
metrics computed directly; IPT's official protocol; bad input in one line."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from restoration.archs.snr_aware import REFINER_PREFIX
from restoration.checkpoints import frozen_tower_identity
from restoration.data.datasets import WholeImages
from restoration.errors import ConfigError, DataError
from restoration.evaluate import Protocol, benchmark_images, evaluate, load_stage, restorer
from restoration.metrics import psnr
from restoration.run import build_stage
from restoration.tiling import ipt_tiled_forward

from .conftest import run_cli
from .test_loggers import read_offline_runs
from .test_ptgrm_stage import TINY_GUIDE
from .test_sid_source import _sid_tree

pytestmark = pytest.mark.usefixtures("in_tmp_dir")

GT_SIDE = (
    24  # ground-truth side of every fake image (a multiple of 2, 3 and 4; 32 for the size-multiple sets)
)


def _photo(path: Path, height: int, width: int, seed: int) -> None:
    """A smooth random RGB image (so that restored images score in a sensible range)."""
    generator = np.random.default_rng(seed)
    coarse = generator.uniform(0, 255, size=(3, 3, 3))
    image = np.array(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _fake_names(source: DictConfig) -> list[tuple[str, str]]:
    """(LQ file stem, GT file stem) pairs that the source's key regex pairs, as the real sets name them."""
    regex = source.get("key_regex")
    if regex is None:
        return [("img01", "img01"), ("img02", "img02")]
    if regex == r"(\d+)$":  # LOL-v2: lowNNNNN / normalNNNNN
        return [("low00690", "normal00690"), ("low00691", "normal00691")]
    if regex == r"^(\d+)":  # SOTS: <id>_<A>_<beta> / <id>
        return [("0001_0.8_0.2", "0001"), ("0002_0.9_0.16", "0002")]
    scale = int(source.scale)  # EDSR's benchmark: <name>x<s> / <name>
    return [(f"baby{'x' + str(scale)}", "baby"), (f"bird{'x' + str(scale)}", "bird")]


def build_fake_set(node: DictConfig, side: int) -> None:
    """One or two small images of a benchmark set, in the folder layout its source reads."""
    source = node.source
    target = source._target_.rsplit(".", 1)[-1]
    if target == "PairedFolders":
        scale = int(source.get("scale", 1))
        for number, (lq_name, gt_name) in enumerate(_fake_names(source)):
            # EDSR's HR images of Set14/B100/Urban100 can be up to scale-1 px larger than scale × LR
            extra = (scale - 1) if source.get("modcrop") else 0
            _photo(Path(source.gt_dir) / f"{gt_name}.png", side + extra, side, number)
            _photo(Path(source.lq_dir) / f"{lq_name}.png", side // scale, side // scale, 100 + number)
    elif target == "ImageFolder":
        for number in range(2):
            _photo(Path(source.root) / f"clean{number}.png", side, side + 8, number)
    elif target == "SIDDBlocks":
        generator = np.random.default_rng(0)
        gt = generator.integers(0, 255, size=(1, 2, side, side, 3), dtype=np.uint8)
        noisy = np.clip(gt + generator.normal(0, 10, size=gt.shape), 0, 255).astype(np.uint8)
        Path(source.gt_mat).parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(source.gt_mat, {"ValidationGtBlocksSrgb": gt})
        scipy.io.savemat(source.noisy_mat, {"ValidationNoisyBlocksSrgb": noisy})
    elif target == "SIDNpyFrames":
        _sid_tree(Path(source.root))
    else:
        raise AssertionError(f"no fake layout for {target}")


def _save_official(path: Path, state: dict[str, torch.Tensor], container: str | None) -> Path:
    torch.save(state if container is None else {container: state}, path)
    return path


def save_our_checkpoint(path: Path, cfg: DictConfig, *, seed: int | None = None) -> Path:
    """A checkpoint in this framework's container: the stage's weights, the config it was built from and the
    identity of its frozen towers. The random tiny guide is built after seeding with ``seed`` (default: the
    run's seed, which restoration.evaluate seeds with too, so that it builds the same guide)."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    stage = build_stage(cfg)
    config = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in ("backbone", "refiner", "guide", "stage")
        if cfg.get(key) is not None
    }
    towers = frozen_tower_identity(stage, cfg)
    torch.save(
        {"state_dict": stage.state_dict(), "config": config, "choices": {}, "frozen_towers": towers}, path
    )
    return path


def _ptgrm(
    backbone: str, *, guide_seed: int | None = None
) -> Callable[[Callable[..., DictConfig], Path], Path]:
    def checkpoint(make_config: Callable[..., DictConfig], folder: Path) -> Path:
        cfg = make_config("stage=ptgrm", f"backbone={backbone}", "refiner=ptgrm_tiny", "guide=none")
        with open_dict(cfg):
            cfg.guide = OmegaConf.create(TINY_GUIDE)
        return save_our_checkpoint(folder / "best.ckpt", cfg, seed=guide_seed)

    return checkpoint


def _ipt(task: str) -> Callable[[Callable[..., DictConfig], Path], Path]:
    def checkpoint(make_config: Callable[..., DictConfig], folder: Path) -> Path:
        # the released single-task IPT files are bare state dicts (torch.save(model.state_dict()))
        net = instantiate(make_config("backbone=ipt_tiny", f"backbone.tasks=[{task}]").backbone)
        return _save_official(folder / f"IPT_{task}.pt", net.state_dict(), None)

    return checkpoint


def _basicsr(backbone: str, key: str) -> Callable[[Callable[..., DictConfig], Path], Path]:
    def checkpoint(make_config: Callable[..., DictConfig], folder: Path) -> Path:
        # NAFNet / Restormer / ConStyle release BasicSR containers: {"params": ...} or {"params_ema": ...}
        net = instantiate(make_config(f"backbone={backbone}").backbone)
        return _save_official(folder / "net.pth", net.state_dict(), key)

    return checkpoint


# preset -> (its checkpoint, the overrides a test needs for tiny networks in place of the paper-size ones)
PRESETS = {
    "ipt_sr_x2": (_ipt("sr_x2"), ["backbone=ipt_tiny", "backbone.tasks=[sr_x2]"]),
    "ipt_sr_x3": (_ipt("sr_x3"), ["backbone=ipt_tiny", "backbone.tasks=[sr_x3]"]),
    "ipt_sr_x4": (_ipt("sr_x4"), ["backbone=ipt_tiny", "backbone.tasks=[sr_x4]"]),
    "ipt_denoise_30": (_ipt("denoise_30"), ["backbone=ipt_tiny", "backbone.tasks=[denoise_30]"]),
    "ipt_denoise_50": (_ipt("denoise_50"), ["backbone=ipt_tiny", "backbone.tasks=[denoise_50]"]),
    "ipt_derain": (_ipt("derain"), ["backbone=ipt_tiny", "backbone.tasks=[derain]"]),
    # SID frames are resized to 960×512 as the official loader does; 64×32 keeps the test fast
    "ptgrm_lowlight": (_ptgrm("snr_aware_tiny"), ["benchmark.datasets.SID.source.resize=[64,32]"]),
    "ptgrm_derain": (_ptgrm("restormer_tiny"), []),
    "ptgrm_deblur": (_ptgrm("restormer_tiny"), []),
    "ptgrm_denoise": (_ptgrm("restormer_tiny"), []),
    "sidd": (_basicsr("nafnet_tiny", "params"), ["backbone=nafnet_tiny"]),
    "constyle_allinone": (
        _basicsr("nafnet_tiny", "params_ema"),
        ["backbone=nafnet_tiny", "stage=restore", "guide=none"],
    ),
    "allinone_3task": (_basicsr("nafnet_tiny", "params"), ["backbone=nafnet_tiny"]),
    "allinone_5task": (_basicsr("nafnet_tiny", "params"), ["backbone=nafnet_tiny"]),
}


def _evaluation_config(make_config: Callable[..., DictConfig], tmp_path: Path, *overrides: str) -> DictConfig:
    return make_config(*overrides, f"paths.data_dir={tmp_path / 'data'}", config_name="evaluate")


def _direct_psnr(cfg: DictConfig, checkpoint: Path, name: str) -> list[float]:
    """Each image's PSNR on the protocol's channel, computed here without restoration.evaluate."""
    node = cfg.benchmark.datasets[name]
    degradation = instantiate(node.degradation) if node.degradation else None
    images = WholeImages(
        instantiate(node.source), degradation=degradation, seed=node.seed, grey=node.get("grey", False)
    )
    images.source.scan()
    torch.manual_seed(cfg.seed)
    stage = load_stage(cfg).eval()
    values = []
    multiple, border, y = cfg.benchmark.size_multiple, cfg.benchmark.crop_border, cfg.benchmark.channel == "y"
    for index in range(len(images)):
        item = images[index]
        lq, gt = item["lq"][None], item["gt"][None]
        height, width = lq.shape[-2] - lq.shape[-2] % multiple, lq.shape[-1] - lq.shape[-1] % multiple
        scale = gt.shape[-1] // lq.shape[-1]
        lq, gt = lq[..., :height, :width], gt[..., : height * scale, : width * scale]
        with torch.no_grad():
            if cfg.benchmark.tiling == "ipt_official":
                net = stage.net
                padded = torch.nn.functional.pad(
                    lq, (0, max(0, 48 - lq.shape[-1]), 0, max(0, 48 - lq.shape[-2])), mode="replicate"
                )
                restored = ipt_tiled_forward(
                    partial(net, task=0), padded, scale=net.scale_of(0), protocol="official"
                )
                restored = restored[..., : lq.shape[-2] * scale, : lq.shape[-1] * scale]
            else:
                restored = stage.restore_for_evaluation(lq)[0]
        values.append(float(psnr(restored.clamp(0, 1), gt, crop_border=border, y_channel=y)))
    return values


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_evaluates_its_sets_in_their_layout(make_config, tmp_path: Path, preset: str) -> None:
    make_checkpoint, tiny = PRESETS[preset]
    cfg = _evaluation_config(make_config, tmp_path, f"benchmark={preset}", "ckpt_path=/nowhere", *tiny)
    for name in cfg.benchmark.sets:
        side = 32 if cfg.benchmark.size_multiple > 1 else GT_SIDE
        build_fake_set(cfg.benchmark.datasets[name], side)
    checkpoint = make_checkpoint(make_config, tmp_path)
    cfg = _evaluation_config(make_config, tmp_path, f"benchmark={preset}", f"ckpt_path={checkpoint}", *tiny)

    results = evaluate(cfg)

    output = Path(cfg.paths.output_dir)
    assert json.loads((output / "results.json").read_text()) == json.loads(json.dumps(results))
    assert list(results["sets"]) == list(cfg.benchmark.sets)
    with (output / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    key = "psnr_y" if cfg.benchmark.channel == "y" else "psnr"
    for name, summary in results["sets"].items():
        scores = [float(row[key]) for row in rows if row["set"] == name]
        assert summary["images"] == len(scores) > 0
        assert summary["psnr"] == pytest.approx(np.mean(scores))
        assert summary["seconds_per_image"] > 0
        assert f"| {name} | {len(scores)} | {summary['psnr']:.2f} |" in (output / "results.md").read_text()
    first = cfg.benchmark.sets[0]
    direct = _direct_psnr(cfg, checkpoint, first)
    assert [float(row[key]) for row in rows if row["set"] == first] == pytest.approx(direct, abs=1e-6)


def test_ipt_official_protocol_equals_the_official_tiling_image_by_image(make_config, tmp_path: Path) -> None:
    tiny = ["backbone=ipt_tiny", "backbone.tasks=[sr_x2]", "benchmark.sets=[Set5]", "save_images=true"]
    cfg = _evaluation_config(make_config, tmp_path, "benchmark=ipt_sr_x2", "ckpt_path=/nowhere", *tiny)
    build_fake_set(cfg.benchmark.datasets.Set5, 60)  # LR 30×30: padded to one 48² tile... and a 60×61 HR
    torch.manual_seed(0)
    net = instantiate(cfg.backbone)
    checkpoint = _save_official(tmp_path / "IPT_sr2.pt", net.state_dict(), None)
    cfg = _evaluation_config(make_config, tmp_path, "benchmark=ipt_sr_x2", f"ckpt_path={checkpoint}", *tiny)

    results = evaluate(cfg)

    assert list(results["sets"]) == ["Set5"] and results["sets"]["Set5"]["images"] == 2
    for lq_name, gt_name in _fake_names(cfg.benchmark.datasets.Set5.source):
        lq = torch.from_numpy(
            np.array(Image.open(tmp_path / "data/benchmark/Set5/LR_bicubic/X2" / f"{lq_name}.png"))
        )
        lq = lq.permute(2, 0, 1)[None].float() / 255
        padded = torch.nn.functional.pad(lq, (0, 18, 0, 18), mode="replicate")
        with torch.no_grad():
            official = ipt_tiled_forward(
                lambda tiles: net(tiles, task=0), padded, scale=2, protocol="official"
            )
        expected = (
            (official[0, :, :60, :60].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        )
        saved = np.array(Image.open(Path(cfg.paths.output_dir) / "images/Set5" / f"{gt_name}.png"))
        assert np.array_equal(saved, expected)


def test_a_missing_set_is_one_line_naming_the_folder_and_the_layout(tmp_path: Path) -> None:
    result = run_cli(
        "benchmark=ipt_sr_x2", "ckpt_path=/weights/IPT_sr2.pt", f"paths.data_dir={tmp_path}/data",
        cwd=tmp_path, module="restoration.evaluate",
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in result.stdout
    assert f"{tmp_path}/data/benchmark/Set5/LR_bicubic/X2: folder not found" in errors[0]
    assert (
        "expected layout: <root>/HR/<name>.png and <root>/LR_bicubic/X<scale>/<name>x<scale>.png" in errors[0]
    )


def test_a_wrong_layout_names_the_set_and_what_was_expected(make_config, tmp_path: Path) -> None:
    cfg = _evaluation_config(make_config, tmp_path, "benchmark=ptgrm_deblur", "ckpt_path=/nowhere")
    (tmp_path / "data/test/GoPro/blur").mkdir(parents=True)  # GoPro's own layout instead of input/target
    with pytest.raises(
        DataError,
        match=r"benchmark set GoPro .*/test/GoPro/input: folder not found.*expected layout: <root>/input",
    ):
        benchmark_images("GoPro", cfg.benchmark.datasets.GoPro)


def test_sets_select_a_subset_and_an_unknown_name_lists_the_choices(make_config, tmp_path: Path) -> None:
    cfg = _evaluation_config(
        make_config, tmp_path, "benchmark=allinone_5task", "ckpt_path=/nowhere", "benchmark.sets=[Rain100X]"
    )
    with pytest.raises(
        ConfigError,
        match=r"no set 'Rain100X' in benchmark allinone_5task; expected some of \['SOTS-outdoor', 'Rain100L'",
    ):
        evaluate(cfg)


def test_ipt_tiling_on_another_network_and_an_unknown_suffix_are_refused(make_config, tmp_path: Path) -> None:
    weights = _basicsr("nafnet_tiny", "params")(make_config, tmp_path)
    cfg = _evaluation_config(
        make_config, tmp_path, "benchmark=sidd", f"ckpt_path={weights}", "backbone=nafnet_tiny"
    )
    with pytest.raises(
        ConfigError, match=r"benchmark.tiling=ipt_official is IPT's tiling but the stage is RestoreStage"
    ):
        restorer(load_stage(cfg), Protocol(tiling="ipt_official"))
    weights.rename(tmp_path / "net.npz")
    cfg = _evaluation_config(make_config, tmp_path, "benchmark=sidd", f"ckpt_path={tmp_path / 'net.npz'}")
    with pytest.raises(
        ConfigError, match=r"net.npz: expected a checkpoint of this framework \(.ckpt\) or released weights"
    ):
        load_stage(cfg)


def test_a_checkpoint_whose_guide_had_other_weights_is_refused_unless_accepted(
    make_config, tmp_path: Path
) -> None:
    overrides = ("benchmark=ptgrm_deblur", "benchmark.sets=[HIDE]")
    cfg = _evaluation_config(make_config, tmp_path, *overrides, "ckpt_path=/nowhere")
    build_fake_set(cfg.benchmark.datasets.HIDE, GT_SIDE)
    checkpoint = _ptgrm("restormer_tiny", guide_seed=7)(
        make_config, tmp_path
    )  # not the guide evaluate builds
    with pytest.raises(
        ConfigError, match=r"frozen tower guide differs: saved .*TinyGuide.* vs now .*TinyGuide"
    ):
        evaluate(_evaluation_config(make_config, tmp_path, *overrides, f"ckpt_path={checkpoint}"))
    accepted = evaluate(
        _evaluation_config(
            make_config, tmp_path, *overrides, f"ckpt_path={checkpoint}", "accept_tower_change=true"
        )
    )
    assert accepted["sets"]["HIDE"]["images"] == 2


def test_the_released_ptgrm_file_loads_target_and_refiner_through_one_door(
    make_config, tmp_path: Path
) -> None:
    """The official SNR-Aware + PTG-RM checkpoint (a bare state dict, the refiner as ``refinement11.*``)."""
    tiny = ("backbone=snr_aware_tiny", "refiner=ptgrm_tiny", "guide=none")
    source_cfg = make_config("stage=ptgrm", *tiny)
    with open_dict(source_cfg):
        source_cfg.guide = OmegaConf.create(TINY_GUIDE)
    torch.manual_seed(3)
    source = build_stage(source_cfg).net
    refiner = {REFINER_PREFIX + name: value for name, value in source.refiner.state_dict().items()}
    torch.save({**source.target.state_dict(), **refiner}, tmp_path / "SID.pth")
    cfg = _evaluation_config(
        make_config, tmp_path, "benchmark=ptgrm_lowlight", f"ckpt_path={tmp_path / 'SID.pth'}", *tiny
    )
    with open_dict(cfg):
        cfg.guide = OmegaConf.create(TINY_GUIDE)
    torch.manual_seed(4)
    loaded = load_stage(cfg).net
    assert loaded.state_dict().keys() == source.state_dict().keys()
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_self_ensemble_averages_the_eight_flips_and_transposes(make_config, tmp_path: Path) -> None:
    weights = _basicsr("nafnet_tiny", "params")(make_config, tmp_path)
    cfg = _evaluation_config(
        make_config, tmp_path, "benchmark=sidd", f"ckpt_path={weights}", "backbone=nafnet_tiny"
    )
    stage = load_stage(cfg).eval()
    degraded = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        ensembled = restorer(stage, Protocol(self_ensemble=True))(degraded)["restored"]
        plain = restorer(stage, Protocol())(degraded)["restored"]
        views = []
        for flip_w, flip_h, transpose in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
            view = degraded.flip(-1) if flip_w else degraded
            view = view.flip(-2) if flip_h else view
            view = view.transpose(-2, -1) if transpose else view
            out = stage.restore_for_evaluation(view)[0]
            out = out.transpose(-2, -1) if transpose else out
            out = out.flip(-2) if flip_h else out
            views.append(out.flip(-1) if flip_w else out)
    assert torch.allclose(ensembled, torch.stack(views).mean(0), atol=1e-6)
    assert not torch.allclose(ensembled, plain, atol=1e-4)  # a random NAFNet is not flip-equivariant


@pytest.mark.usefixtures("offline_wandb")
def test_logger_wandb_gets_the_per_set_and_per_image_tables(make_config, tmp_path: Path) -> None:
    overrides = ("benchmark=allinone_5task", "backbone=nafnet_tiny", "benchmark.sets=[Rain100L,LOL-v1]")
    cfg = _evaluation_config(make_config, tmp_path, *overrides, "ckpt_path=/nowhere")
    for name in ("Rain100L", "LOL-v1"):
        build_fake_set(cfg.benchmark.datasets[name], GT_SIDE)
    weights = _basicsr("nafnet_tiny", "params")(make_config, tmp_path)
    cfg = _evaluation_config(make_config, tmp_path, *overrides, f"ckpt_path={weights}", "logger=wandb")

    results = evaluate(cfg)

    (run,) = read_offline_runs(Path(cfg.paths.output_dir))
    per_set = {row["set"]: row for row in run.table("benchmark")}
    assert per_set.keys() == {"Rain100L", "LOL-v1"}
    assert per_set["Rain100L"]["psnr"] == pytest.approx(results["sets"]["Rain100L"]["psnr"])
    assert len(run.table("images")) == 4
    assert run.summary["LOL-v1/psnr"] == pytest.approx(results["sets"]["LOL-v1"]["psnr"])
