"""Embedded MTCNN detector: three-stage cascade, batched in torch (CPU or GPU).

Boxes are x0,y0,x1,y1 in pixel-edge coordinates (0 = left edge of the first pixel);
landmarks are 5x2 (eye L, eye R, nose, mouth L, mouth R as seen in the image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from ...models.arch.mtcnn import MTCNNNets
from ..types import RawDetections

CELL, STRIDE = 12, 2


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(dim=1, keepdim=True).values
    centre = boxes[:, 0:2] + wh / 2
    return torch.cat([centre - side / 2, centre + side / 2], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    wh = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return boxes + reg * wh


def _patches(images: torch.Tensor, image_idx: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Area-like resample of each box (zero outside the image), normalised for the nets."""
    rois = torch.cat([image_idx[:, None].to(boxes), boxes], dim=1)
    return _normalise(roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=4, aligned=True))


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS on intersection over the smaller box (drops boxes nested in a stronger one)."""
    order = scores.argsort(descending=True)
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep: list[int] = []
    for i in order.tolist():
        if keep:
            k = torch.as_tensor(keep)
            lt = torch.maximum(boxes[k, :2], boxes[i, :2])
            rb = torch.minimum(boxes[k, 2:], boxes[i, 2:])
            inter = (rb - lt).clamp(min=0).prod(dim=1)
            if (inter / torch.minimum(areas[k], areas[i]).clamp(min=1e-6)).max() > threshold:
                continue
        keep.append(i)
    return torch.as_tensor(keep, dtype=torch.long)


class MTCNN:
    """The cascade around loaded :class:`MTCNNNets`. Call with [B,3,H,W] RGB in 0..255."""

    def __init__(self, nets: MTCNNNets, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709,
                 chunk: int = 512, refine_landmarks: bool = True) -> None:
        self.refine_landmarks = refine_landmarks
        self.nets = nets.eval()
        self.thresholds = thresholds
        self.factor = factor
        self.chunk = chunk

    @property
    def device(self) -> torch.device:
        return next(self.nets.parameters()).device

    def _chunked(self, net, x: torch.Tensor):
        outs = [net(x[i:i + self.chunk]) for i in range(0, x.shape[0], self.chunk)]
        return [torch.cat(parts) for parts in zip(*outs)]

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, min_face: float = 20.0) -> list[RawDetections]:
        images = images.to(self.device, torch.float32)
        batch, _, height, width = images.shape
        boxes, scores, idx = self._propose(images, max(float(min_face), 12.0))
        for stage in ("rnet", "onet"):
            if boxes.shape[0] == 0:
                break
            boxes = _square(boxes)
            if stage == "rnet":
                reg, prob = self._chunked(self.nets.rnet, _patches(images, idx, boxes, 24))
            else:
                reg, marks, prob = self._chunked(self.nets.onet, _patches(images, idx, boxes, 48))
            keep = prob > self.thresholds[1 if stage == "rnet" else 2]
            boxes, scores, idx, reg = boxes[keep], prob[keep], idx[keep], reg[keep]
            if stage == "rnet":
                keep = batched_nms(boxes, scores, idx, 0.7)
                boxes, scores, idx = _regress(boxes[keep], reg[keep]), scores[keep], idx[keep]
            else:
                marks = marks[keep]
                wh = boxes[:, 2:4] - boxes[:, 0:2]
                points = torch.stack([marks[:, :5], marks[:, 5:]], dim=2) * wh[:, None, :] + boxes[:, None, 0:2]
                boxes = _regress(boxes, reg)
        if boxes.shape[0] == 0:
            return [RawDetections.empty() for _ in range(batch)]
        results = []
        boxes, scores, idx, points = boxes.float().cpu(), scores.float().cpu(), idx.cpu(), points.float().cpu()
        for b in range(batch):
            sel = (idx == b).nonzero().flatten()
            if sel.numel() == 0:
                results.append(RawDetections.empty())
                continue
            keep = sel[_nms_min(boxes[sel], scores[sel], 0.7)]
            results.append(RawDetections(boxes[keep], scores[keep], points[keep]))
        if self.refine_landmarks:
            results = [self._refine(images, b, r) for b, r in enumerate(results)]
        return results

    def _refine(self, images: torch.Tensor, b: int, det: RawDetections) -> RawDetections:
        """Second ONet pass on the regressed square box, averaged with its mirror image."""
        if det.boxes.shape[0] == 0:
            return det
        boxes = _square(det.boxes).to(self.device)
        idx = torch.full((boxes.shape[0],), b, dtype=torch.long, device=self.device)
        patches = _patches(images, idx, boxes, 48)
        _, marks, _ = self._chunked(self.nets.onet, torch.cat([patches, patches.flip(-1)]))
        n = boxes.shape[0]
        direct, mirrored = marks[:n], marks[n:]
        mirrored = torch.cat([1 - mirrored[:, [1, 0, 2, 4, 3]], mirrored[:, [6, 5, 7, 9, 8]]], dim=1)
        passes = [direct, mirrored]
        marks = torch.stack(passes).mean(0)
        wh = boxes[:, 2:4] - boxes[:, 0:2]
        points = torch.stack([marks[:, :5], marks[:, 5:]], dim=2) * wh[:, None, :] + boxes[:, None, 0:2]
        return RawDetections(det.boxes, det.scores, points.float().cpu())

    def _propose(self, images: torch.Tensor, min_face: float):
        """PNet over an image pyramid: square candidate boxes in image pixels."""
        height, width = images.shape[2:]
        scale = CELL / min_face
        side = min(height, width) * scale
        all_boxes, all_scores, all_idx = [], [], []
        while side >= CELL:
            size = (int(height * scale + 1), int(width * scale + 1))
            reg, prob = self.nets.pnet(_normalise(F.interpolate(images, size=size, mode="area")))
            hit = prob >= self.thresholds[0]
            b, y, x = hit.nonzero(as_tuple=True)
            if b.numel():
                start = torch.stack([x, y], dim=1).to(images) * STRIDE
                boxes = torch.cat([start / scale, (start + CELL) / scale], dim=1).floor()
                sc = prob[b, y, x]
                keep = batched_nms(boxes, sc, b, 0.5)
                all_boxes.append(torch.cat([boxes, reg[b, :, y, x]], dim=1)[keep])
                all_scores.append(sc[keep]), all_idx.append(b[keep])
            scale *= self.factor
            side *= self.factor
        if not all_boxes:
            empty = images.new_zeros(0)
            return images.new_zeros(0, 4), empty, torch.zeros(0, dtype=torch.long, device=images.device)
        boxes, scores, idx = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_idx)
        keep = batched_nms(boxes[:, :4], scores, idx, 0.7)
        boxes = boxes[keep]
        return _regress(boxes[:, :4], boxes[:, 4:]), scores[keep], idx[keep]
