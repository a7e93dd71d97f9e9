"""Images to tensors: transforms (normalisation from the backbone's own config), datasets and the batch sampler.

Augmentation randomness is seeded per sample from (run seed, epoch, position in the epoch), so a run resumed in
the middle of an epoch sees exactly the batches and crops an uninterrupted run would, whatever the worker count.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # its exit handler is registered on import: ours (below) must come after it
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import Dataset
from torchvision import transforms as T

from benchmark.data.base import DatasetError, SplitData

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass
class TransformSpec:
    train: T.Compose
    test: T.Compose
    description: dict[str, Any]


def build_transforms(
    preset: str, image_size: int, mean, std, interpolation: str, resize_ratio: float, dataset: str = ""
) -> TransformSpec:
    """The train and test transforms of a preprocessing convention (protocol.md §2)."""
    interp = _INTERPOLATION.get(interpolation, T.InterpolationMode.BILINEAR)
    normalize = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if preset == "saga":  # SAGA App. A: resize the full image to image_size², train and test, no crop
        train = [T.Resize((image_size, image_size), interpolation=interp)]
        test = list(train)
        desc = {"train": f"resize {image_size}x{image_size}", "test": f"resize {image_size}x{image_size}"}
    elif preset == "hypvit":  # Hyp-ViT (Ermolov et al.): RRC scale (0.2, 1) bicubic + flip; test resize (CUB 256)
        bicubic = T.InterpolationMode.BICUBIC
        resize = int(round(image_size * 256 / 224)) if dataset == "cub" else image_size
        train = [T.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=bicubic), T.RandomHorizontalFlip()]
        test = [T.Resize(resize, interpolation=bicubic), T.CenterCrop(image_size)]
        desc = {
            "train": f"RandomResizedCrop({image_size}, scale=(0.2,1), bicubic)+HFlip",
            "test": f"resize {resize} bicubic, centre crop {image_size}",
        }
    else:  # classic DML (Proxy Anchor, HIST): RRC + flip; test resize 256 centre crop 224
        resize = int(round(image_size * resize_ratio))
        train = [T.RandomResizedCrop(image_size, interpolation=interp), T.RandomHorizontalFlip()]
        test = [T.Resize(resize, interpolation=interp), T.CenterCrop(image_size)]
        desc = {"train": f"RandomResizedCrop({image_size})+HFlip", "test": f"resize {resize}, centre crop {image_size}"}
    desc.update(preset=preset, mean=[float(m) for m in mean], std=[float(s) for s in std], interpolation=interpolation)
    return TransformSpec(T.Compose(train + normalize), T.Compose(test + normalize), desc)


def open_image(item: str | np.ndarray) -> Image.Image:
    """An RGB PIL image from a file path or a uint8 H×W×3 array; unreadable files are named in the error."""
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert("RGB")
    try:
        with Image.open(item) as img:
            return img.convert("RGB")
    except Image.DecompressionBombError as err:  # a header claiming e.g. 20000x20000: refused before decoding
        raise DatasetError(
            f"Cannot read image {item}: its header claims more pixels than any real photograph here ({err}). The "
            "file is corrupted or hostile: replace it from the official archive. Training does not skip images."
        ) from None
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(
            f"Cannot read image {item} ({err}). The file is missing or corrupted: replace it from the official "
            "archive (python -m benchmark prepare ... validates every image). Training does not skip images."
        ) from err


def unwrap_worker_errors(loader: torch.utils.data.DataLoader):
    """Iterate ``loader``; a DatasetError raised in a worker process comes back as its own one-line message.

    (Hand-written: torch re-raises a worker's exception with the worker's traceback prepended to the message.)
    Whatever ends the iteration (an error here, an error or a stop in the loop body) shuts the loader's worker
    processes down at once: see :func:`shutdown_workers`.
    """
    iterator = iter(loader)
    _LIVE_ITERATORS.add(iterator)
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DatasetError as err:
                text = str(err).strip()
                if "Original Traceback" not in text:
                    raise
                last = text.splitlines()[-1]
                raise DatasetError(last.split(": ", 1)[1] if ": " in last else last) from None
            yield batch
    finally:
        shutdown_workers(iterator)


#: DataLoader iterators whose worker processes may still run (weak: a finished iterator is simply dropped).
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


def shutdown_workers(iterator: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (no-op without workers).

    Hand-written because torch only does this when the iterator is garbage-collected, and an exception's traceback
    keeps it alive until the interpreter exits. Our workers ignore SIGTERM (:func:`ignore_stop_signals_in_worker`),
    so multiprocessing's exit handler, which terminates daemonic children with SIGTERM and then joins them, would
    wait for them forever: the run printed its error and never exited.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    _LIVE_ITERATORS.discard(iterator)


@atexit.register  # registered after multiprocessing's own exit handler (imported by torch), so it runs before it
def _end_child_processes() -> None:
    """At exit, end every worker process still alive: shut down live loaders, then kill what still runs.

    Every child process ends when its parent does; a child that ignores SIGTERM gets SIGKILL after 5 s.
    """
    for iterator in list(_LIVE_ITERATORS):
        try:
            shutdown_workers(iterator)
        except Exception:  # exiting anyway: the kill below still ends the workers
            pass
    for child in multiprocessing.active_children():
        if child.daemon:
            child.terminate()
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)


class ImageDataset(Dataset):
    """A split as (image tensor, label) pairs; labels are remapped to 0..C-1 by ``label_map``.

    Indices may be plain ints, or ``(index, sample_seed)`` pairs from :class:`SeededBatchSampler`, in which case
    the transform's randomness is seeded with ``sample_seed``.
    """

    def __init__(self, split: SplitData, transform: T.Compose, label_map: dict[int, int] | None = None) -> None:
        self.split = split
        self.transform = transform
        self.labels = np.array([label_map[int(y)] for y in split.labels]) if label_map else split.labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = open_image(self.split.images[index])
        if seed is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            tensor = self.transform(image)
            torch.random.set_rng_state(state)
        else:
            tensor = self.transform(image)
        return tensor, int(self.labels[index])


def epoch_batches(
    labels: np.ndarray, batch_size: int, m_per_class: int, steps: int, seed: int, epoch: int
) -> list[list[tuple[int, int]]]:
    """The epoch's batches as lists of (index, sample_seed): pytorch-metric-learning's m-per-class sampling.

    pml's ``MPerClassSampler`` draws from numpy's global RNG, so it is run under a generator state derived from
    (seed, epoch) and restored afterwards: the batches depend on nothing else.
    """
    classes, counts = np.unique(labels, return_counts=True)
    n_classes_per_batch = batch_size // m_per_class
    if len(classes) < n_classes_per_batch:
        raise DatasetError(
            f"The m-per-class sampler needs {n_classes_per_batch} classes per batch "
            f"(train.batch_size={batch_size} / train.m_per_class={m_per_class}) but the training split has only "
            f"{len(classes)} classes. Lower train.batch_size or raise train.m_per_class."
        )
    state = np.random.get_state()
    np.random.seed((seed * 1_000_003 + epoch) % 2**32)
    try:
        sampler = MPerClassSampler(
            labels, m=m_per_class, batch_size=batch_size, length_before_new_iter=steps * batch_size
        )
        order = list(iter(sampler))
    finally:
        np.random.set_state(state)
    base = (seed * 1_000_003 + epoch) * 10_000_000
    return [
        [(int(i), base + b * batch_size + j) for j, i in enumerate(order[b * batch_size : (b + 1) * batch_size])]
        for b in range(steps)
    ]


class ListBatchSampler(torch.utils.data.Sampler):
    """Yields precomputed batches, starting at ``start`` (to resume in the middle of an epoch)."""

    def __init__(self, batches: list[list[tuple[int, int]]], start: int = 0) -> None:
        self.batches = batches
        self.start = start

    def __iter__(self):
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start
