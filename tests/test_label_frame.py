"""The label frame: labels in original pixels land on the faces in the network frame (latent and RGB), with
the stretch and letterbox policies; an unknown frame is an error that says what to provide."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from nbsrc.data.defects import DataError
from nbsrc.data.demo import StandInEncoder, encode_original
from nbsrc.data.image_sizes import ImageSizes, read_image_size, read_sizes_csv
from nbsrc.data.label_frame import LabelFrame, LabelFrameError
from nbsrc.data.latent_dataset import LatentWiderFace
from nbsrc.data.readers import read_labels
from nbsrc.data.readers.retinaface_txt import write_retinaface_labels
from nbsrc.data.records import ImageRecord
from nbsrc.data.rgb_dataset import WiderFaceRGB, read_rgb
from nbsrc.data.validate import check_label_frame
from nbsrc.frame import FrameMap


def _non_square_record(demo_root: Path, min_faces: int = 2) -> ImageRecord:
    sizes = read_sizes_csv(demo_root / "image_sizes.csv")
    for record in read_labels(demo_root / "train" / "labels.txt"):
        w, h = sizes[record.name]
        if w != h and record.num_boxes >= min_faces:
            return record
    raise AssertionError("the demo has no non-square image with faces")


def test_demo_latent_boxes_cover_exactly_the_cells_the_faces_change(demo_root):
    """Blank the faces (at their mapped boxes) in the 640x640 image and re-encode: the latent cells that change
    are the cells under the mapped boxes; with unmapped original-pixel boxes they are not."""
    record = _non_square_record(demo_root)
    dataset = LatentWiderFace(demo_root / "train")
    index = dataset.names.index(record.name)
    sample = dataset[index]
    frame = sample["frame"]
    assert frame is not None and frame.orig_size != (640, 640)

    image = read_rgb(demo_root / "train" / "images" / f"{record.name}.jpg")
    encoder = StandInEncoder()
    latent = encode_original(image, encoder)
    stored = sample["input"].numpy()
    assert np.abs(encoder.quantize(latent, 75) - stored).max() < 0.01  # the stored latent is this image's

    stretched = cv2.resize(image, (640, 640), interpolation=cv2.INTER_AREA)
    blanked = stretched.copy()
    boxes = sample["boxes"].numpy()
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        blanked[y1:y2, x1:x2] = 127
    changed = np.abs(encoder.encode(blanked) - encoder.encode(stretched)).max(axis=0) > 1e-4  # (40, 40)

    def covered(b: np.ndarray) -> np.ndarray:
        mask = np.zeros((40, 40), bool)
        for x1, y1, x2, y2 in b:
            mask[
                int(max(0, y1) // 16) : int(np.ceil(min(640, y2) / 16)),
                int(max(0, x1) // 16) : int(np.ceil(min(640, x2) / 16)),
            ] = True
        return mask

    mask = covered(boxes)
    assert changed.any()
    assert not (changed & ~mask).any(), "latent cells changed outside the mapped boxes"
    assert changed[mask].mean() > 0.8
    wrong = covered(record.boxes)  # original pixels used as if they were 640-frame pixels
    assert (changed != wrong).sum() > 0.2 * mask.sum()


@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
def test_rgb_eval_boxes_land_on_the_faces(demo_root, policy):
    """The network image inside each mapped box is the face of the original (resized), not what is next to it."""
    record = _non_square_record(demo_root)
    dataset = WiderFaceRGB(demo_root / "train", train=False, resize_policy=policy)
    index = dataset.names.index(record.name)
    sample = dataset[index]
    assert sample["frame"].policy == policy
    net = dataset.network_image(index).astype(np.float32)
    original = read_rgb(demo_root / "train" / "images" / f"{record.name}.jpg").astype(np.float32)
    checked = 0
    for box, orig_box in zip(sample["boxes"].numpy(), record.boxes):
        x1, y1, x2, y2 = np.round(box).astype(int)
        if min(x2 - x1, y2 - y1) < 16:
            continue
        ox1, oy1, ox2, oy2 = orig_box.astype(int)
        reference = cv2.resize(original[oy1:oy2, ox1:ox2], (x2 - x1, y2 - y1), interpolation=cv2.INTER_AREA)
        inside = np.abs(net[y1:y2, x1:x2] - reference).mean()
        shift = x2 - x1
        sx1 = x1 + shift if x2 + shift <= 640 else x1 - shift
        beside = np.abs(net[y1:y2, sx1 : sx1 + (x2 - x1)] - reference).mean()
        assert inside < 12, f"{record.name}: box content differs from the face by {inside:.1f} grey levels"
        assert beside > 2 * inside
        checked += 1
    assert checked >= 1
    expected = FrameMap(record_size(demo_root, record), (640, 640), policy).to_net(record.boxes)
    np.testing.assert_allclose(sample["boxes"].numpy(), expected, atol=1e-3)


def record_size(demo_root: Path, record: ImageRecord) -> tuple[int, int]:
    return read_sizes_csv(demo_root / "image_sizes.csv")[record.name]


def test_stretch_and_letterbox_mapping_numbers():
    record = ImageRecord("e/a", boxes=[[0, 0, 1024, 683], [512, 341.5, 612, 441.5]], image_size=(1024, 683))
    stretch, frame = LabelFrame(policy="stretch").to_net(record, (640, 640))
    np.testing.assert_allclose(stretch.boxes[0], [0, 0, 640, 640], atol=1e-4)
    assert frame == FrameMap((1024, 683), (640, 640), "stretch")
    letter, _ = LabelFrame(policy="letterbox").to_net(record, (640, 640))
    pad = (640 - 683 * 0.625) / 2
    np.testing.assert_allclose(letter.boxes[0], [0, pad, 640, 640 - pad], atol=1e-3)
    np.testing.assert_allclose(letter.boxes[1], [320, 320, 382.5, 382.5], atol=1e-3)


def test_label_frame_640_keeps_labels_and_normalized_labels_scale():
    record = ImageRecord("e/a", boxes=[[10, 20, 110, 220]])
    same, frame = LabelFrame(label_frame=640).to_net(record, (640, 640))
    np.testing.assert_array_equal(same.boxes, record.boxes)
    assert frame is None
    half, _ = LabelFrame(label_frame=640).to_net(record, (320, 320))
    np.testing.assert_allclose(half.boxes, record.boxes / 2)
    normalized = ImageRecord("e/b", boxes=[[0.5, 0.25, 0.75, 1.0]], normalized=True)
    scaled, _ = LabelFrame().to_net(normalized, (640, 640))
    np.testing.assert_allclose(scaled.boxes, [[320, 160, 480, 640]])
    with pytest.raises(LabelFrameError, match="sizes CSV"):
        LabelFrame(policy="letterbox").to_net(normalized, (640, 640))


def _latent_only_copy(demo_root: Path, tmp_path: Path, n: int = 3) -> Path:
    """A split with labels and latents but no images and no sizes CSV."""
    split = tmp_path / "data" / "train"
    records = read_labels(demo_root / "train" / "labels.txt")[:n]
    write_retinaface_labels(split / "labels.txt", records)
    for record in records:
        shutil.copytree(demo_root / "train" / "latent" / record.basename, split / "latent" / record.basename)
    return split


def test_unknown_frame_raises_and_says_what_to_provide(demo_root, tmp_path):
    split = _latent_only_copy(demo_root, tmp_path)
    with pytest.raises(LabelFrameError) as info:
        LatentWiderFace(split)
    message = str(info.value)
    assert "labels.txt:1" in message  # file and line of the image's header
    assert "original image size is unknown" in message
    assert "name,width,height" in message and "images" in message and "label_frame=640" in message


def test_sizes_csv_or_label_frame_resolve_the_frame(demo_root, tmp_path):
    split = _latent_only_copy(demo_root, tmp_path)
    with_csv = LatentWiderFace(split, sizes_csv=demo_root / "image_sizes.csv")
    reference = LatentWiderFace(demo_root / "train", max_images=3)
    for a, b in zip(with_csv, reference):
        np.testing.assert_allclose(a["boxes"].numpy(), b["boxes"].numpy())
    shutil.copy(demo_root / "image_sizes.csv", split.parent / "image_sizes.csv")  # found at the dataset root
    assert len(LatentWiderFace(split)) == 3
    (split.parent / "image_sizes.csv").unlink()
    # these labels are in original pixels: declaring them 640-frame labels is caught, not trained on
    with pytest.raises(DataError, match=r"labels.txt:\d+: .*outside the 640x640 image"):
        LatentWiderFace(split, label_frame=640)
    as_640 = LatentWiderFace(split, label_frame=640, on_error="skip")
    kept = {r.name: r for r in read_labels(split / "labels.txt")}
    assert as_640.log.counts().get("box_outside_frame", 0) > 0
    for i in range(len(as_640)):  # the faces inside 640x640 are kept unchanged, the others left out and reported
        sample = as_640[i]
        boxes = kept[sample["name"]].boxes
        np.testing.assert_array_equal(sample["boxes"].numpy(), boxes[(boxes[:, 2:] <= 640).all(axis=1)])


def test_check_label_frame_tells_original_from_network_frame(demo_root, tmp_path):
    reports = check_label_frame(demo_root)
    assert set(reports) == {"train", "val"}
    assert reports["train"].verdict == "original"
    assert reports["train"].inside_original == 1.0
    assert "label_frame=None" in reports["train"].message

    # the same labels written in the 640 frame
    sizes = read_sizes_csv(demo_root / "image_sizes.csv")
    frame = LabelFrame(sizes=ImageSizes(sizes=sizes))
    mapped = [frame.to_net(r, (640, 640))[0] for r in read_labels(demo_root / "train" / "labels.txt")]
    split = tmp_path / "net" / "train"
    write_retinaface_labels(split / "labels.txt", mapped)
    shutil.copy(demo_root / "image_sizes.csv", split.parent / "image_sizes.csv")
    report = check_label_frame(split.parent)["train"]
    assert report.verdict == "network"
    assert "label_frame=640" in report.message
    (split.parent / "image_sizes.csv").unlink()
    unknown = check_label_frame(split.parent)["train"]
    assert unknown.verdict == "unknown" and "sizes" in unknown.message
    assert "train: unknown" in str(unknown)


def test_image_size_is_read_from_the_header_only(tmp_path):
    image = np.zeros((300, 500, 3), np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data.tobytes()[:700])  # header kept, pixel data cut: decoding would fail
    assert read_image_size(truncated) == (500, 300)
    sizes = ImageSizes(images_dir=tmp_path)
    assert sizes.get("cut") == (500, 300)
    assert sizes.get("missing") is None
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        read_image_size(tmp_path / "bad.png")


def test_sizes_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "sizes.csv"
    path.write_text("file,w,h\n")
    with pytest.raises(ValueError, match=r"sizes.csv:1: expected the header 'name,width,height'"):
        read_sizes_csv(path)
    path.write_text("name,width,height\n0--Parade/a.jpg,1024,683\nb,wide,683\n")
    with pytest.raises(ValueError, match=r"sizes.csv:3: width and height must be integers"):
        read_sizes_csv(path)
    path.write_text("name,width,height\n0--Parade/a.jpg,1024,683\n0--Parade/a,800,800\n")
    with pytest.raises(ValueError, match=r"sizes.csv:3: '0--Parade/a' listed again"):
        read_sizes_csv(path)
    path.write_text("name,width,height\n0--Parade/a.jpg,1024,683\n")
    sizes = ImageSizes(sizes_csv=path)
    assert sizes.get("0--Parade/a") == (1024, 683)
    assert sizes.get("a") == (1024, 683)  # by basename
