"""User options of the lookup step (the restorer and the IQPFR quality slider)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

NO_RESTORER = ("", "none")


@dataclass(frozen=True)
class LookupOptions:
    restorer: str = "none"                 # registry name, weights path, auto, or none (crop + paste only)
    quality: float = 1.0                   # IQPFR quality slider 0..1
    fidelity: float = 0.5                  # CodeFormer-style fidelity weight 0..1
    mode: str = "auto"                     # auto | trained | training-free | off (how the slider acts)
    quality_condition: Optional[str] = None  # IQPFR conditioning weights for a CodeFormer restorer
    critic: Optional[str] = None           # NR-IQA critic of training-free steering (default face-iqa)

    @property
    def wanted(self) -> bool:
        """False for ``restorer=none``: the pipeline then crops and pastes back only."""
        return str(self.restorer).strip().lower() not in NO_RESTORER
