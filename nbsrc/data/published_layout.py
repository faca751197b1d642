"""A dataset laid out as users actually have it: ``retina-modify`` (latents and labels only) beside a WIDER FACE copy.

The published ``retina-modify`` carries no images, sizes or evaluation ground truth: those come from a separate
WIDER FACE copy. `split_as_published` turns a demo dataset (`nbsrc.data.demo`) into exactly that pair, for trying
the real-data path (and Kaggle's input mounts) without the real data::

    OUT/retina-modify/retina-modify/train/latent/<basename>/latent_{12,25,50,75,100}.npy   (a nested top folder)
    OUT/retina-modify/retina-modify/train/latent/labels.txt                                  (a stray copy)
    OUT/retina-modify/retina-modify/{train,val}/labels.txt
    OUT/wider-face/WIDER_{train,val}/images/<event>/<name>.jpg
    OUT/wider-face/wider_face_split/wider_face_{train,val}_bbx_gt.txt, wider_face_val.mat
    OUT/wider-face/eval_tools/ground_truth/wider_{face,easy,medium,hard}_val.mat
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nbsrc.data.layout import find_labels, read_split_labels
from nbsrc.data.readers.wider_mat import GT_FILES
from nbsrc.utils import atomic_write_text

__all__ = ["split_as_published"]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _bbx_gt_text(label_file: Path) -> str:
    """WIDER's ``wider_face_<split>_bbx_gt.txt``: name, face count, then ``x y w h blur expression illumination
    invalid occlusion pose`` per face (the attributes written as 0)."""
    lines = []
    for record in read_split_labels(label_file):
        lines.append(record.name if "." in record.name.rsplit("/", 1)[-1] else f"{record.name}.jpg")
        lines.append(str(record.num_boxes))
        for x1, y1, x2, y2 in record.boxes.tolist():
            lines.append(f"{round(x1)} {round(y1)} {round(x2 - x1)} {round(y2 - y1)} 0 0 0 0 0 0 ")
        if not record.num_boxes:  # the official files give an image without faces one all-zero line
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
    return "\n".join(lines) + "\n"


def split_as_published(demo_root: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Lay out the demo dataset at `demo_root` as ``retina-modify`` plus a WIDER FACE copy under `out`, hard-linking
    files where the file system allows, else copying them.

    Returns:
        ``(OUT/retina-modify, OUT/wider-face)``, the two mounts.
    Raises:
        FileNotFoundError: `demo_root` lacks a split, its labels, images or ground truth.
    """
    demo_root, out = Path(demo_root), Path(out)
    dataset = out / "retina-modify" / "retina-modify"
    wider = out / "wider-face"
    for split in ("train", "val"):
        split_dir = demo_root / split
        if not (split_dir / "images").is_dir():
            raise FileNotFoundError(f"{split_dir / 'images'} not found (expected a dataset made by make-demo-data)")
        labels = find_labels(split_dir)
        for path in sorted((split_dir / "latent").rglob("*.npy")):
            _link_or_copy(path, dataset / split / "latent" / path.relative_to(split_dir / "latent"))
        _link_or_copy(labels, dataset / split / "labels.txt")
        for path in sorted((split_dir / "images").rglob("*.jpg")):
            _link_or_copy(path, wider / f"WIDER_{split}" / "images" / path.relative_to(split_dir / "images"))
        atomic_write_text(wider / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt", _bbx_gt_text(labels))
    _link_or_copy(dataset / "train" / "labels.txt", dataset / "train" / "latent" / "labels.txt")
    gt_dir = demo_root / "val" / "ground_truth"
    for name in GT_FILES:
        if not (gt_dir / name).is_file():
            raise FileNotFoundError(f"{gt_dir / name} not found (expected the demo's WIDER evaluation files)")
        _link_or_copy(gt_dir / name, wider / "eval_tools" / "ground_truth" / name)
    _link_or_copy(gt_dir / "wider_face_val.mat", wider / "wider_face_split" / "wider_face_val.mat")
    return out / "retina-modify", wider
