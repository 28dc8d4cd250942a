"""Frozen towers have an identity: checkpoints record each one (class, config, SHA-256 of the weights),
and resuming or testing with other tower weights is refused in one line naming both, unless accepted."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from restoration.checkpoints import check_frozen_towers, frozen_tower_identity
from restoration.errors import ConfigError
from restoration.run import build_stage, run

from .guide_models import TinyOpenClip, save_tiny_open_clip

# PTG-RM on low light at its tiny size: two training steps, one validation and one test image.
TINY = (
    "experiment=ptgrm_lowlight",
    "backbone=snr_aware_tiny",
    "refiner=ptgrm_tiny",
    "trainer=smoke",
    "datamodule.batch_size=2",
    "datamodule.crop_size=64",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


def _stage(cfg) -> torch.nn.Module:
    """The stage of ``cfg``, built as ``restoration.run`` builds it."""
    return build_stage(cfg)


def _guide(clip: TinyOpenClip) -> tuple[str, ...]:
    return (
        f"guide.model={clip.model}",
        f"guide.model_config={clip.model_config}",
        f"guide.pretrained={clip.pretrained}",
    )


@pytest.mark.usefixtures("in_tmp_dir")
def test_a_checkpoint_refuses_another_guide_unless_accepted(
    make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained_with, other = (
        save_tiny_open_clip(tmp_path / "a", seed=0),
        save_tiny_open_clip(tmp_path / "b", seed=1),
    )
    trained = make_config(*TINY, *_guide(trained_with), "test=false", run_name="trained")
    ckpt = Path(trained.paths.output_dir) / "checkpoints" / "last.ckpt"
    run(trained)

    # the record: the guide's class, config and weights, the same as a freshly built stage's
    record = torch.load(ckpt, weights_only=True)["frozen_towers"]
    assert set(record) == {"guide"}
    assert record["guide"]["class"] == "restoration.guides.clip.ClipGuide"
    assert record["guide"]["config"]["pretrained"] == str(trained_with.pretrained)
    rebuilt = make_config(*TINY, *_guide(trained_with))
    assert frozen_tower_identity(_stage(rebuilt), rebuilt) == record
    other_identity = frozen_tower_identity(_stage(make_config(*TINY, *_guide(other))))
    assert other_identity["guide"]["sha256"] != record["guide"]["sha256"]

    # testing or resuming with other guide weights: one line naming both
    digest = record["guide"]["sha256"][:12]
    path_a, path_b = (re.escape(str(clip.pretrained)) for clip in (trained_with, other))
    saved = rf"saved ClipGuide \([^)]*pretrained={path_a}[^)]*; weights {digest}\)"
    now = rf"now ClipGuide \([^)]*pretrained={path_b}[^)]*; weights [0-9a-f]{{12}}\)"
    refused = (
        rf"^ckpt_path={re.escape(str(ckpt))}: frozen tower guide differs: {saved} vs {now}; set accept_tower"
    )
    for mode in (("train=false",), ("max_steps=3",)):
        with pytest.raises(ConfigError, match=refused) as error:
            run(make_config(*TINY, *_guide(other), *mode, f"ckpt_path={ckpt}"))
        assert "\n" not in str(error.value)

    # accepted on purpose: it runs, and says so
    caplog.set_level(logging.WARNING)
    accepted = make_config(
        *TINY, *_guide(other), "train=false", f"ckpt_path={ckpt}", "accept_tower_change=true"
    )
    run(accepted)
    assert json.loads((Path(accepted.paths.output_dir) / "results.json").read_text())["status"] == "finished"
    assert any("accepted (accept_tower_change=true)" in entry.getMessage() for entry in caplog.records)

    # the same weights under another path are the same tower
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "a", moved)
    same = TinyOpenClip(
        trained_with.model,
        moved / trained_with.model_config.name,
        moved / trained_with.pretrained.name,
        moved,
        trained_with.dim,
    )
    run(make_config(*TINY, *_guide(same), "train=false", f"ckpt_path={ckpt}"))


def test_a_checkpoint_without_a_record_loads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    towers = {"guide": {"class": "x.Guide", "config": None, "sha256": "0" * 64}}
    caplog.set_level(logging.WARNING)
    check_frozen_towers("old.ckpt", {"state_dict": {}}, towers, accept=False)
    assert [record.getMessage() for record in caplog.records] == [
        "ckpt_path=old.ckpt records no frozen towers (written before they were recorded): cannot check that "
        "its guide match the ones built now"
    ]
    # a stage without towers has nothing to check, and a recorded tower absent now is not compared
    caplog.clear()
    check_frozen_towers("old.ckpt", {"state_dict": {}}, {}, accept=False)
    check_frozen_towers("new.ckpt", {"frozen_towers": towers}, {}, accept=False)
    assert not caplog.records
    changed = {"guide": {**towers["guide"], "sha256": "1" * 64}}
    with pytest.raises(
        ConfigError, match=r"saved Guide \(weights 000000000000\) vs now Guide \(weights 111111111111\)"
    ):
        check_frozen_towers("new.ckpt", {"frozen_towers": towers}, changed, accept=False)
