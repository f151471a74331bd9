"""IQPFR dual-branch codebook model (our architecture; no public weights exist).

Built from the CodeFormer/VQGAN building blocks that spandrel_extra_arches ships (Encoder, Generator,
VectorQuantizer, TransformerSALayer, Fuse_sft_block); we call them, we do not copy them.

- **Universal codebook** ``quantize``: structure shared by faces of every quality (trained to reconstruct
  both HQ and LQ faces on its own).
- **HQ-specific codebook** ``quantize_hq``: quantises what the universal code misses on HQ faces
  (a residual code, trained on HQ faces only).
- The **decoder** consumes both: ``merge(cat[q_universal, q_hq])`` -> spandrel ``Generator``, with
  CodeFormer-style fidelity fusion (``Fuse_sft_block``) of encoder skips.
- The **lookup Transformer** predicts both code sets (tokens ``0..hw-1`` universal, ``hw..2hw-1`` HQ)
  and is FiLM-conditioned on the target NR-IQA score (models.arch.quality_condition).

Implements the codebook interface (models/codebook.py). Training (losses, stage parameters) is in lab/train/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import WrongArchitectureError
from .quality_condition import QualityCondition

FORMAT = "facerefine-iqpfr"


def spandrel_codeformer_blocks():
    """spandrel_extra_arches' CodeFormer module (building blocks live there): ``__arch`` from 0.2, ``arch`` in
    0.1.x (the version AUTOMATIC1111 1.10 pins)."""
    with quiet_dependency_warnings():
        try:
            return importlib.import_module("spandrel_extra_arches.architectures.CodeFormer.__arch.codeformer")
        except ModuleNotFoundError:
            return importlib.import_module("spandrel_extra_arches.architectures.CodeFormer.arch.codeformer")


@contextlib.contextmanager
def quiet_dependency_warnings():
    """Silence, while a dependency is imported, the warnings users cannot act on: spandrel_extra_arches'
    CodeFormer module uses ``@torch.jit.script`` at import, which recent torch flags as deprecated
    (FutureWarning) on every run. Only that message is filtered, only during the import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        yield


# Limits for configs read from files (the largest sensible face model is far inside them).
CONFIG_LIMITS = {
    "img_size": (16, 1024), "nf": (32, 256), "ch_mult": (1, 16), "res_blocks": (0, 8), "emb_dim": (1, 1024),
    "codebook_size": (2, 16384), "dim_embd": (8, 2048), "n_head": (1, 64), "n_layers": (0, 48),
    "quality_hidden": (1, 2048), "beta": (0.0, 10.0),
}
CH_MULT_MAX_LEVELS = 8
MAX_FILE_PARAMETERS = 1_000_000_000  # a config asking for more is refused (about 4 GB in float32)


