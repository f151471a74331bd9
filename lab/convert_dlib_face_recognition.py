"""Convert dlib's ``dlib_face_recognition_resnet_model_v1.dat`` to ``weights/dlib_face_recognition_resnet.safetensors``.

Reads dlib's own serialization (no dlib needed): the network is stored input-side first; every
``con_4`` layer is followed by its params tensor (filters then biases), every ``affine_`` by gamma then
beta, and ``fc_2`` by its output and input sizes and a [num_inputs, num_outputs] matrix. Tensors are written by dlib as version 2:
packed ints for the shape, then little-endian float32 values. The affine layers are folded into the
preceding convolution (w * gamma, b * gamma + beta) and the result is stored in fp16.

    python -m facerefine.lab.convert_dlib_face_recognition [--dat PATH] [--out weights/...safetensors]

The .dat comes from the PyPI package ``face-recognition-models`` (CC0, Davis King); its licence file is
copied next to the output as ``DLIB_FACE_RECOGNITION_LICENSE.txt``.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

OUT_DEFAULT = Path(__file__).resolve().parents[1] / "weights" / "dlib_face_recognition_resnet.safetensors"
LICENSE_NAME = "DLIB_FACE_RECOGNITION_LICENSE.txt"


class DlibReader:
    """Sequential reader for dlib's serialize() format."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        size, neg = head & 0x0F, head & 0x80
        if size > 8:
            raise ValueError(f"bad packed integer at byte {self.pos}")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if neg else value

    def float(self) -> float:  # dlib float_details: mantissa * 2**exponent
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def string(self) -> str:
        n = self.int()
        s = self.data[self.pos:self.pos + n].decode("ascii")
        self.pos += n
        return s

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unsupported dlib tensor version {version} at byte {self.pos}")
        shape = [self.int() for _ in range(4)]
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += 4 * count
        return values.reshape(shape)


def _layers(data: bytes, name: str) -> list[int]:
    """Byte offsets just after each serialized string ``name`` (packed length + bytes)."""
    token = bytes([1, len(name)]) + name.encode("ascii")
    return [m.end() for m in re.finditer(re.escape(token), data)]


def read_dat(path: Path) -> dict:
    data = Path(path).read_bytes()
    if b"loss_metric_" not in data[:64]:
        raise ValueError(f"{path} is not a dlib metric-learning network (.dat)")
    convs = []
    for pos in _layers(data, "con_4"):
        r = DlibReader(data, pos)
        params = r.tensor().reshape(-1)
        num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(7))
        n_w = params.size - num_filters
        k = n_w // (num_filters * nr * nc)
        convs.append(dict(pos=pos, w=params[:n_w].reshape(num_filters, k, nr, nc), b=params[n_w:],
                          stride=(stride_y, stride_x), padding=(pad_y, pad_x)))
    affines = []
    for pos in _layers(data, "affine_"):
        params = DlibReader(data, pos).tensor().reshape(-1)
        half = params.size // 2
        affines.append(dict(pos=pos, gamma=params[:half], beta=params[half:]))
    fcs = []
    for pos in _layers(data, "fc_2"):
        r = DlibReader(data, pos)
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor()
        fcs.append(params.reshape(-1)[:num_inputs * num_outputs].reshape(num_inputs, num_outputs))
    means = None
    for pos in _layers(data, "input_rgb_image_sized"):
        r = DlibReader(data, pos)
        means = (r.float(), r.float(), r.float())
    return dict(convs=convs, affines=affines, fcs=fcs, means=means)


def convert(dat: Path) -> dict[str, torch.Tensor]:
    """The folded state dict of DlibFaceRecognitionResNet (float32)."""
    from ..models.arch.dlib_resnet import DLIB_RGB_MEAN, DlibFaceRecognitionResNet
    raw = read_dat(dat)
    convs, affines, fcs = raw["convs"], raw["affines"], raw["fcs"]
    if len(convs) != 29 or len(affines) != 29 or len(fcs) != 1:
        raise ValueError(f"{dat}: expected 29 con, 29 affine and 1 fc layers, found "
                         f"{len(convs)}, {len(affines)}, {len(fcs)}")
    if raw["means"] is not None and not np.allclose(raw["means"], DLIB_RGB_MEAN, atol=1e-3):
        raise ValueError(f"{dat}: input means {raw['means']} differ from {DLIB_RGB_MEAN}")
    model = DlibFaceRecognitionResNet()
    targets = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    sd = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    for conv, aff, module in zip(sorted(convs, key=lambda c: c["pos"]), sorted(affines, key=lambda a: a["pos"]),
                                 targets):
        if aff["pos"] < conv["pos"]:
            raise ValueError(f"{dat}: layer order not conv -> affine")
        if tuple(conv["w"].shape) != tuple(module.weight.shape) or tuple(conv["stride"]) != module.stride \
                or tuple(conv["padding"]) != module.padding:
            raise ValueError(f"{dat}: conv {names[id(module)]} is {conv['w'].shape} stride {conv['stride']} "
                             f"padding {conv['padding']}, the port expects {tuple(module.weight.shape)} "
                             f"stride {module.stride} padding {module.padding}")
        g = aff["gamma"].astype(np.float64)
        w = conv["w"].astype(np.float64) * g[:, None, None, None]
        b = conv["b"].astype(np.float64) * g + aff["beta"].astype(np.float64)
        sd[names[id(module)] + ".weight"] = torch.from_numpy(w.astype(np.float32))
        sd[names[id(module)] + ".bias"] = torch.from_numpy(b.astype(np.float32))
    sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fcs[0].T))
    model.load_state_dict(sd, strict=True)
    return model.state_dict()


def find_dat() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the eval extra first: pip install face-recognition-models (or pass --dat)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "dlib_face_recognition_resnet_model_v1.dat"


def find_license(dat: Path) -> Path | None:
    site = dat.parents[2]
    hits = sorted(site.glob("face_recognition_models-*.dist-info/licenses/LICENSE")) + \
        sorted(site.glob("face_recognition_models-*.dist-info/LICENSE*"))
    return hits[0] if hits else None


def main(argv=None) -> int:
    from ..models.arch.dlib_resnet import DLIB_RESNET_ARCH
    from ..models.loading import save_safetensors
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dat", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args(argv)
    dat = args.dat or find_dat()
    sd = {k: v.half() for k, v in convert(dat).items()}
    src_sha = hashlib.sha256(dat.read_bytes()).hexdigest()
    out = save_safetensors(sd, args.out, metadata={
        "architecture": DLIB_RESNET_ARCH, "source": dat.name, "source_sha256": src_sha,
        "license": "CC0-1.0 (Davis King, dlib; via PyPI face-recognition-models)",
        "note": "affine layers folded into the convolutions; fp16"})
    lic = find_license(dat)
    if lic is not None:
        shutil.copyfile(lic, args.out.parent / LICENSE_NAME)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {sha}) from {dat} (sha256 {src_sha})")
    print(f"licence: {args.out.parent / LICENSE_NAME if lic else 'NOT FOUND - copy the CC0 text by hand'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
