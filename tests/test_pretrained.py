"""``load_pretrained``: the containers released weights come in, strictness, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from restoration.archs import load_pretrained, read_state_dict
from restoration.errors import ConfigError
from restoration.run import build_backbone


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: state,
        lambda state: {"params": state},
        lambda state: {"params_ema": state, "params": {k: torch.zeros_like(v) for k, v in state.items()}},
        lambda state: {"state_dict": state, "epoch": 3},
        lambda state: {"model": {f"module.{k}": v for k, v in state.items()}},
    ],
    ids=["bare", "params", "params_ema_first", "state_dict", "ddp_model"],
)
def test_containers_unwrap_to_the_same_weights(wrap, tmp_path: Path) -> None:
    source = _net(0)
    path = tmp_path / "weights.pth"
    torch.save(wrap(source.state_dict()), path)
    loaded = load_pretrained(_net(1), path)
    assert _same(loaded, source)
    assert loaded.pretrained_mismatch == {"missing": [], "unexpected": []}


def test_explicit_key_prefix_and_safetensors(tmp_path: Path) -> None:
    source = _net(0)
    lightning = {
        "state_dict": {f"net.{k}": v for k, v in source.state_dict().items()} | {"loss.w": torch.ones(1)}
    }
    torch.save(lightning, tmp_path / "run.ckpt")
    assert _same(load_pretrained(_net(1), tmp_path / "run.ckpt", key="state_dict", prefix="net."), source)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert _same(load_pretrained(_net(1), tmp_path / "w.safetensors"), source)


def test_strict_errors_name_the_file_and_keys(tmp_path: Path) -> None:
    state = _net(0).state_dict()
    state["extra.weight"] = torch.ones(2)
    del state["0.bias"]
    path = tmp_path / "bad.pth"
    torch.save({"params": state}, path)
    with pytest.raises(
        ConfigError, match=r"bad\.pth.*1 missing: 0\.bias; 1 unexpected: extra\.weight"
    ) as error:
        load_pretrained(_net(1), path)
    assert "\n" not in str(error.value)
    loose = load_pretrained(_net(1), path, strict=False)
    assert loose.pretrained_mismatch == {"missing": ["0.bias"], "unexpected": ["extra.weight"]}
    assert torch.equal(loose[0].weight, state["0.weight"])


def test_shape_mismatch_is_an_error_even_when_not_strict(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)).state_dict(), path)
    with pytest.raises(ConfigError, match=r"0\.weight \(8, 3, 3, 3\) \(expected \(4, 3, 3, 3\)\)"):
        load_pretrained(nn.Sequential(nn.Conv2d(3, 4, 3)), path, strict=False)


def test_unreadable_and_unknown_containers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk\.pth: cannot be read by torch\.load"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"weights": {"a": torch.ones(1)}, "step": 3}, tmp_path / "odd.pth")
    with pytest.raises(
        ConfigError, match=r"odd\.pth: neither a state dict nor a container.*\['step', 'weights'\]"
    ):
        read_state_dict(tmp_path / "odd.pth")
    assert read_state_dict(tmp_path / "odd.pth", key="weights") == {"a": torch.ones(1)}
    with pytest.raises(ConfigError, match="no entry 'params'"):
        read_state_dict(tmp_path / "odd.pth", key="params")
    with pytest.raises(ConfigError, match=r"no key starts with 'net\.'"):
        read_state_dict(tmp_path / "odd.pth", key="weights", prefix="net.")


def test_backbone_weights_from_the_config(make_config, tmp_path: Path) -> None:
    cfg = make_config("backbone=nafnet_tiny")
    released = build_backbone(cfg)
    for param in released.parameters():
        param.data.normal_()
    torch.save({"params": released.state_dict()}, tmp_path / "released.pth")
    loaded = build_backbone(
        make_config("backbone=nafnet_tiny", f"backbone_weights.path={tmp_path / 'released.pth'}")
    )
    assert _same(loaded, released)
    with pytest.raises(ConfigError, match=r"released\.pth do not fit Restormer"):
        build_backbone(
            make_config("backbone=restormer_tiny", f"backbone_weights.path={tmp_path / 'released.pth'}")
        )
