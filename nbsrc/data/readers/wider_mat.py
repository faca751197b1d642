"""WIDER FACE ground truth in the official ``.mat`` files (the files the WIDER evaluation reads).

A ground-truth folder holds four MATLAB files:

- ``wider_face_val.mat``: ``event_list``, ``file_list``, ``face_bbx_list`` and the six attribute lists
  (``blur_label_list``, ``expression_label_list``, ``illumination_label_list``, ``invalid_label_list``,
  ``occlusion_label_list``, ``pose_label_list``);
- ``wider_{easy,medium,hard}_val.mat``: the same lists plus ``gt_list``, the 1-based indices of the faces
  each setting evaluates (the others are "ignore" regions).

Nesting as `scipy.io.loadmat` returns it: every variable is an ``(n_events, 1)`` cell;
``event_list[i][0][0]`` is the event name (``"0--Parade"``), ``file_list[i][0][j][0][0]`` the image basename
without extension, ``face_bbx_list[i][0][j][0]`` an ``int32 [n, 4]`` array of ``x y w h`` in original-image
pixels (see `nbsrc.boxes`), ``gt_list[i][0][j][0]`` a ``(k, 1)`` array of 1-based indices.

Reading rejects a box with a NaN / infinite value or a negative width or height, and an event or file name that
is not a single path component (empty, ``.``, ``..``, or holding ``/`` or ``\\``), naming the file, the image and
the face. Zero-size boxes stay (the official file has 11; the protocol counts them), and so does the one
negative-width box of the official val file (`OFFICIAL_NEGATIVE_BOXES`), which the hard setting evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nbsrc.utils import atomic_path

__all__ = [
    "ATTRIBUTE_NAMES",
    "GT_FILES",
    "SETTINGS",
    "WiderGroundTruth",
    "read_wider_gt",
    "write_wider_gt",
]

SETTINGS = ("easy", "medium", "hard")
FACE_FILE = "wider_face_val.mat"
GT_FILES = (FACE_FILE,) + tuple(f"wider_{s}_val.mat" for s in SETTINGS)
ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
# (event, image, 0-based face index) -> xywh of the negative-size boxes of the official wider_face_val.mat,
# accepted because the official protocol evaluates them (an annotation slip: w = -2); any other is an error.
OFFICIAL_NEGATIVE_BOXES = {("39--Ice_Skating", "39_Ice_Skating_iceskiing_39_583", 7): (1026, 474, -2, 23)}


@dataclass
class WiderGroundTruth:
    """WIDER ground truth of one split."""

    events: list[str]  # in file order ("0--Parade", "1--Handshaking", ...)
    names: list[list[str]]  # per event, the image basenames without extension
    boxes: list[list[np.ndarray]]  # per event and image, [n, 4] xywh original-image pixels (int32 as stored)
    # `ATTRIBUTE_NAMES` -> per event and image an [n] array; may be empty
    attributes: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)
    # setting -> per event and image the 1-based indices of the evaluated faces (int64 [k])
    keep: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return sum(len(n) for n in self.names)

    @property
    def num_faces(self) -> int:
        return sum(len(b) for per_event in self.boxes for b in per_event)

    def num_kept(self, setting: str) -> int:
        """Number of faces the setting evaluates."""
        return sum(len(k) for per_event in self.keep[setting] for k in per_event)

    def image_names(self) -> list[str]:
        """All images as ``"<event>/<basename>"`` in file order."""
        return [f"{event}/{name}" for event, names in zip(self.events, self.names) for name in names]


def _cell_str(value: object, where: str) -> str:
    """A MATLAB char array as loadmat returns it (``array(['abc'])``) -> ``'abc'``."""
    array = np.asarray(value)
    if array.size == 0:
        return ""
    if array.dtype.kind not in "US":
        raise ValueError(f"{where}: expected a string, got {array.dtype} {array.shape}")
    return str(array.reshape(-1)[0])  # (1,) char array -> str


def _cell_rows(value: object, where: str) -> np.ndarray:
    """An ``(n, 1)`` (or ``(1, n)`` / empty) cell -> flat object array of its entries."""
    array = np.asarray(value)
    if array.dtype != object:
        raise ValueError(f"{where}: expected a cell array, got {array.dtype} {array.shape}")
    return array.reshape(-1)  # (n,) cell entries


def _check_component(name: str, where: str) -> str:
    """`name` when it is a single path component (event and file names become folders and files)."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{where}: name {name!r} is not a plain file or folder name (expected e.g. '0--Parade')")
    return name


