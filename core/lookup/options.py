"""Options of the lookup step: the restorer, the IQPFR quality slider and its training-free steering.

Torch-free: core/controls.py reads MODES here when the CLI starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..none import is_none

MODES = ("auto", "trained", "training-free", "off")   # how the quality slider acts
DEFAULT_CRITIC = "auto"   # core.score's default critic: face-iqa (issue 18)


@dataclass(frozen=True)
class SteerOptions:
    """The code search of training-free steering (core/lookup/steering.py)."""

    top_k: int = 8                 # each token may move to one of its top-k codes under the lookup logits
    rounds: int = 2                # gradient rounds
    max_fraction: float = 0.5      # share of the tokens changed at most (at strength 1)
    grid_factor: int = 4           # changed-token counts tried: 1, f, f^2, ... up to the budget


@dataclass(frozen=True)
class LookupOptions:
    restorer: str = "none"                 # registry name, weights path, auto, or none (crop + paste only)
    quality: float = 1.0                   # IQPFR quality slider 0..1
    fidelity: float = 0.5                  # CodeFormer-style fidelity weight 0..1
    mode: str = "auto"                     # one of MODES
    quality_condition: Optional[str] = None  # IQPFR conditioning weights for a CodeFormer restorer
    critic: Any = None                     # training-free steering's NR-IQA critic: a core.score name (default
    #                                        face-iqa), a metric, or a callable x [N,3,H,W] 0..1 -> [N]
    steer: SteerOptions = field(default_factory=SteerOptions)
    batch_size: int = 8                    # faces per forward (results equal one-at-a-time calls)
    exemplar_detail: float = 1.0           # exemplar detail into heavily blurred faces, times quality (0 = off;
    #                                        core/detail/exemplars.py)

    @property
    def wanted(self) -> bool:
        """False for ``restorer=none``: the pipeline then crops and pastes back only."""
        return not is_none(self.restorer)


__all__ = ["DEFAULT_CRITIC", "MODES", "LookupOptions", "SteerOptions"]
