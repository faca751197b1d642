"""Reference MultiBox loss: the classic per-image SSD / RetinaFace loss, written plainly and slowly.

This follows the published RetinaFace training loss step by step (point-form priors, jaccard overlap,
per-GT forced best prior, per-image targets, log-sum-exp ranking with a double sort for hard negatives,
sums divided by the number of positives) so that the vectorized `nbsrc.loss.MultiBoxLoss` can be checked
against it. Two deliberate settings:

- the forced-best-prior loop runs only over GTs whose best IoU reaches ``force_iou`` (the published
  loop also lets lower GTs steal their best prior, a known defect);
- landmark-less faces use the classic label -1 internally, derived from ``landmarks_valid``.

``empty_negatives > 0`` extends the classic mining so that an image without positives mines that
many negatives (0 is the published behaviour). Everything is per image, per GT, in float32 on CPU;
gradients flow to the outputs.

`random_targets` and `random_outputs` build WIDER-like batches for the tests and the benchmark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)


def intersect(box_a: torch.Tensor, box_b: torch.Tensor) -> torch.Tensor:
    """Intersection areas ``[A, B]``."""
    A, B = box_a.size(0), box_b.size(0)
    max_xy = torch.min(box_a[:, 2:].unsqueeze(1).expand(A, B, 2), box_b[:, 2:].unsqueeze(0).expand(A, B, 2))
    min_xy = torch.max(box_a[:, :2].unsqueeze(1).expand(A, B, 2), box_b[:, :2].unsqueeze(0).expand(A, B, 2))
    inter = torch.clamp(max_xy - min_xy, min=0)
    return inter[:, :, 0] * inter[:, :, 1]


def jaccard(box_a: torch.Tensor, box_b: torch.Tensor) -> torch.Tensor:
    """IoU ``[A, B]`` of point-form boxes."""
    inter = intersect(box_a, box_b)
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1])).unsqueeze(1).expand_as(inter)
    area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1])).unsqueeze(0).expand_as(inter)
    union = area_a + area_b - inter
    return inter / union


def encode(matched: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """Point-form boxes -> regression targets against centre-form priors."""
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy = g_cxcy / (variances[0] * priors[:, 2:])
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def encode_landm(matched: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """``[P, 10]`` landmarks (x0, y0, ..., x4, y4) -> targets against centre-form priors."""
    matched = matched.reshape(matched.size(0), 5, 2)
    out = torch.zeros_like(matched)
    for k in range(5):
        out[:, k, 0] = (matched[:, k, 0] - priors[:, 0]) / (variances[0] * priors[:, 2])
        out[:, k, 1] = (matched[:, k, 1] - priors[:, 1]) / (variances[0] * priors[:, 3])
    return out.reshape(out.size(0), -1)


def match(pos_iou, force_iou, truths, priors, variances, labels, landms, loc_t, conf_t, landm_t, idx, matched_t):
    """Fill ``loc_t[idx]``, ``conf_t[idx]``, ``landm_t[idx]`` and ``matched_t[idx]`` (the GT row each prior
    took) for one image (per-GT loop)."""
    num_priors = priors.size(0)
    if truths.size(0) == 0:
        loc_t[idx] = 0
        conf_t[idx] = 0
        landm_t[idx] = 0
        return
    overlaps = jaccard(truths, point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    valid_gt = best_prior_overlap >= force_iou
    if not bool(valid_gt.any()):
        loc_t[idx] = 0
        conf_t[idx] = 0
        landm_t[idx] = 0
        return
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    for j in range(truths.size(0)):
        if not bool(valid_gt[j]):
            continue  # a GT below force_iou is never forced
        best_truth_overlap[best_prior_idx[j]] = 2.0
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx].clone()
    conf[best_truth_overlap < pos_iou] = 0
    assert conf.shape == (num_priors,)
    loc_t[idx] = encode(matches, priors, variances)
    conf_t[idx] = conf
    landm_t[idx] = encode_landm(landms[best_truth_idx], priors, variances)
    matched_t[idx] = best_truth_idx


def log_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp with the batch-global max subtracted (as the classic code does)."""
    x_max = x.max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


