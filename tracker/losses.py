"""STARK's box loss: GIoU + L1 on normalised (x1, y1, x2, y2) corners."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss


def box_loss(pred: torch.Tensor, target: torch.Tensor, giou_weight: float = 2.0,
             l1_weight: float = 5.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`pred` and `target` are (B, 4) normalised corners; the ground truth is clamped to [0, 1] first.

    Returns the weighted total and its parts (detached) for logging."""
    target = target.clamp(0.0, 1.0)
    pred = pred.float()
    # corners from two independent maps can cross; GIoU is only defined for x2 >= x1, y2 >= y1, so a crossed
    # prediction counts as an empty box there (L1 still pulls the corners apart)
    ordered = torch.cat((pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2])), dim=1)
    giou = generalized_box_iou_loss(ordered, target, reduction="mean", eps=1e-7)
    l1 = F.l1_loss(pred, target)
    total = giou_weight * giou + l1_weight * l1
    return total, {"giou": giou.detach(), "l1": l1.detach()}
