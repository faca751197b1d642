"""Face detection over a folder of images, a video file or one image (``python -m nbsrc detect --source``).

`open_source` says what a path is; `detect_source` runs a `nbsrc.detector.Detector` over it. A reader thread
decodes ahead of the model; images of equal size run as one batch (at most ``batch_size``, gathered by a short
look-ahead; equal to one-by-one results up to float32 rounding, bit for bit at ``batch_size=1``); a writer thread
writes, in input order, the annotated images (same relative paths) or video (same fps and size, ``mp4v``) and
one JSON line per image or frame, with the faces as ``detect --image`` prints them (`face_record`)::

    {"source": "sub/a.jpg" (or the frame index), "width": 640, "height": 480, "faces": [<face>, ...]}

Unreadable files and files without an image extension are skipped and reported (`SourceStats`). Every output
file is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from nbsrc.data.image_sizes import IMAGE_EXTENSIONS  # the image files searched in a folder (OpenCV reads them all)
from nbsrc.draw import draw_detections
from nbsrc.utils import atomic_path, tqdm_kwargs

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_WRITER_EXTENSIONS",
    "Source",
    "SourceStats",
    "check_source_save",
    "decode_image",
    "detect_source",
    "face_record",
    "open_source",
]

logger = logging.getLogger(__name__)

VIDEO_WRITER_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")  # containers the mp4v codec is written in
DEFAULT_FPS = 25.0  # a video that declares no frame rate is written at this one
_SHOWN = 20  # names listed in a summary line


def face_record(detection: Mapping[str, Any]) -> dict[str, Any]:
    """One detection as ``detect`` prints it: box rounded to 0.01 px, score to 1e-5, label and landmarks as is."""
    return {
        **detection,
        "box": [round(v, 2) for v in detection["box"]],
        "score": round(detection["score"], 5),
    }


def decode_image(path: str | Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file (EXIF orientation applied, grey and alpha made RGB); OSError when
    it cannot be read, ValueError when it is empty or not an image OpenCV decodes."""
    data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: any path encoding
    if data.size == 0:
        raise ValueError("empty file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image OpenCV can decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # (H, W, 3)


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """What ``--source`` names: a ``"folder"``, ``"video"`` or ``"image"`` at `path`."""

    kind: str
    path: Path
    files: tuple[str, ...] = ()  # folder: image files relative to `path` (``/``-separated, sorted); image: its name
    ignored: tuple[str, ...] = ()  # folder: files left out for their extension
    frames: int = 0  # video: the frame count the file declares (0: unknown)
    fps: float = 0.0  # video: frames per second (`DEFAULT_FPS` when the file declares none)

    def __len__(self) -> int:
        """Images or frames expected (a video's declared count may be off by a few)."""
        return self.frames if self.kind == "video" else len(self.files)


def _walk_images(root: Path, skip: Path | None) -> tuple[list[str], list[str]]:
    """(image files, other files) under `root`, relative and sorted; hidden files and folders and `skip` left out."""
    images, others = [], []
    skip_real = os.path.realpath(skip) if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) != skip_real
        )
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            relative = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(relative)
    return sorted(images), sorted(others)


def open_source(path: str | Path, save: str | Path | None = None) -> Source:
    """Say what `path` is: a folder of images (searched recursively, leaving out the output folder `save`), a
    video file or one image. FileNotFoundError when it does not exist, ValueError for a folder without images or
    a file that is neither an image (by extension) nor a video OpenCV opens."""
    path = Path(path)
    expected = "expected a folder of images, a video file or an image"
    if not path.exists():
        raise FileNotFoundError(f"--source {path}: no such file or folder ({expected})")
    if path.is_dir():
        files, ignored = _walk_images(path, Path(save) if save is not None else None)
        if not files:
            raise ValueError(
                f"--source {path}: no image files in this folder or below (expected {', '.join(IMAGE_EXTENSIONS)}"
                + (f"; {len(ignored)} other file(s) found" if ignored else "")
                + ")"
            )
        return Source("folder", path, files=tuple(files), ignored=tuple(ignored))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return Source("image", path, files=(path.name,))
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(
                f"--source {path}: not a video OpenCV can open, and not an image by its extension ({expected}; "
                f"images: {', '.join(IMAGE_EXTENSIONS)})"
            )
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    if not (math.isfinite(fps) and fps > 0):
        logger.warning("%s declares no frame rate: the annotated video is written at %g fps", path, DEFAULT_FPS)
        fps = DEFAULT_FPS
    return Source("video", path, frames=max(frames, 0), fps=fps)