def _check_boxes(face_path: Path, event: str, names: list[str], per_image: list[np.ndarray]) -> None:
    """Raise `ValueError` for a NaN / infinite value or a negative width or height (see the module docstring)."""
    if not per_image:
        return
    xywh = np.concatenate([np.asarray(b, np.float64) for b in per_image])  # (F, 4)
    bad = ~np.isfinite(xywh).all(1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0)  # (F,)
    if not bad.any():
        return
    image = np.repeat(np.arange(len(per_image)), [len(b) for b in per_image])  # (F,)
    starts = np.cumsum([0] + [len(b) for b in per_image])
    for f in np.flatnonzero(bad).tolist():
        j = int(image[f])
        k = f - int(starts[j])
        box = tuple(xywh[f].tolist())
        if OFFICIAL_NEGATIVE_BOXES.get((event, names[j], k)) == box:
            continue
        problem = "a NaN or infinite value" if not np.isfinite(xywh[f]).all() else "a negative width or height"
        raise ValueError(
            f"{face_path}: image {event}/{names[j]}, face {k} (0-based; gt_list index {k + 1}): box x y w h = "
            f"{' '.join(f'{v:g}' for v in box)} has {problem}; expected finite pixel values with w >= 0 and h >= 0"
        )


def _load(path: Path, variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=list(variables))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({exc})") from exc
    missing = [v for v in variables if v not in mat]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {missing}; expected {list(variables)}")
    return mat


