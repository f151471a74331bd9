"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in torch.

The network of dlib's ``dnn_face_recognition_ex.cpp`` (Davis King, weights released CC0): a 7x7/2 stem,
a 3x3/2 max pool, then residual blocks of two 3x3 convolutions at 32, 64, 128, 256 and 256 channels
(29 convolutions in all), a global average pool and a 128-d linear layer without bias. Input: a 150x150
RGB face chip in dlib's framing (``get_face_chip_details(shape, 150, 0.25)``).

dlib's inference ``affine`` layers (per-channel scale and shift after every convolution) are folded into
the convolutions by the converter (``lab/convert_dlib_face_recognition.py``), so every conv here has a bias.
Two details of dlib's layers are reproduced exactly:

- strided convolutions and pools use no padding (dlib's default when the stride is not 1);
- ``add_prev`` adds tensors of different sizes by zero-padding the smaller one (more channels in the
  down-sampling blocks, and 3x3 vs 4x4 maps in the first 256-channel block).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DLIB_RESNET_ARCH = "dlib-face-recognition-resnet-v1"
DLIB_EMBED_DIM = 128
DLIB_CHIP_SIZE = 150
# dlib's input_rgb_image defaults (pixel - mean) / 256, checked against the .dat file by the converter
DLIB_RGB_MEAN = (122.782, 117.001, 104.298)

# (channels, blocks, first block down-samples) from the input side, as in dlib's alevel4 .. alevel0
_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the output has the larger size in every dimension; missing values count as 0."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if (dc or dh or dw) else t
    return pad(a) + pad(b)


class DlibResidual(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_prev(y, skip))


class DlibFaceRecognitionResNet(nn.Module):
    """[N,3,150,150] RGB 0..1 face chips -> [N,128] dlib face descriptors (not normalised, as dlib)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        blocks, cin = [], 32
        for cout, n, down in _STAGES:
            for i in range(n):
                blocks.append(DlibResidual(cin, cout, down and i == 0))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, DLIB_EMBED_DIM, bias=False)
        self.register_buffer("rgb_mean", torch.tensor(DLIB_RGB_MEAN).view(1, 3, 1, 1) / 255.0, persistent=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips.to(self.stem.weight.dtype) - self.rgb_mean.to(self.stem.weight.dtype)) * (255.0 / 256.0)
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def conv_count(model: DlibFaceRecognitionResNet) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))