def targets_per_image(anchors, targets, *, pos_iou, force_iou, variances):
    """Per-image classic targets: ``loc_t [B,A,4]``, ``conf_t [B,A]`` (labels, -1 = face w/o landmarks),
    ``landm_t [B,A,10]``, ``matched_t [B,A]`` (padded GT index each prior took; meaningful where conf_t != 0)."""
    boxes, labels = targets["boxes"].float(), targets["labels"].long()
    B, A = boxes.shape[0], anchors.shape[0]
    landmarks = targets.get("landmarks")
    valid_landm = targets.get("landmarks_valid")
    loc_t = torch.zeros(B, A, 4)
    conf_t = torch.zeros(B, A, dtype=torch.long)
    landm_t = torch.zeros(B, A, 10)
    matched_t = torch.zeros(B, A, dtype=torch.long)
    for idx in range(B):
        keep = labels[idx] > 0
        truths = boxes[idx][keep]
        lab = labels[idx][keep].clone()
        if landmarks is not None:
            landms = landmarks[idx][keep].reshape(-1, 10).float()
            lv = valid_landm[idx][keep].bool()
        else:
            landms = torch.zeros(truths.size(0), 10)
            lv = torch.zeros(truths.size(0), dtype=torch.bool)
        lab[(lab == 1) & ~lv] = -1  # classic: face without landmarks
        match(pos_iou, force_iou, truths, anchors, variances, lab, landms, loc_t, conf_t, landm_t, idx, matched_t)
        matched_t[idx] = keep.nonzero().squeeze(1)[matched_t[idx]] if truths.size(0) else 0
    return loc_t, conf_t, landm_t, matched_t


def oracle_multibox_loss(
    outputs,
    anchors,
    targets,
    *,
    num_classes=2,
    pos_iou=0.35,
    force_iou=0.2,
    neg_pos=7,
    empty_negatives=0,
    variances=(0.1, 0.2),
    loc_weight=2.0,
    cls_loss="ohem",
    focal_alpha=0.25,
    focal_gamma=2.0,
):
    """The classic MultiBox loss. Returns the same dict as `MultiBoxLoss` (float tensors)."""
    loc_data = outputs["loc"].float().cpu()
    conf_data = outputs["conf"].float().cpu()
    landm_data = outputs.get("landm")
    anchors = anchors.detach().float().cpu()
    targets = {k: v.cpu() for k, v in targets.items()}
    num, num_priors = loc_data.shape[:2]
    loc_t, conf_t, landm_t, _ = targets_per_image(
        anchors, targets, pos_iou=pos_iou, force_iou=force_iou, variances=variances
    )

    # landmark loss: only label-1 priors (faces with landmarks); with face-only labels this is conf_t > 0
    pos1 = conf_t == 1
    N1 = max(float(pos1.long().sum()), 1.0)
    if landm_data is not None:
        landm_data = landm_data.float().cpu()
        landm_p = landm_data[pos1.unsqueeze(2).expand_as(landm_data)].view(-1, 10)
        landm_tt = landm_t[pos1.unsqueeze(2).expand_as(landm_t)].view(-1, 10)
        loss_landm = F.smooth_l1_loss(landm_p, landm_tt, reduction="sum")
    else:
        loss_landm = torch.tensor(0.0)

    pos = conf_t != 0
    conf_t[conf_t == -1] = 1  # a landmark-less face is a face

    pos_idx = pos.unsqueeze(2).expand_as(loc_data)
    loc_p = loc_data[pos_idx].view(-1, 4)
    loc_tt = loc_t[pos_idx].view(-1, 4)
    loss_l = F.smooth_l1_loss(loc_p, loc_tt, reduction="sum")

    num_pos = pos.long().sum(1, keepdim=True)
    if cls_loss == "ohem":
        batch_conf = conf_data.detach().view(-1, num_classes)
        loss_c = log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
        loss_c[pos.view(-1, 1)] = 0  # filter out positives
        loss_c = loss_c.view(num, -1)
        _, loss_idx = loss_c.sort(1, descending=True)
        _, idx_rank = loss_idx.sort(1)
        num_neg = torch.clamp(neg_pos * num_pos, max=pos.size(1) - 1)
        if empty_negatives > 0:
            num_neg = torch.where(num_pos == 0, torch.full_like(num_neg, min(empty_negatives, num_priors - 1)), num_neg)
        neg = idx_rank < num_neg.expand_as(idx_rank)
        pos_idx = pos.unsqueeze(2).expand_as(conf_data)
        neg_idx = neg.unsqueeze(2).expand_as(conf_data)
        conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, num_classes)
        targets_weighted = conf_t[(pos + neg).gt(0)]
        loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")
    else:
        loss_c = torch.tensor(0.0)
        for idx in range(num):
            onehot = F.one_hot(conf_t[idx], num_classes)[:, 1:].float()
            loss_c = loss_c + sigmoid_focal_loss(
                conf_data[idx, :, 1:], onehot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
            )

    N = max(float(num_pos.sum()), 1.0)
    loss_l = loss_l / N
    loss_c = loss_c / N
    loss_landm = loss_landm / N1
    return {
        "loss": loc_weight * loss_l + loss_c + loss_landm,
        "loss_box": loss_l,
        "loss_cls": loss_c,
        "loss_landm": loss_landm,
        "num_pos": num_pos.squeeze(1),
        "conf_t": conf_t,
    }


