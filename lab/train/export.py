"""Pack a finished run into the fp16 safetensors files the registry ships.

``<out_dir>/iqpfr.safetensors``             -> ``export.file`` (e.g. weights/facerefine_compact.safetensors)
``<out_dir>/latent_prior.safetensors``      -> ``export.prior_file`` (default facerefine_latent_prior_iqpfr.safetensors)
``<out_dir>/identity_recovery.safetensors`` -> ``export.identity_file`` (only when trained)

Metadata (architecture, config) is kept so each file loads on its own; buffers that hold statistics
stay float32 where fp16 would lose them (none today: all tensors are cast).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ...errors import FaceRefineError
from ...models.loading import save_safetensors
from .stages import IDENTITY_FILE, IQPFR_FILE, PRIOR_FILE

MAX_TOTAL_MB = 40.0


def to_fp16(src: Path, dst: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata() or {}
    sd = load_file(str(src))
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    return save_safetensors(sd, dst, metadata={**meta, "dtype": "float16"})


def export_run(cfg: dict, out_dir: Optional[str] = None, output: Optional[str] = None) -> dict:
    run = Path(out_dir or cfg.get("out_dir", "runs/facerefine"))
    target = Path(output or cfg.get("export", {}).get("file", run / "export.safetensors"))
    if not target.is_absolute() and str(target).startswith("weights/") and not target.parent.exists():
        target = Path(__file__).resolve().parents[2] / target
    main = run / IQPFR_FILE
    if not main.is_file():
        raise FaceRefineError(f"{main} not found: train the vqgan and lookup stages first")
    written = {"restorer": str(to_fp16(main, target))}
    ex = cfg.get("export", {})
    for key, name, default in (("prior", PRIOR_FILE, "facerefine_latent_prior_iqpfr.safetensors"),
                               ("identity", IDENTITY_FILE, "facerefine_identity_recovery_iqpfr.safetensors")):
        if (run / name).is_file():
            written[key] = str(to_fp16(run / name, target.with_name(ex.get(f"{key}_file", default))))
    sizes = {k: Path(v).stat().st_size for k, v in written.items()}
    total_mb = sum(sizes.values()) / 1e6
    if total_mb > MAX_TOTAL_MB:
        raise FaceRefineError(f"exported weights are {total_mb:.1f} MB, over the {MAX_TOTAL_MB} MB budget")
    return {"written": written, "bytes": sizes, "total_mb": round(total_mb, 2),
            "sha256": {k: _sha256(Path(v)) for k, v in written.items()}}


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_loadable(path: Path) -> torch.nn.Module:
    """The exported restorer loads into the IQPFR architecture (strict)."""
    from ...models.arch.iqpfr import IQPFR
    return IQPFR.from_file(path)
