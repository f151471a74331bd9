"""Tests import the tiny model factories as ``from tiny_models import ...``; they live in the lab."""
from facerefine.lab.tiny_models import (make_tiny_codeformer, make_tiny_gfpgan, make_tiny_iqpfr,  # noqa: F401
                                        make_tiny_quality_condition, make_tiny_restoreformer, tiny_iqpfr_config)
