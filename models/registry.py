"""The registry of known weights files.

Each entry says what a file is, where it is looked for (``folder``) and where it
comes from. sha256/size: values published for the official release assets (the sha256 prefix
in BasicSR-style names such as GFPGANv1.3-c953a88f matches). ``None`` where no
value could be confirmed from here (no network to the hubs): such downloads are
checked for completeness, size and file format (an HTML error page is refused, see
models.download.check_format) and `models verify` reports them as "unverified".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass(frozen=True)
class WeightSpec:
    name: str                      # short registry name users type
    file: str                      # file name on disk
    folder: str                    # folder kind: facerestore_models, facedetection, pyiqa, facerefine
    urls: tuple[str, ...]          # official download URL(s); empty for files trained/shipped here
    sha256: Optional[str]
    size: Optional[int]            # bytes
    license: str
    architecture: str              # what loads it, e.g. "CodeFormer" (spandrel), "RetinaFace"
    needed_by: str                 # which feature uses it
    embedded: bool = False         # shipped inside the package (weights/ folder)
    notes: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["urls"] = list(self.urls)
        return d


_FR = "facerestore_models"
_FD = "facedetection"

REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec) -> WeightSpec:
    REGISTRY[spec.name] = spec
    return spec


# --- community restorers (loaded through spandrel / spandrel_extra_arches) ---
register(WeightSpec(
    "codeformer", "codeformer.pth", _FR,
    ("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",),
    "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", 376_637_898, "NTU S-Lab License 1.0 (non-commercial)", "CodeFormer",
    "lookup (CodeFormer family, quality slider + fidelity)"))
register(WeightSpec(
    "gfpgan-1.3", "GFPGANv1.3.pth", _FR,
    ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth",),
    "c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70", None, "Apache-2.0 (with StyleGAN2 parts under NVIDIA licence)", "GFPGAN",
    "lookup (GFPGAN: no quality slider)"))
register(WeightSpec(
    "gfpgan-1.4", "GFPGANv1.4.pth", _FR,
    ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",),
    "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348_632_874, "Apache-2.0 (with StyleGAN2 parts under NVIDIA licence)", "GFPGAN",
    "lookup (GFPGAN: no quality slider)"))
register(WeightSpec(
    "restoreformer++", "RestoreFormer++.ckpt", _FR,
    ("https://github.com/wzhouxiff/RestoreFormerPlusPlus/releases/download/v1.0.0/RestoreFormer++.ckpt",),
    None, None, "Apache-2.0", "RestoreFormer",
    "lookup (RestoreFormer++: no quality slider)"))

# --- facexlib detection / parsing / identity ---
register(WeightSpec(
    "retinaface-resnet50", "detection_Resnet50_Final.pth", _FD,
    ("https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",),
    "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", 109_497_761, "MIT", "RetinaFace", "crop (facexlib RetinaFace resnet50 detector)"))
register(WeightSpec(
    "retinaface-mobilenet", "detection_mobilenet0.25_Final.pth", _FD,
    ("https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",),
    "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220", 1_789_735, "MIT", "RetinaFace", "crop (facexlib RetinaFace mobilenet0.25 detector)"))
register(WeightSpec(
    "parsenet", "parsing_parsenet.pth", _FD,
    ("https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",),
    "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2", 85_331_193, "MIT", "ParseNet", "paste (face-parsing mask)"))
register(WeightSpec(
    "bisenet", "parsing_bisenet.pth", _FD,
    ("https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",),
    "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567", None, "MIT", "BiSeNet", "paste (face-parsing mask, protect hair)"))
register(WeightSpec(
    "arcface", "recognition_arcface_ir_se50.pth", _FD,
    ("https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",),
    "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28", None, "MIT", "ArcFace-IR-SE50", "refine (identity guidance), eval (identity similarity)"))


# --- embedded identity network (refine guidance when ArcFace is absent; see docs/refine.md) ---
register(WeightSpec(
    "dlib-face-recognition", "dlib_face_recognition_resnet.safetensors", "facerefine", (),
    "0116d8e0d7d8c5e9c95b2cc1470e83791f7fd6c9f684c5c3a20ac8e6eda8c4b5", 11220536,
    "CC0-1.0 (Davis King, dlib_face_recognition_resnet_model_v1; weights/DLIB_FACE_RECOGNITION_LICENSE.txt)",
    "dlib-face-recognition-resnet-v1",
    "refine (identity guidance with --id-model auto|dlib: the embedded 128-d recogniser)", embedded=True,
    notes="converted from face-recognition-models 0.3.0 by lab/convert_dlib_face_recognition.py; affine "
          "layers folded into the convolutions; fp16"))


# --- embedded offline detector (shipped in weights/, see docs/crop_paste.md) ---
register(WeightSpec(
    "mtcnn", "mtcnn.safetensors", _FD, (),
    "1e169630a1db4fadb556039f682ad7a21639486984d9b747f051e2905908c6ec", 1987736,
    "MIT (facenet-pytorch 2.6.0 wheel, Tim Esler; ported from davidsandberg/facenet)", "MTCNN",
    "crop (embedded offline detector with 5 landmarks)", embedded=True,
    notes="pnet/rnet/onet state dicts from facenet_pytorch/data/*.pt converted to safetensors"))


# --- quality (core/score) ---
register(WeightSpec(
    "face-niqe", "face_niqe.safetensors", "facerefine", (), None, None,
    "fitted here on the London Face Set (CC BY 4.0); parameters CC BY 4.0", "FaceNIQE",
    "score (offline face-niqe metric; refit with lab/train/fit_face_niqe.py)", embedded=True))
register(WeightSpec(
    "face-iqa", "face_iqa.safetensors", "facerefine", (), None, None,
    "fitted here on the London Face Set (CC BY 4.0); parameters CC BY 4.0", "FaceIQA",
    "score (default face critic: score node/CLI, lookup steering, training labels; "
    "refit with lab/train/fit_face_iqa.py)", embedded=True))

register(WeightSpec(
    "exemplars", "exemplars.safetensors", "facerefine", (), None, None,
    "composites of 8+ London Face Set training identities each (DeBruine & Jones 2017, CC BY 4.0); no photo "
    "is stored (see weights/EXEMPLARS_LICENSE.txt)", "FaceRefine-Exemplars",
    "lookup (exemplar detail: eye detail for heavily blurred faces; rebuild with lab/build_exemplars.py)",
    embedded=True))

# --- refine (core/refine): trained here with `python -m facerefine train`, no public download ---
for _arch in ("codeformer", "iqpfr"):
    register(WeightSpec(
        f"latent-prior-{_arch}", f"facerefine_latent_prior_{_arch}.safetensors", "facerefine", (), None, None,
        "trained here (same terms as the restorer whose latents it models)", "FaceRefine-LatentPrior",
        f"refine (latent score model over the {_arch} latent; absent = identity guidance only)"))
    register(WeightSpec(
        f"identity-recovery-{_arch}", f"facerefine_identity_recovery_{_arch}.safetensors", "facerefine", (),
        None, None, "trained here", "FaceRefine-IdentityRecovery",
        f"refine (Identity Recovery Network + learned latent mask for the {_arch} latent; "
        f"absent = LQ-face target and landmark region mask)"))

# --- the compact default model trained here (lab/train, configs/compact.json; docs/training.md) ---
register(WeightSpec(
    "facerefine-compact", "facerefine_compact.safetensors", "facerefine", (),
    "d956d314d13450b7c886311f8770b8604bce24dfca0aa8570209030f6bc7e63e", 7086246,
    "trained here on UTKFace (non-commercial research) + London train identities (CC BY 4.0)", "IQPFR",
    "lookup (embedded default restorer when no community weights are present; 64x64 IQPFR, CPU-trained)",
    embedded=True, notes="fp16; retrain with `python -m facerefine train vqgan|lookup|prior --config configs/compact.json`"))
register(WeightSpec(
    "facerefine-compact-prior", "facerefine_compact_prior.safetensors", "facerefine", (),
    "e91cfa23aa24c02ef0d52db93aa51f5213fc510fe2a172b35d7d8d79206654a6", 1605880,
    "trained here (same data as facerefine-compact)", "FaceRefine-LatentPrior",
    "refine with facerefine-compact (latent score model over its 2x64-channel 16x16 latent)", embedded=True))

register(WeightSpec(
    "facerefine-compact-v2", "facerefine_compact_v2.safetensors", "facerefine", (),
    "fe2c54396a5e51ec7bb65d68a73b260daba4a417b4be91cc0479a7a90a192115", 5106792,
    "trained here on FFHQ/StyleGAN 256 subsets, UTKFace and London train identities: NON-COMMERCIAL RESEARCH "
    "use only (FFHQ CC BY-NC-SA 4.0, UTKFace and StyleGAN non-commercial terms)", "IQPFRv2",
    "lookup (embedded default restorer when no community weights are present; fully convolutional IQPFR v2, "
    "CPU-trained)",
    embedded=True, notes="fp16; retrain with `python -m facerefine train compact-v2` (configs/compact_v2.json)"))
register(WeightSpec(
    "facerefine-compact-v2-prior", "facerefine_compact_v2_prior.safetensors", "facerefine", (),
    "9f14b2036073a443b65dc60184952e592cb2aea649b52a92c2f70d7eb1e7faa2", 1564448,
    "trained here on latents of FFHQ/StyleGAN 256 subsets and London train identities: NON-COMMERCIAL RESEARCH "
    "use only (same data terms as facerefine-compact-v2)", "FaceRefine-LatentPrior",
    "refine with facerefine-compact-v2 (latent score model over its 64-channel crop/16 latent; positions "
    "resized to the grid, so 256 and 512 crops)", embedded=True,
    notes="fp16; retrain with `python -m facerefine.lab.train.refine_v2 cache|prior` (docs/refine.md)"))
register(WeightSpec(
    "facerefine-compact-v2-identity-dlib", "facerefine_compact_v2_identity_dlib.safetensors", "facerefine", (),
    "cf714e3e9b48de2059c4116dd2fb2e0431b8d598ee84ca6268d392822a467dc8", 1386888,
    "trained here (same data terms as facerefine-compact-v2: NON-COMMERCIAL RESEARCH use only); targets are "
    "embeddings of dlib's CC0 face-recognition ResNet", "FaceRefine-IdentityRecovery",
    "refine with facerefine-compact-v2 and the dlib guide: Identity Recovery Network (predicts the clean face's "
    "dlib embedding; no learned mask, the landmark region mask is used)", embedded=True,
    notes="fp16; retrain with `python -m facerefine.lab.train.refine_v2 cache|identity` (docs/refine.md)"))


# Names under which A1111/Forge save the same official files.
A1111_FILE_NAMES = {"codeformer": ("codeformer-v0.1.0.pth",)}


AUTO_RESTORERS = ("codeformer", "gfpgan-1.4", "gfpgan-1.3", "restoreformer++")
EMBEDDED_RESTORER = "facerefine-compact-v2"


def restorer_candidates() -> list[str]:
    """What 'auto' tries, in order: every community restorer found on disk (registry name, or the A1111
    file name), then the embedded compact model. A candidate that fails to load is skipped with a warning
    (models.restorers.load_restorer)."""
    from .folders import find_existing
    found = []
    for name in AUTO_RESTORERS:
        spec = REGISTRY[name]
        for file in (spec.file, *A1111_FILE_NAMES.get(name, ())):
            if find_existing(file, spec.folder) is not None:
                found.append(name if file == spec.file else file)
    return found + [EMBEDDED_RESTORER]


def get_spec(name: str) -> Optional[WeightSpec]:
    return REGISTRY.get(name)


def specs_for_folder(folder: str) -> list[WeightSpec]:
    return [s for s in REGISTRY.values() if s.folder == folder]
