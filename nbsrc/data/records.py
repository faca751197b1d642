"""The typed per-image record every label reader returns (see `nbsrc.boxes` for the conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ImageRecord", "FACE", "PERSON", "CLASS_NAMES"]

FACE = 1  # class id of a face
PERSON = 2  # class id of a person (2-class data)
CLASS_NAMES = {FACE: "face", PERSON: "person"}


@dataclass
class ImageRecord:
    """Annotations of one image (box conventions: `nbsrc.boxes`)."""

    # relative to the split, without extension: "<event>/<basename>" for WIDER
    # ("0--Parade/0_Parade_marchingband_1_465"), "<id>" for flat data
    name: str
    boxes: np.ndarray  # float32 [N, 4] xyxy: original-image pixels, or [0, 1] when `normalized`
    landmarks: np.ndarray | None = None  # float32 [N, 5, 2] xy in the frame of the boxes (zeros where invalid)
    landmarks_valid: np.ndarray | None = None  # bool [N]
    labels: np.ndarray | None = None  # int64 [N] class ids (1 face, 2 person)
    image_size: tuple[int, int] | None = None  # (width, height) of the original image when known
    normalized: bool = False  # boxes and landmarks are fractions of the image size
    # per-box extras, first dimension N: WIDER attributes (blur, expression, illumination, invalid, occlusion,
    # pose: [N]), RetinaFace landmark flags ([N, 5]) and scores ([N])
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # "path:line" of the header, for error messages
    box_lines: np.ndarray | None = None  # int64 [N] 1-based line of each box in the file of `source`, when known

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        if self.landmarks is None:
            self.landmarks = np.zeros((n, 5, 2), np.float32)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(n, 5, 2)
        if self.landmarks_valid is None:
            self.landmarks_valid = np.zeros(n, bool)
        self.landmarks_valid = np.asarray(self.landmarks_valid, dtype=bool).reshape(n)
        if self.labels is None:
            self.labels = np.full(n, FACE, np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        if self.box_lines is not None:
            self.box_lines = np.asarray(self.box_lines, dtype=np.int64).reshape(n)

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def box_source(self, index: int) -> str:
        """``"path:line"`` of box `index` (its own line when known, else the record's `source`)."""
        if self.box_lines is not None and self.source:
            line = int(self.box_lines[index])
            path, sep, header = self.source.rpartition(":")
            if line > 0 and sep and header.isdigit():
                return f"{path}:{line}"
        return self.source
