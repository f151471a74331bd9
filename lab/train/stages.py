"""The four training stages. Each builds its modules and optimisers, does one step per batch and
exports safetensors. Models and step maths come from models/arch and lab/refine_training.py.

1. ``vqgan``    dual-branch codebook autoencoder (IQPFR): HQ faces through universal + HQ codes, the
                HQ-branch terms weighted per face by its NR-IQA score; LQ faces through the universal
                codebook alone. -> ``<out>/vqgan.safetensors`` (+ ``iqpfr.safetensors``)
2. ``lookup``   quality-conditioned lookup Transformer: cross-entropy against the HQ face's codes (from a
                frozen copy of the stage-1 model), conditioned on the HQ face's NR-IQA score.
                ``lookup.base = "codeformer"`` (or a path) instead fine-tunes only the FiLM conditioning
                on a frozen community CodeFormer. -> updates ``iqpfr.safetensors`` / writes the
                conditioning file.
3. ``prior``    latent score model: EDM denoising score matching on clean latents (HQ face's quantised
                latent) conditioned on degraded latents (LQ encoder output). -> ``latent_prior.safetensors``
4. ``identity`` Identity Recovery Network + learnable latent mask against an ArcFace judge.
                -> ``identity_recovery.safetensors``
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import FaceRefineError, WeightsNotFoundError
from .iqpfr import quantize_dual, stage_parameters

IQPFR_FILE = "iqpfr.safetensors"          # latest full model (stage 1, then updated by stage 2)
CODEBOOK_FILE = "vqgan.safetensors"       # stage-1 result, kept as the lookup stage's frozen teacher
CONDITION_FILE = "quality_condition.safetensors"
PRIOR_FILE = "latent_prior.safetensors"
IDENTITY_FILE = "identity_recovery.safetensors"


def iqpfr_config(cfg: dict):
    from ...models.arch.iqpfr import IQPFRConfig
    model = dict(cfg.get("model", {}))
    model.setdefault("img_size", int(cfg.get("resolution", 128)))
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
    if int(model["img_size"]) != int(cfg.get("resolution", model["img_size"])):
        raise FaceRefineError(f"model.img_size {model['img_size']} differs from resolution {cfg.get('resolution')}")
    return IQPFRConfig(**model)


class QualityLabels:
    """NR-IQA label (normalised 0..1, higher = better) of each cached training face, computed lazily
    the first time a face is drawn and kept in ``<cache>.quality-<metric>.npy``."""

    def __init__(self, metric_name: str, cache_file: Optional[Path], size: int, log=print):
        self.metric_name, self.file, self.log = metric_name, cache_file, log
        self.values: Optional[np.ndarray] = None
        self.metric = None
        self.available = metric_name not in ("", "none")
        self.size = size

    def _load_metric(self) -> None:
        if self.metric is not None or not self.available:
            return
        try:
            from ...core.score import get_metric
            self.metric = get_metric(self.metric_name, "cpu")
        except (FaceRefineError, ImportError, OSError) as err:
            self.available = False
            self.log(f"NR-IQA labels unavailable ({err}); HQ faces are weighted equally")

    def __call__(self, faces: np.ndarray, indices: torch.Tensor, hq: torch.Tensor) -> Optional[torch.Tensor]:
        self._load_metric()
        if not self.available:
            return None
        if self.values is None:
            self.values = np.full(len(faces), np.nan, dtype=np.float32)
            if self.file is not None and self.file.is_file():
                stored = np.load(self.file)
                if len(stored) == len(faces):
                    self.values = stored.astype(np.float32)
        idx = indices.cpu().numpy()
        todo = [i for i, j in enumerate(idx) if np.isnan(self.values[j])]
        if todo:
            with torch.no_grad():
                q = self.metric.normalized(hq[todo].float().cpu()).float().numpy()
            self.values[idx[todo]] = q
        return torch.from_numpy(self.values[idx].copy())

    def save(self) -> None:
        if self.file is not None and self.values is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.file, self.values)


class Stage:
    """Base: subclasses fill ``self.trainable`` modules/optimisers, ``step`` and ``export``."""

    name = "stage"
    amp = None  # set by the runner

    def __init__(self, cfg: dict, settings: dict, device: torch.device, out_dir: Path):
        self.cfg, self.settings, self.device, self.out_dir = cfg, settings, device, Path(out_dir)
        self.labels: Optional[QualityLabels] = None
        self.faces = None

    def modules(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def on_start(self, step: int) -> None:
        pass

    def step(self, hq: torch.Tensor, lq: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export(self) -> list[Path]:
        raise NotImplementedError

    @torch.no_grad()
    def probe(self, hq: torch.Tensor, lq: torch.Tensor) -> float:
        """Deterministic loss on a fixed batch (no update): the smoke tests compare it before/after."""
        for mod in self.modules().values():
            mod.eval()
        return float(self.compute(hq, lq, None, **self.probe_kwargs)["total"])

    probe_kwargs: dict = {}

    # helpers
    def attach_data(self, faces, labels: Optional[QualityLabels]) -> None:
        self.faces, self.labels = faces, labels

    def quality_of(self, hq: torch.Tensor, indices: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if self.labels is None or indices is None:
            return None
        q = self.labels(self.faces, indices, hq)
        return None if q is None else q.to(hq.device)

    def adam(self, params, lr: Optional[float] = None) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(params), lr=float(lr or self.settings["lr"]), betas=(0.9, 0.99))

    def backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params) -> None:
        self.amp.backward(loss, opt, params, float(self.settings.get("grad_clip", 1.0)))

    def stage_file(self, name: str) -> Path:
        return self.out_dir / name


def load_iqpfr(path: Path, device) -> "torch.nn.Module":
    from ...models.arch.iqpfr import IQPFR
    if not Path(path).is_file():
        raise WeightsNotFoundError(f"{path} not found: train the previous stage first "
                                   f"(python -m facerefine train vqgan --config ...)")
    return IQPFR.from_file(path).to(device)


def sobel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from kornia.filters import spatial_gradient
    return F.l1_loss(spatial_gradient(a), spatial_gradient(b), reduction="none").mean(dim=(1, 2, 3, 4))


# ----------------------------------------------------------------------------------------------- 1
class VQGANStage(Stage):
    name = "vqgan"

    def __init__(self, cfg, settings, device, out_dir):
        super().__init__(cfg, settings, device, out_dir)
        from ...models.arch.iqpfr import IQPFR
        init = settings.get("init")
        self.model = (IQPFR.from_file(init) if init else IQPFR(iqpfr_config(cfg))).to(device)
        self.params = stage_parameters(self.model, "codebook")
        self.opt = self.adam(self.params)
        self.w = {"l1": 1.0, "grad": 0.5, "vq": 1.0, "lq_l1": 0.5, **settings.get("weights", {})}

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"codebook": self.opt}

    def step(self, hq, lq, step, indices=None):
        self.model.train()
        losses = self.compute(hq, lq, indices)
        self.backward(losses["total"], self.opt, self.params)
        return {k: v.detach() for k, v in losses.items()}

    def compute(self, hq, lq, indices=None):
        m, w = self.model, self.w
        q = self.quality_of(hq, indices)
        # per-face weight of the HQ-specific branch: its NR-IQA score relative to the batch mean
        weight = torch.ones(hq.shape[0], device=hq.device) if q is None else (q / q.mean().clamp_min(1e-3)).clamp(0.1, 3)
        x = hq * 2 - 1
        with self.amp.autocast():
            z = m.encode(x)[0]
            q_u, loss_u, _ = m.quantize(z)
            q_h, loss_h, _ = m.quantize_hq(z - q_u.detach())
            rec = m.decode(torch.cat([q_u, q_h], dim=1), {}, 0.0).float()
            per_face = (rec - x).abs().mean(dim=(1, 2, 3)) + w["grad"] * sobel_l1(rec, x)
            losses = {"l1": w["l1"] * (weight * per_face).mean(),
                      "vq": w["vq"] * (loss_u + loss_h * weight.mean())}
            if w["lq_l1"] > 0:
                y = lq * 2 - 1
                q_lq, loss_lq, _ = m.quantize(m.encode(y)[0])
                rec_lq = m.decode(torch.cat([q_lq, torch.zeros_like(q_lq)], dim=1), {}, 0.0).float()
                losses["lq_l1"] = w["lq_l1"] * F.l1_loss(rec_lq, y)
                losses["vq"] = losses["vq"] + w["vq"] * loss_lq
        losses["total"] = sum(losses.values())
        if q is not None:
            losses["hq_quality"] = q.mean().detach()
        return losses

    def export(self):
        if self.labels is not None:
            self.labels.save()
        return [self.model.save(self.stage_file(CODEBOOK_FILE)), self.model.save(self.stage_file(IQPFR_FILE))]


# ----------------------------------------------------------------------------------------------- 2
class LookupStage(Stage):
    name = "lookup"
    probe_kwargs = {"fidelity": 0.5}

    def __init__(self, cfg, settings, device, out_dir):
        super().__init__(cfg, settings, device, out_dir)
        self.base = settings.get("base")
        self.w = {"ce": 1.0, "feat": 1.0, "fuse_l1": 1.0, **settings.get("weights", {})}
        if self.base:
            self._init_community()
        else:
            src = Path(settings.get("init") or self.stage_file(CODEBOOK_FILE))
            legacy = self.stage_file(IQPFR_FILE)
            if not src.is_file() and legacy.is_file() and not (self.out_dir / "lookup" / "last.safetensors").is_file():
                import shutil  # runs exported before vqgan.safetensors existed
                shutil.copyfile(legacy, src)
            self.model = load_iqpfr(src, device)
            self.teacher = copy.deepcopy(self.model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.params = stage_parameters(self.model, "lookup")
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.params:
                p.requires_grad_(True)
        self.opt = self.adam(self.params)

    def _init_community(self):
        """Fine-tune only the quality conditioning of a frozen CodeFormer-family checkpoint."""
        from ...models.arch.quality_condition import QualityCondition
        from ...models.restorers import load_restorer
        loaded = load_restorer(self.base)
        cb = loaded.codebook
        if cb is None or not loaded.arch.conditionable:
            raise FaceRefineError(f"{self.base} is {loaded.architecture}: conditioning fine-tuning needs a "
                                  f"CodeFormer checkpoint (it has the lookup Transformer)")
        if cb.quality_condition is None:
            cb.quality_condition = QualityCondition(cb.dim_embd, cb.n_layers,
                                                    hidden=int(self.settings.get("quality_hidden", 64)))
        self.model = cb.to(self.device)
        self.teacher = self.model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.params = list(cb.quality_condition.parameters())
        for p in self.params:
            p.requires_grad_(True)

    def modules(self):
        return {"condition": self.model.quality_condition} if self.base else {"model": self.model}

    def optimizers(self):
        return {"lookup": self.opt}

    def step(self, hq, lq, step, indices=None):
        self.model.train()
        losses = self.compute(hq, lq, indices)
        self.backward(losses["total"], self.opt, self.params)
        return {k: v.detach() for k, v in losses.items()}

    def compute(self, hq, lq, indices=None, fidelity=None):
        m, w = self.model, self.w
        q = self.quality_of(hq, indices)
        if q is None:
            q = torch.ones(hq.shape[0], device=hq.device)
        x, y = hq * 2 - 1, lq * 2 - 1
        size = int(getattr(m, "img_size", x.shape[-1]))
        if x.shape[-1] != size:  # a community model runs at its own size (CodeFormer: 512)
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
            y = F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
        with torch.no_grad():
            z_hq = self.teacher.encode(x)[0]
            if self.base:  # the HQ face's nearest codes in CodeFormer's codebook
                book = self.teacher.codebooks[0].float()
                flat = z_hq.flatten(2).transpose(1, 2).float()
                target = torch.cdist(flat, book.unsqueeze(0).expand(flat.shape[0], -1, -1)).argmin(-1)
            else:
                *_, target = quantize_dual(self.teacher, z_hq)
        with self.amp.autocast():
            lq_feat, skips = m.encode(y)
            logits = m.logits(lq_feat, m.film(q)).float()
            losses = {"ce": w["ce"] * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))}
            if not self.base:
                losses["feat"] = w["feat"] * F.mse_loss(lq_feat.float(), z_hq.float())
                fidelity = float(torch.rand(1)) if fidelity is None else fidelity
                if w["fuse_l1"] > 0 and m.config.connect_list:
                    with torch.no_grad():
                        quantized = m.finish_quantize(m.code_features(logits.argmax(-1)), lq_feat)
                    out = m.decode(quantized, skips, fidelity).float()
                    losses["fuse_l1"] = w["fuse_l1"] * F.l1_loss(out, x)
        losses["total"] = sum(losses.values())
        with torch.no_grad():
            losses["code_acc"] = (logits.argmax(-1) == target).float().mean()
        return losses

    def export(self):
        if self.labels is not None:
            self.labels.save()
        if self.base:
            return [self.model.quality_condition.save(self.stage_file(CONDITION_FILE))]
        return [self.model.save(self.stage_file(IQPFR_FILE))]


# ----------------------------------------------------------------------------------------------- 3
class PriorStage(Stage):
    name = "prior"

    def __init__(self, cfg, settings, device, out_dir):
        super().__init__(cfg, settings, device, out_dir)
        from ...models.arch.latent_prior import LatentPriorConfig, LatentScoreModel
        self.restorer = load_iqpfr(Path(settings.get("restorer") or self.stage_file(IQPFR_FILE)), device).eval()
        for p in self.restorer.parameters():
            p.requires_grad_(False)
        c = self.restorer.config
        prior_cfg = {"latent_channels": 2 * c.emb_dim, "cond_channels": c.emb_dim, "latent_size": c.latent_size,
                     "hidden": 128, "depth": 3, "heads": 4, "restorer_arch": "IQPFR", **cfg.get("prior", {})}
        self.model = LatentScoreModel(LatentPriorConfig(**prior_cfg)).to(device)
        self.opt = self.adam(self.model.parameters())
        self.generator = torch.Generator().manual_seed(int(settings["seed"]) + 7)
        self.stats_fitted = False

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"prior": self.opt}

    def on_start(self, step):
        self.stats_fitted = step > 0  # statistics are buffers: restored from the checkpoint

    @torch.no_grad()
    def latents(self, hq, lq):
        """Clean latent = the HQ face's quantised dual-branch latent (what the decoder consumes);
        degraded latent = the LQ encoder output (what the lookup sees)."""
        m = self.restorer
        z_hq = m.encode(hq * 2 - 1)[0]
        q_u, q_h, *_ = quantize_dual(m, z_hq)
        return torch.cat([q_u, q_h], dim=1), m.encode(lq * 2 - 1)[0]

    def step(self, hq, lq, step, indices=None):
        from ..refine_training import score_matching_step
        clean, cond = self.latents(hq, lq)
        if not self.stats_fitted:
            self.model.fit_statistics(clean, cond)
            self.stats_fitted = True
        with self.amp.autocast():
            loss = score_matching_step(self.model, self.opt, clean, cond,
                                       cond_dropout=float(self.settings.get("cond_dropout", 0.1)),
                                       generator=self.generator)
        return {"dsm": torch.tensor(loss)}

    def compute(self, hq, lq, indices=None):
        from ..refine_training import score_matching_step
        clean, cond = self.latents(hq, lq)
        if not self.stats_fitted:
            self.model.fit_statistics(clean, cond)
            self.stats_fitted = True
        gen = torch.Generator().manual_seed(1234)
        return {"total": torch.tensor(score_matching_step(self.model, None, clean, cond, generator=gen))}

    def export(self):
        from ...models.arch.latent_prior import save_latent_prior
        return [save_latent_prior(self.model, self.stage_file(PRIOR_FILE))]


# ----------------------------------------------------------------------------------------------- 4
class _HighPass(torch.nn.Module):
    def forward(self, x):
        return (x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)) * 4


def tiny_embedding_net() -> torch.nn.Module:
    """A small random [N,3,112,112] -> [N,512] network standing in for ArcFace in CPU smoke tests.
    It looks at high frequencies (like a recognition network, it is not blur-invariant)."""
    from torch import nn
    return nn.Sequential(_HighPass(), nn.Conv2d(3, 16, 4, 4), nn.SiLU(), nn.Conv2d(16, 32, 4, 4), nn.SiLU(),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 512))


class IdentityStage(Stage):
    name = "identity"

    def __init__(self, cfg, settings, device, out_dir):
        super().__init__(cfg, settings, device, out_dir)
        from ...models.arch.identity import (ArcFaceEmbedder, IdentityModel, IdentityRecoveryNetwork, LatentMask,
                                             RecoveryConfig, load_arcface)
        self.restorer = load_iqpfr(Path(settings.get("restorer") or self.stage_file(IQPFR_FILE)), device).eval()
        for p in self.restorer.parameters():
            p.requires_grad_(False)
        c = self.restorer.config
        arc = settings.get("arcface", "arcface")
        if arc in ("random", "tiny-random"):  # smoke tests only: random-initialised judges
            torch.manual_seed(int(settings["seed"]))
            embedder = ArcFaceEmbedder(tiny_embedding_net() if arc == "tiny-random" else None)
        else:
            embedder = load_arcface(arc, device)
        for p in embedder.parameters():
            p.requires_grad_(False)
        rc = RecoveryConfig(cond_channels=c.emb_dim, latent_size=c.latent_size,
                            hidden=int(settings.get("hidden", 256)))
        self.id_model = IdentityModel(embedder, IdentityRecoveryNetwork(rc), LatentMask(c.latent_size),
                                      name=str(arc)).to(device)
        self.params = list(self.id_model.recovery.parameters()) + list(self.id_model.mask.parameters())
        self.opt = self.adam(self.params)

    def modules(self):
        return {"recovery": self.id_model.recovery, "mask": self.id_model.mask}

    def optimizers(self):
        return {"identity": self.opt}

    def step(self, hq, lq, step, indices=None):
        from ..refine_training import identity_recovery_step
        m = self.restorer
        with torch.no_grad():
            lq_feat, _ = m.encode(lq * 2 - 1)
            quality = torch.ones(lq.shape[0], device=lq.device)
            logits = m.logits(lq_feat, m.film(quality))
            restored = m.finish_quantize(m.code_features(logits.argmax(-1)), lq_feat)

        def decode(z):
            return ((m.decode(z, {}, 0.0) + 1) / 2).clamp(0, 1)

        if self.settings.get("mask_every", 1) and step % int(self.settings.get("mask_every", 1)) == 0:
            losses = identity_recovery_step(self.id_model, self.opt, lq, hq, lq_feat, restored_latent=restored,
                                            decode=decode, mask_step=float(self.settings.get("mask_step", 1.0)))
        else:
            losses = identity_recovery_step(self.id_model, self.opt, lq, hq, lq_feat)
        return {k: torch.tensor(v) for k, v in losses.items()}

    def compute(self, hq, lq, indices=None):
        from ..refine_training import identity_recovery_step
        lq_feat, _ = self.restorer.encode(lq * 2 - 1)
        return {"total": torch.tensor(identity_recovery_step(self.id_model, None, lq, hq, lq_feat)["loss"])}

    def export(self):
        from ...models.arch.identity import save_identity_recovery
        return [save_identity_recovery(self.id_model, self.stage_file(IDENTITY_FILE))]


STAGES = {"vqgan": VQGANStage, "lookup": LookupStage, "prior": PriorStage, "identity": IdentityStage}