@dataclass(frozen=True)
class IQPFRConfig:
    img_size: int = 256               # square input/output size
    nf: int = 32                      # base channels (multiples of 32: GroupNorm(32))
    ch_mult: tuple = (1, 2, 2, 4, 4)  # len-1 downsamplings: 256 -> 16x16 tokens
    res_blocks: int = 1
    emb_dim: int = 64                 # code vector width
    codebook_size: int = 512          # codes per branch (universal and HQ)
    dim_embd: int = 256               # Transformer width
    n_head: int = 8
    n_layers: int = 4
    connect_list: tuple = ("32", "64", "128")  # resolutions with fidelity fusion
    quality_hidden: int = 64
    beta: float = 0.25                # commitment cost

    @property
    def latent_size(self) -> int:
        return self.img_size // 2 ** (len(self.ch_mult) - 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str, file: str = "IQPFR config") -> "IQPFRConfig":
        """Parse and validate a stored config. Bad JSON, unknown keys, wrong types and values outside
        CONFIG_LIMITS raise WrongArchitectureError (the file is refused before any model is built)."""
        try:
            raw = json.loads(text)
        except (TypeError, ValueError) as err:
            raise WrongArchitectureError(f"{file}: the IQPFR config stored in the file is not valid JSON ({err})") from err
        if not isinstance(raw, dict):
            raise WrongArchitectureError(f"{file}: the IQPFR config must be a JSON object, got {type(raw).__name__}")
        known = {f.name: f for f in dataclasses.fields(IQPFRConfig)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise WrongArchitectureError(f"{file}: unknown IQPFR config key(s) {unknown[:5]}; "
                                         f"known keys: {sorted(known)}")
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        config = IQPFRConfig(**raw)
        config.validate(file)
        return config

    def validate(self, file: str = "IQPFR config") -> None:
        """Types and limits (CONFIG_LIMITS), so that a small file cannot ask for a huge model."""
        problems = []
        for key, (low, high) in CONFIG_LIMITS.items():
            value = getattr(self, key)
            items = value if key == "ch_mult" else (value,)
            if key == "ch_mult" and (not isinstance(value, tuple) or not 1 <= len(value) <= CH_MULT_MAX_LEVELS):
                problems.append(f"ch_mult must be a list of 1..{CH_MULT_MAX_LEVELS} integers, got {value!r}")
                continue
            for item in items:
                ok_type = isinstance(item, float) or isinstance(item, int) if key == "beta" else isinstance(item, int)
                if isinstance(item, bool) or not ok_type or not low <= item <= high:
                    problems.append(f"{key}={value!r} (allowed {low}..{high})")
                    break
        if not problems:
            if self.nf % 32:
                problems.append(f"nf={self.nf} must be a multiple of 32")
            if self.dim_embd % self.n_head:
                problems.append(f"dim_embd={self.dim_embd} must be divisible by n_head={self.n_head}")
            down = 2 ** (len(self.ch_mult) - 1)
            if self.img_size % down:
                problems.append(f"img_size={self.img_size} must be divisible by {down} (len(ch_mult)-1 halvings)")
            if not isinstance(self.connect_list, tuple) or not all(isinstance(c, str) for c in self.connect_list):
                problems.append(f"connect_list must be a list of resolution strings, got {self.connect_list!r}")
        if problems:
            raise WrongArchitectureError(f"{file}: IQPFR config out of range: " + "; ".join(problems))


class IQPFR(nn.Module):
    def __init__(self, config: IQPFRConfig = IQPFRConfig()):
        super().__init__()
        blocks = spandrel_codeformer_blocks()
        c = self.config = config
        ls = c.latent_size
        if c.nf % 32:
            raise ValueError("nf must be a multiple of 32 (GroupNorm with 32 groups)")
        self.encoder = blocks.Encoder(3, c.nf, c.emb_dim, list(c.ch_mult), c.res_blocks, c.img_size, [ls])
        self.quantize = blocks.VectorQuantizer(c.codebook_size, c.emb_dim, c.beta)
        self.quantize_hq = blocks.VectorQuantizer(c.codebook_size, c.emb_dim, c.beta)
        self.merge = nn.Conv2d(2 * c.emb_dim, c.emb_dim, 1)
        self.generator = blocks.Generator(c.nf, list(c.ch_mult), c.res_blocks, c.img_size, [ls], c.emb_dim)

        self.position_emb = nn.Parameter(torch.zeros(ls * ls, c.dim_embd))
        self.feat_emb = nn.Linear(c.emb_dim, c.dim_embd)
        self.ft_layers = nn.Sequential(*[blocks.TransformerSALayer(c.dim_embd, c.n_head, 2 * c.dim_embd, 0.0)
                                         for _ in range(c.n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(c.dim_embd), nn.Linear(c.dim_embd, c.codebook_size, bias=False))
        self.idx_pred_hq = nn.Sequential(nn.LayerNorm(c.dim_embd), nn.Linear(c.dim_embd, c.codebook_size, bias=False))
        self.quality_condition = QualityCondition(c.dim_embd, c.n_layers, hidden=c.quality_hidden)

        self.fuse_convs_dict = nn.ModuleDict()
        self.encoder_taps, self.generator_taps = self._fuse_points()
        for size in c.connect_list:
            ch = self._channels_at[size]
            self.fuse_convs_dict[size] = blocks.Fuse_sft_block(ch, ch)

    # --- structure -------------------------------------------------------------------------------
    def _fuse_points(self):
        """Encoder block index whose output is the skip at each resolution (last block before the
        downsample) and generator block index after which it is fused (first ResBlock at that size)."""
        blocks = spandrel_codeformer_blocks()
        c = self.config
        enc, gen, self._channels_at = {}, {}, {}
        res = c.img_size
        for i, b in enumerate(self.encoder.blocks):
            if isinstance(b, blocks.Downsample):
                enc[str(res)] = i - 1
                self._channels_at[str(res)] = b.conv.in_channels
                res //= 2
        res = c.latent_size
        seen_upsample = False
        for i, b in enumerate(self.generator.blocks):
            if isinstance(b, blocks.Upsample):
                res *= 2
                seen_upsample = True
            elif seen_upsample and isinstance(b, blocks.ResBlock) and str(res) not in gen:
                gen[str(res)] = i
        bad = [s for s in c.connect_list if s not in enc or s not in gen]
        if bad:
            raise ValueError(f"connect_list sizes {bad} are not decoder/encoder resolutions above the latent "
                             f"({sorted(enc, key=int)})")
        return ({enc[s]: s for s in c.connect_list}, {gen[s]: s for s in c.connect_list})

    @property
    def img_size(self) -> int:
        return self.config.img_size

    @property
    def latent_hw(self) -> int:
        return self.config.latent_size

    @property
    def codebooks(self) -> torch.Tensor:
        """[G=2, K, C]: universal and HQ codebooks."""
        return torch.stack([self.quantize.embedding.weight, self.quantize_hq.embedding.weight])

    # --- codebook interface (models/codebook.py) -------------------------------------------------
    def encode(self, x: torch.Tensor):
        skips = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            size = self.encoder_taps.get(i)
            if size is not None:
                skips[size] = x
        return x, skips

    def film(self, quality: torch.Tensor) -> torch.Tensor:
        return self.quality_condition(quality)

    def logits(self, lq_feat: torch.Tensor, film: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, 2*hw, K]: universal-token logits then HQ-token logits."""
        tokens = self.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))
        pos = self.position_emb.unsqueeze(1)
        for i, layer in enumerate(self.ft_layers):
            if film is not None:
                tokens = QualityCondition.modulate(tokens, film[i])
            tokens = layer(tokens, query_pos=pos)
        if film is not None:
            tokens = QualityCondition.modulate(tokens, film[-1])
        out = torch.cat([self.idx_pred_layer(tokens), self.idx_pred_hq(tokens)], dim=0)  # (2hw)BK
        return out.permute(1, 0, 2)

    def code_features(self, indices: torch.Tensor) -> torch.Tensor:
        """[N, 2*hw] indices -> [N, 2*hw, C] code vectors (first half universal, second half HQ)."""
        hw = indices.shape[1] // 2
        return torch.cat([F.embedding(indices[:, :hw], self.quantize.embedding.weight),
                          F.embedding(indices[:, hw:], self.quantize_hq.embedding.weight)], dim=1)

    def finish_quantize(self, raw: torch.Tensor, lq_feat: torch.Tensor) -> torch.Tensor:
        """[N, 2hw, C] -> quantized [N, 2C, h, w] (universal channels then HQ channels)."""
        n, two_hw, ch = raw.shape
        s = self.latent_hw
        u, h = raw[:, : two_hw // 2], raw[:, two_hw // 2:]
        return torch.cat([u, h], dim=2).view(n, s, s, 2 * ch).permute(0, 3, 1, 2)

    def with_quality(self, skips: Mapping[str, torch.Tensor], quality: torch.Tensor) -> Mapping[str, torch.Tensor]:
        return skips  # the decoder is not quality-conditioned

    def decode(self, quantized: torch.Tensor, skips: Mapping[str, torch.Tensor], fidelity: float = 0.5) -> torch.Tensor:
        x = self.merge(quantized)
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            size = self.generator_taps.get(i)
            if size is not None and fidelity > 0 and size in skips:
                x = self.fuse_convs_dict[size](skips[size], x, fidelity)
        return x

    def forward(self, x: torch.Tensor, fidelity: float = 0.5, quality: float | torch.Tensor = 1.0):
        """x in [-1,1] -> (image in [-1,1], logits)."""
        lq, skips = self.encode(x)
        q = torch.as_tensor(quality, dtype=torch.float32, device=x.device).expand(x.shape[0])
        logits = self.logits(lq, self.film(q))
        quantized = self.finish_quantize(self.code_features(logits.argmax(-1)), lq)
        return self.decode(quantized, skips, fidelity), logits

    # --- files ------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        from ..loading import save_safetensors
        return save_safetensors(self.state_dict(), path, metadata={"format": FORMAT, "config": self.config.to_json()})

    @staticmethod
    def is_state_dict(sd: Mapping) -> bool:
        return "quantize_hq.embedding.weight" in sd and "merge.weight" in sd and "idx_pred_hq.1.weight" in sd

    @classmethod
    def from_file(cls, path, sd: Optional[Mapping[str, torch.Tensor]] = None) -> "IQPFR":
        from ..loading import load_into, load_state_dict
        path = Path(path)
        sd = load_state_dict(path) if sd is None else sd
        if not cls.is_state_dict(sd):
            raise WrongArchitectureError(f"{path.name} is not an IQPFR checkpoint (no dual-branch codebook keys)")
        config = read_config(path)
        if config is None:
            raise WrongArchitectureError(
                f"{path.name} has IQPFR weights but no config metadata; save IQPFR models with IQPFR.save() "
                f"(safetensors with a 'config' entry)")
        # Build on the meta device first (no memory): the file's tensors must match the config's shapes
        # before the real model is allocated, so a small file cannot make us allocate a huge model.
        try:
            with torch.device("meta"):
                shell = cls(config)
        except (ValueError, TypeError, RuntimeError) as err:
            raise WrongArchitectureError(f"{path.name}: its IQPFR config cannot be built ({err})") from err
        n_params = sum(t.numel() for t in shell.state_dict().values())
        if n_params > MAX_FILE_PARAMETERS:
            raise WrongArchitectureError(
                f"{path.name}: its IQPFR config asks for {n_params / 1e6:.0f} M parameters "
                f"(more than {MAX_FILE_PARAMETERS / 1e6:.0f} M); refused")
        load_into(shell, sd, f"IQPFR {config}", path.name, check_only=True)
        del shell
        model = cls(config)
        load_into(model, sd, f"IQPFR {config}", path.name)
        return model


def read_config(path) -> Optional[IQPFRConfig]:
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WrongArchitectureError(f"{path.name}: cannot read its safetensors header ({err})") from err
    return IQPFRConfig.from_json(meta["config"], path.name) if "config" in meta else None
