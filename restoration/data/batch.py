"""What a stage receives: the :class:`Batch` every datamodule makes, and the :class:`Stream` tags.

The datamodule makes every input a stage sees (crops, views, degradations, the per-step task); a stage only
computes. Every random draw of the data path comes from a generator seeded by ``stream_seed(seed, position
or step, Stream.X)``: a pure function of the run's seed and where the draw happens in the stream, so resumed
runs, any number of loader workers and every DDP rank draw what an uninterrupted single-process run would.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NotRequired, TypedDict

from torch import Tensor

__all__ = ["Batch", "Stream", "stream_seed"]

_MASK64 = (1 << 64) - 1


def stream_seed(*values: int) -> int:
    """Mix integers into one 63-bit seed (SplitMix64 finaliser), stable across processes."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


class Stream(IntEnum):
    """The random streams of the data path, one tag each, so no two draws ever share a seed."""

    ORDER = 0
    """the permutation of the training images of each epoch, seeded by (seed, epoch, ORDER)"""
    DEGRADATION = 1
    """the on-device degradation of a training batch, seeded by (seed, first position, DEGRADATION)"""
    WORKER = 2
    """the loader workers' base seeds, one per rank"""
    CROP = 3
    """the crop and flips of training sample ``p``, seeded by (seed, p, CROP)"""
    MIX = 4
    """the task of sample ``p`` when several paired datasets are mixed (all-in-one on real pairs)"""
    TASK = 11
    """the task of optimizer step ``s`` when one task is drawn per step (IPT), seeded by (seed, s, TASK)"""
    TASK_CROP = 12
    """the offset of the task's ``48·scale`` window in a batch's clean crops (IPT)"""
    VIEW = 21
    """the second, independent view of a sample (ConStyle's key), seeded by (seed, p, VIEW)"""


class Batch(TypedDict):
    """A batch as a stage's ``training_step`` (and validation) receives it, on the training device.

    ``index`` stays on the host: reading it never waits for the device.
    """

    lq: Tensor
    """N×3×h×w degraded inputs in [0, 1]"""
    gt: Tensor
    """N×3×H×W ground truth in [0, 1] (``H = scale·h``)"""
    index: list[int]
    """stream positions (training) or item indices (validation, test) of the samples, on the host"""
    type: Tensor
    """int64 N, the degradation type id of each sample (the datamodule's ``degradation_names``)"""
    label: Tensor
    """int64 N, the class label of each sample (-1: none)"""
    name: NotRequired[list[str]]
    """the images' names (validation, test, prediction)"""
    task: NotRequired[str]
    """the one task of the whole batch when the data draws one per optimizer step (IPT pre-training)"""
    key: NotRequired[Tensor]
    """N×3×H×W a second, independent view of each clean image (ConStyle's positive key)"""
    osf: NotRequired[Tensor]
    """N×D the frozen guide's feature of each sample's whole degraded image, computed once before training
    (PTG-RM's ``guide.input=frame`` on paired data: the stage then does not run the guide)"""
