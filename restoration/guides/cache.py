"""A disk cache of off-the-shelf features (OSF): the guide runs once per degraded image, not once per step.

For PTG-RM (Xu et al., "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024) the
frozen guide is the most expensive part of a training step. With paired data the degraded image never
changes, so its feature g = G(I_d) can be computed once, on the **full** image (training crops are random,
and the guide resizes whatever it gets to its own input size anyway), and stored on disk.

One small ``.pt`` file per image, under ``<folder>/<guide key>/``: the guide key fingerprints the guide's
class, options and weights (:func:`guide_key`), so different guides never collide. Each entry records the
source file's resolved path, modification time and size; an entry whose file has changed since is a miss and
is rewritten.
Writes go through a temporary file and an atomic rename, so concurrent DDP ranks can share a folder.

:func:`precompute` fills the cache for every pair of an :class:`~restoration.data.sources.ImageSource` and
returns the N×D table in the source's index order: the datamodule calls it before training when
``guide.input=frame`` (:meth:`~restoration.data.datamodules.RestorationDataModule.attach_features`), and its
batches then carry each image's row as ``osf``, so the guide does not run in the training step.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from restoration.data.datasets import to_grey
from restoration.data.sources import ImageSource, SIDDBlocks
from restoration.errors import ConfigError, DataError
from restoration.guides.base import Guide

__all__ = ["OSFCache", "guide_key", "precompute", "source_file"]

log = logging.getLogger(__name__)


def guide_key(guide: Guide) -> str:
    """A folder name identifying ``guide``: its class name and a hash of its options and weights."""
    digest = hashlib.blake2b(digest_size=8)
    kind = f"{type(guide).__module__}.{type(guide).__qualname__}"
    digest.update(f"{kind}|{guide.dim}|{getattr(guide, 'identity', '')}".encode())
    for name, tensor in guide.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(guide).__name__}-{digest.hexdigest()}"


def source_file(source: ImageSource, index: int) -> tuple[Path, str]:
    """The file holding pair ``index``'s degraded image, and which member of it (``""`` for a whole file)."""
    if not source.paired:
        raise ConfigError(
            f"{source.description}: OSF precomputation needs paired data; synthesized degradations change "
            "every step, so their features are computed in the step"
        )
    degraded = source.entries[index].lq
    if isinstance(degraded, Path):
        return degraded, ""
    if isinstance(source, SIDDBlocks) and isinstance(degraded, int):
        return source.noisy_mat, str(degraded)
    raise DataError(f"{source.description}: pair {index} has no degraded image file to key the OSF cache by")


