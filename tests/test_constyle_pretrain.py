"""ConStyle v2 pre-training: queue and momentum arithmetic, each loss by hand, a short run, checkpoints."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from restoration.archs.constyle import ConStyleEncoder
from restoration.data.datamodules import RestorationDataModule
from restoration.data.sources import ImageFolder
from restoration.errors import ConfigError
from restoration.stages.constyle_pretrain import (
    ConStylePretrainStage,
    EmbeddingQueue,
    content_loss,
    distillation_loss,
    info_nce_logits,
    info_nce_loss,
    momentum_update,
    style_loss,
)

from .conftest import write_image

# Trainers built here write their grids under the working directory: keep them out of the checkout.
pytestmark = pytest.mark.usefixtures("in_tmp_dir")


CONF = Path(__file__).resolve().parents[1] / "conf"
BATCH = 4


def _stage(**options) -> ConStylePretrainStage:
    settings = {
        "net": ConStyleEncoder(num_classes=8),
        "optimizer": functools.partial(torch.optim.AdamW, lr=1e-3),
        "queue_size": 8,
        "pretext": "degradation",
        **options,
    }
    return ConStylePretrainStage(**settings)


def _datamodule(folder: Path, key_view: bool = False) -> RestorationDataModule:
    """Random 40×48 photos: six to train on (32² crops), two whole ones to validate on."""
    for index in range(8):
        write_image(folder / ("val" if index >= 6 else "train") / f"{index}.png", seed=index)
    return RestorationDataModule(
        name="random",
        train=ImageFolder(root=str(folder / "train")),
        val=ImageFolder(root=str(folder / "val")),
        degradation=instantiate(OmegaConf.load(CONF / "degradation" / "allinone.yaml")),
        crop_size=32,
        batch_size=BATCH,
        num_workers=0,
        cache_images=True,
        seed=0,
        key_view=key_view,
    )


def _fit(
    stage: ConStylePretrainStage,
    folder: Path,
    steps: int,
    callbacks=(),
    validate: bool = True,
    key_view: bool = False,
) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        limit_val_batches=1 if validate else 0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=list(callbacks),
    )
    trainer.fit(stage, datamodule=_datamodule(folder, key_view))
    return trainer


# ---- queue and momentum ------------------------------------------------------------------------


def test_queue_returns_the_official_slices_and_wraps_round() -> None:
    queue = EmbeddingQueue(dim=3, size=6)
    start = torch.arange(18.0).view(3, 6)
    queue.queue.copy_(start)
    batches = [torch.full((2, 3), float(100 * (i + 1))) for i in range(4)]

    after, overwritten = queue.push(batches[0])
    assert torch.equal(overwritten, start[:, 0:2].T) and torch.equal(after, start[:, 2:4].T)
    assert int(queue.queue_ptr) == 2 and torch.equal(queue.queue[:, 0:2], batches[0].T)
    queue.push(batches[1])
    # the third write fills columns 4-5; the slice "after" it wraps round to the first write
    after, overwritten = queue.push(batches[2])
    assert torch.equal(overwritten, start[:, 4:6].T) and torch.equal(after, batches[0])
    assert int(queue.queue_ptr) == 0
    after, overwritten = queue.push(batches[3])
    assert torch.equal(overwritten, batches[0]) and torch.equal(after, batches[1])
    assert int(queue.queue_ptr) == 2 and torch.equal(queue.queue[:, 4:6], batches[2].T)


def test_queue_of_one_batch_and_bad_sizes() -> None:
    queue = EmbeddingQueue(dim=2, size=2)
    old = queue.queue.T.clone()
    after, overwritten = queue.push(torch.ones(2, 2))
    assert torch.equal(after, old) and torch.equal(overwritten, old) and int(queue.queue_ptr) == 0
    with pytest.raises(ConfigError, match=r"stage.queue_size=6 is not a multiple of the 4 latents"):
        EmbeddingQueue(dim=2, size=6).push(torch.ones(4, 2))
    standard = EmbeddingQueue(dim=5, size=7, normalise=True).queue
    assert torch.allclose(standard.norm(dim=0), torch.ones(7))


def test_momentum_update_moves_parameters_only() -> None:
    torch.manual_seed(0)
    query, key = ConStyleEncoder(num_classes=4), ConStyleEncoder(num_classes=4)
    key.mlp1[1].running_mean.fill_(0.25)
    before = copy.deepcopy(key)
    momentum_update(key, query, momentum=0.9)
    for (name, new), old, current in zip(
        key.named_parameters(), before.parameters(), query.parameters(), strict=True
    ):
        assert torch.allclose(new, 0.9 * old + 0.1 * current, rtol=1e-6, atol=1e-7), name
    for new, old in zip(key.buffers(), before.buffers(), strict=True):
        assert torch.equal(new, old)


# ---- losses by hand ----------------------------------------------------------------------------


def test_info_nce_is_cross_entropy_over_positive_and_queue() -> None:
    torch.manual_seed(1)
    query, positive, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4, 5)
    logits = info_nce_logits(query, positive, queue, temperature=0.07)
    total = 0.0
    for i in range(3):
        row = [sum(query[i, d].item() * positive[i, d].item() for d in range(4)) / 0.07]
        row += [sum(query[i, d].item() * queue[d, j].item() for d in range(4)) / 0.07 for j in range(5)]
        assert logits[i].tolist() == pytest.approx(row, rel=1e-5)
        top = max(row)
        total += -(row[0] - top - math.log(sum(math.exp(value - top) for value in row)))
    assert info_nce_loss(logits).item() == pytest.approx(total / 3, rel=1e-5)


def test_content_loss_is_mse() -> None:
    query, key = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    assert content_loss(query, key).item() == pytest.approx((1 + 0 + 4 + 9) / 4)


def _gram_mse(first: torch.Tensor, second: torch.Tensor) -> float:
    n, d = first.shape
    a, b = first.double().tolist(), second.double().tolist()
    total = 0.0
    for i in range(n):
        for j in range(n):
            left = sum(a[i][k] * a[j][k] for k in range(d)) / (n * d)
            right = sum(b[i][k] * b[j][k] for k in range(d)) / (n * d)
            total += (left - right) ** 2
    return total / (n * n)


def test_style_loss_official_and_bounded_forms() -> None:
    torch.manual_seed(2)
    query, negatives = torch.randn(3, 128), torch.randn(3, 128)
    distance = _gram_mse(query, negatives)
    assert style_loss(query, negatives, form="official").item() == pytest.approx(-distance, rel=1e-4)
    assert style_loss(query, negatives, form="bounded").item() == pytest.approx(1 / (1 + distance), rel=1e-5)
    # the official form falls without end as the latents are scaled up; the bounded one stays in (0, 1]
    official = [style_loss(scale * query, negatives, form="official").item() for scale in (1, 10, 100)]
    assert official[0] > official[1] > official[2] < -1e3
    for extreme in (1e30 * query, 1e-30 * query, torch.zeros_like(query), -1e20 * query):
        value = style_loss(extreme, negatives, form="bounded")
        assert torch.isfinite(value) and 0.0 <= value.item() <= 1.0
    assert not torch.isfinite(style_loss(1e30 * query, negatives, form="official"))
    with pytest.raises(ValueError, match="form='hinge'"):
        style_loss(query, negatives, form="hinge")


def test_distillation_is_kl_from_teacher_to_student() -> None:
    student, teacher = (
        torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]),
        torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]),
    )
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        s_norm, t_norm = sum(math.exp(v) for v in s_row), sum(math.exp(v) for v in t_row)
        for s, t in zip(s_row, t_row, strict=True):
            p_t, p_s = math.exp(t) / t_norm, math.exp(s) / s_norm
            total += p_t * (math.log(p_t) - math.log(p_s))
    assert distillation_loss(student, teacher).item() == pytest.approx(total / 2, rel=1e-5)


# ---- the stage ---------------------------------------------------------------------------------


class _Recorder(pl.Callback):
    """Per step: the query and key encoders before it, the key encoder after it, the batch and the terms."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, stage, batch, batch_idx) -> None:
        self.steps.append(
            {
                "query": copy.deepcopy(stage.net),
                "key": copy.deepcopy(stage.key_encoder),
                "batch": copy.deepcopy(batch),
            }
        )

    def on_train_batch_end(self, trainer, stage, outputs, batch, batch_idx) -> None:
        self.steps[-1] |= {"key_after": copy.deepcopy(stage.key_encoder), "terms": stage.last_terms}