def read_wider_gt(gt_dir: str | Path, attributes: bool = True) -> WiderGroundTruth:
    """Read the four WIDER ground-truth ``.mat`` files (`GT_FILES`) of a folder; `attributes` False skips the
    per-face attributes the evaluation does not need (about a third less to read).

    Raises:
        FileNotFoundError: the folder or one of the four files is missing (named in the message).
        ValueError: a file without the official structure, a bad box or name (see the module docstring).
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder {gt_dir} not found (expected the four files {list(GT_FILES)})")
    missing = [name for name in GT_FILES if not (gt_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"ground-truth folder {gt_dir} lacks {', '.join(missing)} (expected the four files {list(GT_FILES)})"
        )
    face_path = gt_dir / FACE_FILE
    attr_vars = _attribute_variables(face_path) if attributes else ()
    face = _load(face_path, ("event_list", "file_list", "face_bbx_list") + attr_vars)
    events, names, boxes = _read_faces(face_path, face)
    read_attributes = {
        attr: _per_image_values(face_path, var, face[var]) for attr, var in zip(ATTRIBUTE_NAMES, attr_vars)
    }
    keep = {
        setting: _read_kept(gt_dir / f"wider_{setting}_val.mat", face_path, events, names, boxes)
        for setting in SETTINGS
    }
    return WiderGroundTruth(events=events, names=names, boxes=boxes, attributes=read_attributes, keep=keep)


def _attribute_variables(face_path: Path) -> tuple[str, ...]:
    """The six attribute variables when the face file holds them all, else none."""
    from scipy.io import whosmat

    attr_vars = tuple(f"{a}_label_list" for a in ATTRIBUTE_NAMES)
    try:
        present = {name for name, _, _ in whosmat(str(face_path))}
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"{face_path}: not a readable MATLAB .mat file ({exc})") from exc
    return attr_vars if all(v in present for v in attr_vars) else ()


def _read_faces(
    face_path: Path, face: dict[str, np.ndarray]
) -> tuple[list[str], list[list[str]], list[list[np.ndarray]]]:
    """Events, image names per event and ``[n, 4]`` xywh boxes per event and image of the face file."""
    events_cell = _cell_rows(face["event_list"], f"{face_path}: event_list")
    files_cell = _cell_rows(face["file_list"], f"{face_path}: file_list")
    boxes_cell = _cell_rows(face["face_bbx_list"], f"{face_path}: face_bbx_list")
    if not len(events_cell) == len(files_cell) == len(boxes_cell):
        raise ValueError(
            f"{face_path}: event_list, file_list and face_bbx_list have different lengths "
            f"({len(events_cell)}, {len(files_cell)}, {len(boxes_cell)})"
        )
    events: list[str] = []
    names: list[list[str]] = []
    boxes: list[list[np.ndarray]] = []
    for i, (event_value, files_value, boxes_value) in enumerate(zip(events_cell, files_cell, boxes_cell)):
        where = f"{face_path}: event {i}"
        events.append(_check_component(_cell_str(event_value, f"{where} event_list"), f"{where} event_list"))
        files = _cell_rows(files_value, f"{where} file_list")
        per_image = _cell_rows(boxes_value, f"{where} face_bbx_list")
        if len(files) != len(per_image):
            raise ValueError(f"{where}: {len(files)} files but {len(per_image)} box lists")
        names.append(
            [
                _check_component(_cell_str(f, f"{where} file_list[{j}]"), f"{where} ({events[-1]}) file_list[{j}]")
                for j, f in enumerate(files)
            ]
        )
        event_boxes = [_box_array(b, f"{where} face_bbx_list[{j}]") for j, b in enumerate(per_image)]
        _check_boxes(face_path, events[-1], names[-1], event_boxes)
        boxes.append(event_boxes)
    return events, names, boxes


def _box_array(value: object, where: str) -> np.ndarray:
    """One image's boxes: ``[n, 4]`` xywh (``[0, 4]`` when the cell is empty)."""
    array = np.asarray(value)
    if array.size == 0:
        array = np.zeros((0, 4), np.int32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{where}: expected [n, 4] xywh, got shape {array.shape}")
    return array


def _per_image_values(face_path: Path, var: str, value: object) -> list[list[np.ndarray]]:
    """An attribute variable: per event and image an ``[n]`` array."""
    cell = _cell_rows(value, f"{face_path}: {var}")
    return [
        [np.asarray(v).reshape(-1) for v in _cell_rows(cell[i], f"{face_path}: {var}[{i}]")]  # (n,) each
        for i in range(len(cell))
    ]


def _read_kept(
    path: Path, face_path: Path, events: list[str], names: list[list[str]], boxes: list[list[np.ndarray]]
) -> list[list[np.ndarray]]:
    """A setting file's ``gt_list``: per event and image the 1-based indices of the evaluated faces."""
    mat = _load(path, ("event_list", "gt_list"))
    cell = _cell_rows(mat["gt_list"], f"{path}: gt_list")
    setting_events = [_cell_str(v, f"{path}: event_list") for v in _cell_rows(mat["event_list"], str(path))]
    if setting_events != events:
        raise ValueError(f"{path}: event_list differs from {face_path}")
    per_setting = []
    for i, value in enumerate(cell):
        images = _cell_rows(value, f"{path}: gt_list[{i}]")
        if len(images) != len(names[i]):
            raise ValueError(
                f"{path}: gt_list of event {events[i]} has {len(images)} images, {face_path} has {len(names[i])}"
            )
        event_keep = [np.asarray(k).reshape(-1).astype(np.int64) for k in images]  # (k,) each
        _check_kept(path, f"{events[i]}/", names[i], boxes[i], event_keep)
        per_setting.append(event_keep)
    return per_setting


def _check_kept(
    path: Path, event_prefix: str, names: list[str], boxes: list[np.ndarray], event_keep: list[np.ndarray]
) -> None:
    """Raise unless every image's indices lie in 1 .. its number of faces (all images of an event at once)."""
    if not event_keep:
        return
    lengths = [len(k) for k in event_keep]
    flat = np.concatenate(event_keep)  # (K,)
    limit = np.repeat([len(b) for b in boxes], lengths)  # (K,)
    bad = np.flatnonzero((flat < 1) | (flat > limit))
    if len(bad):
        j = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        indices, n = event_keep[j], len(boxes[j])
        raise ValueError(
            f"{path}: gt_list of {event_prefix}{names[j]} holds indices outside 1..{n}: "
            f"{indices.min()}..{indices.max()}"
        )


def _cell(items: list) -> np.ndarray:
    """Python list -> ``(n, 1)`` MATLAB cell (object array) for `scipy.io.savemat`."""
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = item
    return cell


def _index_array(indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 1)  # (k, 1)
    dtype = np.uint8 if (indices.size == 0 or indices.max() <= 255) else np.uint16
    return indices.astype(dtype)


def write_wider_gt(gt_dir: str | Path, gt: WiderGroundTruth) -> Path:
    """Write the four ``.mat`` files in the official structure and dtypes (atomically, one file at a time), so
    that `scipy.io.loadmat` gives the real files' nesting; ``gt.keep`` must hold all three settings."""
    from scipy.io import savemat

    gt_dir = Path(gt_dir)
    missing = [s for s in SETTINGS if s not in gt.keep]
    if missing:
        raise ValueError(f"WiderGroundTruth.keep lacks setting(s) {missing}")
    if not len(gt.events) == len(gt.names) == len(gt.boxes):
        raise ValueError("WiderGroundTruth: events, names and boxes must have one entry per event")

    boxes_cell = _cell(
        [
            _cell(
                [np.rint(np.asarray(b, dtype=np.float64)).astype(np.int32).reshape(-1, 4) for b in per_event]
            )  # (n, 4)
            for per_event in gt.boxes
        ]
    )
    variables: dict[str, np.ndarray] = {
        "event_list": _cell(list(gt.events)),
        "file_list": _cell([_cell(list(names)) for names in gt.names]),
        "face_bbx_list": boxes_cell,
    }
    for attr in ATTRIBUTE_NAMES:
        per_event_values = gt.attributes.get(attr)
        cells = []
        for i, per_event in enumerate(gt.boxes):
            images = []
            for j, b in enumerate(per_event):
                n = len(np.asarray(b).reshape(-1, 4))  # (n, 4)
                values = np.zeros(n) if per_event_values is None else np.asarray(per_event_values[i][j])
                values = values.reshape(-1)  # (n,)
                images.append(values.astype(np.uint8).reshape(n, 1))  # (n, 1)
            cells.append(_cell(images))
        variables[f"{attr}_label_list"] = _cell(cells)

    def save(path: Path, extra: dict[str, np.ndarray]) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                savemat(fh, {**variables, **extra}, do_compression=True, oned_as="column")

    save(gt_dir / FACE_FILE, {})
    for setting in SETTINGS:
        keep_cell = _cell([_cell([_index_array(k) for k in per_event]) for per_event in gt.keep[setting]])
        save(gt_dir / f"wider_{setting}_val.mat", {"gt_list": keep_cell})
    return gt_dir