class OSFCache:
    """One cached OSF per (image file, member) under ``folder/guide_key``.

    Args:
        folder: the cache root; one sub-folder per guide.
        guide_key: the guide's identity, :func:`guide_key` of it.
    """

    def __init__(self, folder: str | Path, *, guide_key: str) -> None:
        if not guide_key or "/" in guide_key or guide_key in (".", ".."):
            raise ValueError(f"guide_key {guide_key!r} must be a plain folder name; use guide_key(guide)")
        self.folder = Path(folder) / guide_key

    def _entry(self, file: Path, member: str) -> tuple[Path, dict[str, object]]:
        resolved = file.resolve()
        try:
            stat = resolved.stat()
        except OSError as error:
            raise DataError(f"{file}: cannot read the image file for the OSF cache ({error})") from error
        name = hashlib.sha1(f"{resolved}#{member}".encode()).hexdigest()[:24]
        stamp = {
            "source": str(resolved),
            "member": member,
            "mtime_ns": stat.st_mtime_ns,
            "size": stat.st_size,
        }
        return self.folder / f"{name}.pt", stamp

    def get(self, file: str | Path, *, member: str = "") -> torch.Tensor | None:
        """The cached D-vector of ``file`` (CPU, fp32), or ``None`` if absent or the file changed since."""
        path, stamp = self._entry(Path(file), member)
        if not path.is_file():
            return None
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file is a miss; put() replaces it
            log.warning("%s: unreadable OSF cache entry, recomputing (%s)", path, error)
            return None
        if not isinstance(content, dict) or any(content.get(key) != value for key, value in stamp.items()):
            return None
        return content["osf"]

    def put(self, file: str | Path, osf: torch.Tensor, *, member: str = "") -> None:
        """Store the D-vector ``osf`` of ``file``."""
        if osf.ndim != 1:
            raise ValueError(f"an OSF cache entry is one D-vector, got shape {tuple(osf.shape)}")
        path, stamp = self._entry(Path(file), member)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({**stamp, "osf": osf.detach().float().cpu().clone()}, partial)
        os.replace(partial, path)

    def get_or_compute(
        self,
        files: Sequence[str | Path],
        images: Sequence[torch.Tensor],
        guide: Guide,
        *,
        members: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """The N×D OSF of N full degraded images (3×H×W each, sizes may differ), computing and storing misses.

        ``images[i]`` is the image in ``files[i]`` (member ``members[i]``); the result is on the guide's
        device.
        """
        members = [""] * len(files) if members is None else list(members)
        if not len(files) == len(images) == len(members):
            raise ValueError(f"got {len(files)} files, {len(images)} images and {len(members)} members")
        device = _device_of(guide)
        rows = []
        for file, image, member in zip(files, images, members, strict=True):
            osf = self.get(file, member=member)
            if osf is None:
                osf = guide(image.unsqueeze(0).to(device))[0]
                self.put(file, osf, member=member)
            rows.append(osf.to(device))
        return torch.stack(rows) if rows else torch.empty(0, guide.dim, device=device)


def precompute(
    guide: Guide,
    source: ImageSource,
    folder: str | Path | None,
    *,
    device: torch.device | str | None = None,
    grey: bool = False,
    skip_bad_files: bool = False,
) -> torch.Tensor:
    """The N×D table (CPU, fp32) of the OSF of every pair's full degraded image, row i = pair i.

    The source must be scanned and paired. With a ``folder``, features are read from the cache under it where
    they are up to date and computed (on the guide's device) and stored otherwise; with ``None`` all are
    computed and nothing is written. ``device``: move the guide there first (``None``: where it is).
    ``grey``: the features of the grey images
    (:func:`~restoration.data.datasets.to_grey`, what ``datamodule.grey`` trains on), cached apart from the
    colour ones. ``skip_bad_files``: an unreadable image gets a row of NaN and a warning instead of stopping
    (the training crops skip the same file).
    """
    key = guide_key(guide) + ("-grey" if grey else "")
    cache = OSFCache(folder, guide_key=key) if folder is not None else None
    if device is not None:
        guide.to(device)
    device = _device_of(guide)
    rows, computed = [], 0
    for index in tqdm(range(len(source)), desc=f"OSF {key}", unit="image", leave=False, mininterval=5.0):
        file, member = source_file(source, index)
        osf = cache.get(file, member=member) if cache is not None else None
        if osf is None:
            try:
                _, degraded = source.read(index)
            except DataError as error:
                if not skip_bad_files:
                    raise
                log.warning("OSF of an unreadable image left as NaN (%s)", error)
                rows.append(torch.full((guide.dim,), math.nan))
                continue
            assert degraded is not None  # paired sources always return the degraded image
            if grey:
                degraded = to_grey(degraded)
            osf = guide(degraded.unsqueeze(0).to(device))[0].float().cpu()
            if cache is not None:
                cache.put(file, osf, member=member)
            computed += 1
        rows.append(osf)
    log.info(
        "OSF of %s (%s): %d of %d features computed, %d reused",
        source.description,
        cache.folder if cache is not None else f"{key}, in memory",
        computed,
        len(rows),
        len(rows) - computed,
    )
    return torch.stack(rows) if rows else torch.empty(0, guide.dim)


def _device_of(guide: Guide) -> torch.device:
    parameter = next(guide.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