def test_three_steps_train_query_only_and_keep_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stage = _stage(class_steps=2)
    initial_ema = copy.deepcopy(stage.ema.module)
    recorder = _Recorder()
    trainer = _fit(stage, tmp_path, 3, [recorder], key_view=True)

    # the key encoder is frozen and outside the optimizer, which holds exactly the query encoder
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in stage.net.parameters()}
    assert not any(p.requires_grad for p in stage.key_encoder.parameters())
    # each step: momentum update from the query encoder as it was before the step's optimizer step
    for step in recorder.steps:
        for new, old, query in zip(
            step["key_after"].parameters(), step["key"].parameters(), step["query"].parameters(), strict=True
        ):
            assert torch.allclose(new, 0.999 * old + 0.001 * query, rtol=1e-6, atol=1e-8)
    assert any(
        not torch.equal(key, query)
        for key, query in zip(stage.key_encoder.parameters(), stage.net.parameters(), strict=True)
    )
    # the key encoder saw a crop of the clean images drawn independently of the query's
    first = recorder.steps[0]
    assert first["batch"]["key"].shape == first["batch"]["gt"].shape
    assert not torch.equal(first["batch"]["key"], first["batch"]["gt"])
    # faithful mode: the first write holds the query latents q1 of the degraded batch
    with torch.no_grad():
        written = first["query"].train()(first["batch"]["lq"]).q1
    assert int(stage.queue.queue_ptr) == (3 * BATCH) % 8
    assert recorder.steps[2]["terms"] == ("infonce", "content", "style", "distillation")
    assert all("pretext" in step["terms"] for step in recorder.steps[:2])
    # the EMA covers the BatchNorm statistics
    assert int(stage.ema.num_updates) == 3
    for name in ("mlp1.1.running_mean", "mlp2.1.running_var"):
        assert not torch.equal(stage.ema.module.get_buffer(name), initial_ema.get_buffer(name)), name
    metrics = trainer.callback_metrics
    for name in ("pretext_top1", "infonce_top1", "infonce", "cosine"):
        assert math.isfinite(float(metrics[f"val/{name}"])), name
    assert 0.0 <= float(metrics["val/pretext_top1"]) <= 1.0
    # a cosine, up to float32 rounding (1.0000001 is seen with 2 torch threads)
    assert -1.0 - 1e-6 <= float(metrics["val/cosine"]) <= 1.0 + 1e-6

    # the step-0 queue write was overwritten at step 2 (K = 2 batches): check it through a fresh queue
    replay = EmbeddingQueue(dim=128, size=8)
    replay.push(written)
    assert torch.allclose(replay.queue[:, :BATCH], written.T)

    path = tmp_path / "stage.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    restored = _stage(class_steps=2)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue.queue, stage.queue.queue)
    assert int(restored.queue.queue_ptr) == int(stage.queue.queue_ptr)
    for name, value in stage.key_encoder.state_dict().items():
        assert torch.equal(restored.key_encoder.state_dict()[name], value), name


