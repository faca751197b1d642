"""Label readers: every annotation format becomes a ``list[ImageRecord]`` (`nbsrc.data.records`).

========================  ===========================================================  ================
format                    file(s)                                                      module
========================  ===========================================================  ================
``retinaface``            RetinaFace ``label.txt`` (``# event/file.jpg`` + 20 / 4 nums)  `retinaface_txt`
``wider_bbx``             official ``wider_face_*_bbx_gt.txt``                          `wider_bbx`
``per_image``             ``labelstxt/<name>.txt`` or ``labels/<event>/<name>.txt``     `per_image`
``twoclass``              ``# <id>.jpg`` + ``cls x y w h`` normalized                   `twoclass`
``openimages``            Open Images box CSV (face / person)                           `openimages`
``wider_mat``             WIDER evaluation ``.mat`` ground-truth folder                 `wider_mat`
========================  ===========================================================  ================

`read_labels` detects the format (`detect_format`) and dispatches. Readers report what the files say:
degenerate boxes are kept; `drop_degenerate` removes and counts them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nbsrc.data.readers.common import LabelParseError, drop_degenerate, is_number, select_boxes, xywh_array_to_xyxy
from nbsrc.data.readers.openimages import read_openimages_csv
from nbsrc.data.readers.per_image import list_label_files, read_per_image_labels
from nbsrc.data.readers.retinaface_txt import read_retinaface_labels
from nbsrc.data.readers.twoclass import read_twoclass_labels
from nbsrc.data.readers.wider_bbx import read_wider_bbx_gt
from nbsrc.data.readers.wider_mat import GT_FILES, read_wider_gt
from nbsrc.data.records import FACE, ImageRecord

__all__ = [
    "FORMATS",
    "LabelParseError",
    "detect_format",
    "drop_degenerate",
    "read_labels",
    "records_from_wider_gt",
    "select_boxes",
]

FORMATS = ("retinaface", "wider_bbx", "per_image", "twoclass", "openimages", "wider_mat")
_ALIASES = {
    "retinaface_txt": "retinaface",
    "label.txt": "retinaface",
    "bbx_gt": "wider_bbx",
    "labelstxt": "per_image",
    "2cls": "twoclass",
    "csv": "openimages",
    "mat": "wider_mat",
}
_SNIFF_LINES = 200


def _sniff_text(path: Path) -> str:
    """Format of a text label file from its first lines."""
    lines: list[str] = []
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                lines.append(line.strip())
                if len(lines) >= _SNIFF_LINES:
                    break
    if not lines:
        raise ValueError(f"{path}: empty file; cannot tell its label format (pass format=...)")
    if lines[0].startswith("#"):
        for line in lines:
            if line.startswith("#"):
                continue
            count = len(line.split())
            if count == 5:
                return "twoclass"
            if count in (4, 20):
                return "retinaface"
            raise ValueError(
                f"{path}: '#' headers followed by lines of {count} values; expected 4 or 20 (RetinaFace label.txt) "
                "or 5 (2-class 'cls x y w h')"
            )
        return "retinaface" if "/" in lines[0] else "twoclass"
    if len(lines) >= 2 and not all(is_number(t) for t in lines[0].split()):
        try:
            int(lines[1])
        except ValueError:
            pass
        else:
            return "wider_bbx"
    if all(is_number(t) for t in lines[0].split()):
        raise ValueError(
            f"{path}: starts with face lines and no header; a per-image label file is read with its folder "
            "(read_labels(folder) or format='per_image')"
        )
    raise ValueError(
        f"{path}: unknown label format; expected '# <event>/<file>.jpg' headers (RetinaFace label.txt or the "
        "2-class file), or 'name / count / faces' lines (wider_face_*_bbx_gt.txt)"
    )


def detect_format(path: str | Path) -> str:
    """Which of `FORMATS` `path` holds: a folder is ``wider_mat`` (WIDER ``.mat`` files) or ``per_image``;
    ``.csv`` is ``openimages``; ``.mat`` is ``wider_mat``; a text file is recognised by its first lines.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the format cannot be told (the message says what was found and expected).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label path {path} not found")
    if path.is_dir():
        if any(path.glob("wider_*_val.mat")) or any(path.glob("wider_face_*.mat")):
            return "wider_mat"
        if list_label_files(path):
            return "per_image"
        raise ValueError(
            f"{path}: a folder without per-image .txt label files or WIDER .mat files; pass the label file itself"
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "openimages"
    if suffix == ".mat":
        return "wider_mat"
    return _sniff_text(path)


def records_from_wider_gt(gt, source: str = "") -> list[ImageRecord]:
    """`nbsrc.data.readers.wider_mat.WiderGroundTruth` -> records (the easy / medium / hard keep lists left out)."""
    records = []
    for i, event in enumerate(gt.events):
        for j, name in enumerate(gt.names[i]):
            xywh = np.asarray(gt.boxes[i][j], np.float64).reshape(-1, 4)  # (N, 4)
            attributes = {}
            for attr, values in gt.attributes.items():
                attributes[attr] = np.asarray(values[i][j]).reshape(-1).astype(np.int64)  # (N,)
            records.append(
                ImageRecord(
                    name=f"{event}/{name}",
                    boxes=xywh_array_to_xyxy(xywh),
                    labels=np.full(len(xywh), FACE, np.int64),
                    attributes=attributes,
                    source=f"{source}:{event}/{name}" if source else f"{event}/{name}",
                )
            )
    return records


def read_labels(path: str | Path, format: str = "auto", **kwargs) -> list[ImageRecord]:
    """Read any supported label file or folder into records (`TwoClassLabels` / `OpenImagesLabels`, which are
    lists too, for those formats); `format` is one of `FORMATS` or ``"auto"``, `kwargs` go to the reader.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: unknown / undetectable format, or a reader's error naming file and line.
    """
    path = Path(path)
    name = _ALIASES.get(format, format)
    if name == "auto":
        name = detect_format(path)
    if name == "retinaface":
        return read_retinaface_labels(path, **kwargs)
    if name == "wider_bbx":
        return read_wider_bbx_gt(path, **kwargs)
    if name == "per_image":
        return read_per_image_labels(path, **kwargs)
    if name == "twoclass":
        return read_twoclass_labels(path, **kwargs)
    if name == "openimages":
        return read_openimages_csv(path, **kwargs)
    if name == "wider_mat":
        folder = path if path.is_dir() else path.parent
        return records_from_wider_gt(read_wider_gt(folder, **kwargs), source=str(folder / GT_FILES[0]))
    raise ValueError(f"unknown label format {format!r} for {path}; expected 'auto' or one of {list(FORMATS)}")