# ---- random WIDER-like batches -----------------------------------------------------------------------


def random_targets(
    counts,
    *,
    generator: torch.Generator,
    image_size=(640, 640),
    min_side=2.0,
    max_side=400.0,
    person_fraction=0.0,
    landmark_fraction=0.7,
    duplicate=False,
):
    """Padded normalized targets for images with ``counts[i]`` boxes (log-uniform sides, face-like aspect).

    Faces (label 1) get landmarks inside their box, valid with probability `landmark_fraction`; a
    `person_fraction` of boxes are persons (label 2, tall, no landmarks). With `duplicate`, the first
    image's first box is repeated at its end (two GTs sharing a best anchor).
    """
    H, W = image_size
    counts = [int(c) for c in counts]
    if duplicate and counts[0] > 0:
        counts[0] += 1
    B, M = len(counts), max(counts, default=0)
    boxes = torch.zeros(B, M, 4)
    labels = torch.zeros(B, M, dtype=torch.long)
    landmarks = torch.zeros(B, M, 5, 2)
    valid = torch.zeros(B, M, dtype=torch.bool)
    canonical = torch.tensor([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])
    for b, n in enumerate(counts):
        if n == 0:
            continue
        lo, hi = torch.log(torch.tensor(min_side)), torch.log(torch.tensor(max_side))
        side = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
        person = torch.rand(n, generator=generator) < person_fraction
        aspect = 1.0 + 0.4 * torch.rand(n, generator=generator) + 1.5 * person.float()
        w, h = side, side * aspect
        cx = torch.rand(n, generator=generator) * W
        cy = torch.rand(n, generator=generator) * H
        px = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        px[:, 0::2] = px[:, 0::2].clamp(0, W)
        px[:, 1::2] = px[:, 1::2].clamp(0, H)
        px[:, 2:] = torch.maximum(px[:, 2:], px[:, :2] + 0.5)  # keep a sliver of size at the border
        if duplicate and b == 0:
            px[-1] = px[0]
            person[-1] = person[0]
        pts = px[:, None, :2] + canonical[None] * (px[:, None, 2:] - px[:, None, :2])
        pts = pts + 0.05 * side[:, None, None] * torch.randn(n, 5, 2, generator=generator)
        boxes[b, :n] = px / torch.tensor([W, H, W, H])
        labels[b, :n] = torch.where(person, 2, 1)
        landmarks[b, :n] = pts / torch.tensor([W, H])
        valid[b, :n] = (torch.rand(n, generator=generator) < landmark_fraction) & ~person
    return {"boxes": boxes, "labels": labels, "landmarks": landmarks, "landmarks_valid": valid}


def random_outputs(batch, num_anchors, num_classes=2, *, generator: torch.Generator, landmarks=True):
    """Random raw model outputs ``loc [B,A,4]``, ``conf [B,A,C]``, ``landm [B,A,10] | None``."""
    loc = torch.randn(batch, num_anchors, 4, generator=generator)
    conf = 2.0 * torch.randn(batch, num_anchors, num_classes, generator=generator)
    landm = torch.randn(batch, num_anchors, 10, generator=generator) if landmarks else None
    return {"loc": loc, "conf": conf, "landm": landm}