def check_source_save(source: Source, save: str | Path) -> None:
    """Raise `ValueError` naming ``--save`` when `save` cannot take `source`'s annotated output (checked before any
    work): a folder for a folder (not the source folder itself), a video file for a video, an image file for an
    image."""
    save = Path(save)
    if source.kind == "folder":
        if save.exists() and not save.is_dir():
            raise ValueError(f"--save {save}: exists and is not a folder (expected the output folder of {source.path})")
        if save.exists() and os.path.samefile(save, source.path):
            raise ValueError(f"--save {save}: is the source folder; the annotated images would replace the inputs")
        for parent in save.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"--save {save}: {parent} is a file (expected a folder)")
                break
        source_root, save_root = os.path.realpath(source.path), os.path.realpath(save)
        inputs = {os.path.join(source_root, f) for f in source.files}
        clash = next((f for f in source.files if os.path.join(save_root, f) in inputs), None)
        if clash is not None:
            raise ValueError(f"--save {save}: the annotated {clash} would replace the input image {save / clash}")
        return
    if save.is_dir():
        raise ValueError(f"--save {save}: is a folder (expected a {source.kind} file path)")
    if save.exists() and os.path.samefile(save, source.path):
        raise ValueError(f"--save {save}: is the source file itself")
    suffix = save.suffix.lower()
    if source.kind == "video":
        if suffix not in VIDEO_WRITER_EXTENSIONS:
            raise ValueError(
                f"--save {save}: expected a video file ending in {', '.join(VIDEO_WRITER_EXTENSIONS)} (mp4v)"
            )
    elif not suffix or not cv2.haveImageWriter(f"image{suffix}"):
        what = repr(suffix) if suffix else "suffix-less"
        raise ValueError(f"--save {save}: OpenCV cannot write {what} images (expected e.g. .png or .jpg)")


# -------------------------------------------------------------------------------------------- the items


@dataclass
class _Item:
    """One input: its index in the source, its key in the JSON line, the RGB pixels or why there are none."""

    index: int
    key: str | int
    image: np.ndarray | None  # (H, W, 3) uint8 RGB
    error: str | None = None
    faces: list[dict[str, Any]] | None = None


def _read_items(source: Source) -> Iterator[_Item]:
    """Decoded inputs of `source`, in order (a folder's unreadable files as items without pixels)."""
    if source.kind != "video":
        root = source.path if source.kind == "folder" else source.path.parent
        for index, relative in enumerate(source.files):
            try:
                yield _Item(index, relative, decode_image(root / relative))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                yield _Item(index, relative, None, reason)
        return
    capture = cv2.VideoCapture(str(source.path))
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield _Item(index, index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))  # (H, W, 3)
            index += 1
    finally:
        capture.release()


_END = object()