def test_faithful_queue_holds_query_latents_and_standard_keys(tmp_path: Path) -> None:
    for mode in ("faithful", "standard"):
        torch.manual_seed(0)
        stage = _stage(mode=mode)
        recorder = _Recorder()
        _fit(stage, tmp_path, 1, [recorder], validate=False)
        step = recorder.steps[0]
        with torch.no_grad():
            if mode == "faithful":
                expected = step["query"].train()(step["batch"]["lq"]).q1
            else:
                expected = F.normalize(step["key_after"].train()(step["batch"]["gt"]).q1, dim=1)
        assert torch.allclose(stage.queue.queue[:, :BATCH].T, expected, atol=1e-5), mode


def test_timm_teacher_is_frozen_local_and_left_out_of_checkpoints(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    weights = tmp_path / "teacher.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=8).state_dict(), weights)
    with pytest.raises(ConfigError, match=r"stage.teacher.checkpoint=.*missing.pth: no such file"):
        _stage(teacher={"name": "test_resnet", "checkpoint": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match=r"stage.teacher.name=no_such_net"):
        _stage(teacher={"name": "no_such_net", "checkpoint": str(weights)})

    stage = _stage(teacher={"name": "test_resnet", "checkpoint": str(weights)})
    trainer = _fit(stage, tmp_path, 1, validate=False)
    assert not stage.teacher.training and not any(p.requires_grad for p in stage.teacher.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in stage.teacher.parameters()}
    assert not any(name.startswith("teacher") for name in stage.ema.state_dict())
    path = tmp_path / "stage.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and not any(name.startswith("teacher.") for name in state)
    _stage(teacher={"name": "test_resnet", "checkpoint": str(weights)}).load_state_dict(state)


def test_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stage.mode='moco'"):
        _stage(mode="moco")
    with pytest.raises(ConfigError, match=r"unknown term\(s\) \['styl'\]"):
        _stage(loss_weights={"styl": 1.0})
    with pytest.raises(ConfigError, match=r"need the prompter's classifier"):
        _stage(net=ConStyleEncoder(num_classes=None))
    with pytest.raises(ConfigError, match=r"queue size must be a multiple of batch_size"):
        _fit(_stage(queue_size=6), tmp_path, 1, validate=False)
    # the labels are checked once, before the first step (reading them in a step would wait for the device)
    with pytest.raises(ConfigError, match=r"stage.pretext=class but the data has no class labels"):
        _fit(_stage(pretext="class"), tmp_path, 1, validate=False)
    with pytest.raises(ConfigError, match=r"8 degradation types do not fit the prompter's 4-way classifier"):
        _fit(_stage(net=ConStyleEncoder(num_classes=4)), tmp_path, 1, validate=False)


def test_ddp_broadcasts_neither_the_queue_nor_the_ema_at_every_step() -> None:
    stage = _stage()
    stage.setup("fit")
    ignored = set(stage._ddp_params_and_buffers_to_ignore)
    assert {"queue.queue", "queue.queue_ptr", "ema.num_updates"} <= ignored
    assert {name for name, _ in stage.ema.named_buffers(prefix="ema")} <= ignored
    # the encoders' BatchNorm statistics are still broadcast from rank 0, as MoCo's
    assert (
        not {name for name, _ in stage.named_buffers() if name.startswith(("net.", "key_encoder."))} & ignored
    )