class _Reader:
    """Runs an iterator in a thread, `depth` items ahead of the consumer; its errors are raised to the consumer."""

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbsrc-detect-reader", daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator's own cleanup (a video capture released) runs here
        self._put(_END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            value = self._queue.get()
            if value is _END:
                return
            if isinstance(value, BaseException):
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Writer:
    """Runs `handle` on every submitted item in a thread, in submission order; an error stops it and is raised by
    the next `submit` or by `close`."""

    def __init__(self, handle: Callable[[Any], None], depth: int) -> None:
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nbsrc-detect-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            value = self._queue.get()
            if value is _END:
                return
            if self._error is None:
                try:
                    self._handle(value)
                except BaseException as exc:  # raised in the main thread
                    self._error = exc

    def submit(self, value: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(value)

    def close(self) -> None:
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error


# ------------------------------------------------------------------------------------------- the outputs


@contextmanager
def _atomic_video_path(path: Path) -> Iterator[Path]:
    """`nbsrc.utils.atomic_path` for a video: the temporary file keeps `path`'s suffix, by which OpenCV's writer
    chooses the container."""
    with atomic_path(path) as tmp:
        video_tmp = tmp.with_name(tmp.name + path.suffix)
        try:
            yield video_tmp
            if video_tmp.exists():
                os.replace(video_tmp, tmp)
        finally:
            if video_tmp.exists():
                video_tmp.unlink()


class _Outputs:
    """The annotated images or video and the JSON lines of one run (used by the writer thread only)."""

    def __init__(self, source: Source, save: Path | None, jsonl: Any | None) -> None:
        self.source, self.save, self.jsonl = source, save, jsonl
        self.video = None  # cv2.VideoWriter, opened on the first frame
        self.video_path: Path | None = None
        self.video_size = (0, 0)

    def __call__(self, item: _Item) -> None:
        height, width = item.image.shape[:2]
        if self.jsonl is not None:
            record = {"source": item.key, "width": width, "height": height, "faces": item.faces}
            self.jsonl.write(json.dumps(record) + "\n")
        if self.save is None:
            return
        canvas = cv2.cvtColor(draw_detections(item.image, item.faces), cv2.COLOR_RGB2BGR)  # (H, W, 3) BGR
        if self.source.kind == "video":
            if self.video is None:
                self._open_video(width, height)
            elif (width, height) != self.video_size:
                raise ValueError(
                    f"{self.source.path}: frame {item.key} is {width}x{height}, the earlier frames "
                    f"{self.video_size[0]}x{self.video_size[1]}"
                )
            self.video.write(canvas)
            return
        target = self.save / item.key if self.source.kind == "folder" else self.save
        ok, encoded = cv2.imencode(target.suffix or ".png", canvas)
        if not ok:
            raise ValueError(f"{target}: cannot encode an image with suffix {target.suffix!r}")
        with atomic_path(target) as tmp:
            tmp.write_bytes(encoded.tobytes())

    def _open_video(self, width: int, height: int) -> None:
        assert self.video_path is not None
        self.video = cv2.VideoWriter(
            str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.source.fps, (width, height)
        )
        self.video_size = (width, height)
        if not self.video.isOpened():
            raise ValueError(f"--save {self.save}: OpenCV cannot write an mp4v video there")

    def close_video(self) -> None:
        if self.video is not None:
            self.video.release()


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class SourceStats:
    """What `detect_source` did."""

    source: Source
    items: int = 0  # images or frames detected on
    faces: int = 0  # detections written
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason) of the files skipped
    ignored: list[str] = field(default_factory=list)  # files left out of a folder for their extension
    seconds: float = 0.0  # from the first read to the last write

    @property
    def images_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> list[str]:
        """The lines the command logs at the end: throughput, then skipped and left-out files (if any)."""
        unit = "frames" if self.source.kind == "video" else "images"
        lines = [f"{self.items} {unit} in {self.seconds:.2f} s: {self.images_per_s:.1f} {unit}/s, {self.faces} faces"]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable, skipped: {_shown([n for n, _ in self.unreadable])}")
        if self.ignored:
            lines.append(f"{len(self.ignored)} file(s) without an image extension left out: {_shown(self.ignored)}")
        return lines


def _shown(names: Sequence[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")


def detect_source(
    detector: Any,
    source: Source,
    save: str | Path | None = None,
    jsonl: str | Path | None = None,
    conf: float = 0.6,
    nms: float = 0.4,
    batch_size: int | None = None,
    prefetch: int = 16,
    progress: bool = True,
) -> SourceStats:
    """Detect faces on every image or frame of `source` (`open_source`) with an RGB `nbsrc.detector.Detector`.

    Writes the annotated output to `save` (a folder, video or image file, as the source) and the JSON lines to
    `jsonl` (each when given). `batch_size`: images of equal size per forward pass (default: the detector's
    ``eval.batch_size``); `prefetch`: images decoded ahead. Returns `SourceStats`, whose summary is also logged.
    """
    if batch_size is None:
        batch_size = int(getattr(getattr(getattr(detector, "cfg", None), "eval", None), "batch_size", 8))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    save = Path(save) if save is not None else None
    if save is not None:
        check_source_save(source, save)
    stats = SourceStats(source=source, ignored=list(source.ignored))
    unit = "frame" if source.kind == "video" else "img"
    bar = tqdm(total=len(source) or None, desc=f"detect {source.path.name}", unit=unit, **tqdm_kwargs(progress))
    start = time.perf_counter()
    with _output_files(source, save, jsonl) as outputs:
        reader = _Reader(_read_items(source), prefetch)
        writer = _Writer(outputs, depth=max(2 * batch_size, prefetch))
        try:
            for item in _detect_in_order(detector, reader, batch_size, conf, nms):
                if item.image is None:
                    stats.unreadable.append((str(item.key), item.error or "unreadable"))
                    logger.debug("%s: unreadable, skipped (%s)", source.path / str(item.key), item.error)
                else:
                    writer.submit(item)
                    stats.items += 1
                    stats.faces += len(item.faces)
                bar.update(1)
        finally:
            reader.close()
            try:
                writer.close()
            finally:
                outputs.close_video()
                bar.close()
        if source.kind == "image" and stats.unreadable:  # nothing else to do: an error, and nothing written
            raise ValueError(f"--source {source.path}: {stats.unreadable[0][1]}")
        if source.kind == "video" and not stats.items:
            raise ValueError(f"--source {source.path}: no frame could be read from this video")
    stats.seconds = time.perf_counter() - start
    if source.kind == "video" and source.frames and stats.items != source.frames:
        logger.info("%s: %d frames read, %d declared by the file", source.path, stats.items, source.frames)
    throughput, *skipped = stats.summary()
    logger.info(throughput)
    for line in skipped:
        logger.warning(line)
    return stats


@contextmanager
def _output_files(source: Source, save: Path | None, jsonl: str | Path | None) -> Iterator[_Outputs]:
    """The run's outputs; the JSON-lines file and the video appear at their paths only when the run succeeds."""
    with ExitStack() as stack:
        handle = None
        if jsonl is not None:
            tmp = stack.enter_context(atomic_path(Path(jsonl)))
            handle = stack.enter_context(tmp.open("w"))
        outputs = _Outputs(source, save, handle)
        if save is not None and source.kind == "video":
            outputs.video_path = stack.enter_context(_atomic_video_path(save))
        yield outputs
        if handle is not None:
            handle.flush()


def _detect_in_order(
    detector: Any, items: Iterator[_Item], batch_size: int, conf: float, nms: float
) -> Iterator[_Item]:
    """`items` with their faces, in input order. Images of equal size run together (at most `batch_size`): a
    group runs when full, or, once `2 * batch_size` images wait, the group of the oldest one runs."""
    window = 2 * batch_size
    waiting: deque[_Item] = deque()  # every item not yet yielded, in input order
    groups: dict[tuple[int, ...], list[_Item]] = {}  # pending images by shape
    pending = 0

    def run(shape: tuple[int, ...]) -> None:
        nonlocal pending
        group = groups.pop(shape)
        batch, rest = group[:batch_size], group[batch_size:]
        if rest:
            groups[shape] = rest
        results = detector.detect_batch([it.image for it in batch], conf=conf, nms=nms)
        for it, faces in zip(batch, results):
            it.faces = [face_record(d) for d in faces]
        pending -= len(batch)

    def ready() -> Iterator[_Item]:
        while waiting and (waiting[0].image is None or waiting[0].faces is not None):
            yield waiting.popleft()

    for item in items:
        waiting.append(item)
        if item.image is not None:
            shape = item.image.shape
            groups.setdefault(shape, []).append(item)
            pending += 1
            if len(groups[shape]) >= batch_size:
                run(shape)
            elif pending >= window:
                oldest = next(it for it in waiting if it.image is not None and it.faces is None)
                run(oldest.image.shape)
        yield from ready()
    while groups:
        oldest = next(it for it in waiting if it.image is not None and it.faces is None)
        run(oldest.image.shape)
        yield from ready()
    yield from ready()
