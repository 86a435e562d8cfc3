"""neurounlearn: unlearn site, scanner and other confounds from deep models of brain MRI.

The public pieces, importable from here::

    from neurounlearn import (UnlearningModel, MLPEncoder, CompactCNN3D, PaperCNN3D, SFCN3D,
                              GradientReversal, confusion_loss, squared_correlation,
                              simulate_cohort, simulate_table,
                              BaselineStrategy, IterativeStrategy, GRLStrategy,
                              LeakageAudit, ComBatArm, ConceptEraser, RunConfig, fit, evaluate,
                              compare, render_comparison, LeakageResult, ProbeResult, TaskResult)

They are imported on first use, so the command line starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neurounlearn.version import __version__

_EXPORTS = {
    "UnlearningModel": "neurounlearn.models.unlearning",
    "MLPEncoder": "neurounlearn.models.unlearning",
    "ConfoundHead": "neurounlearn.models.unlearning",
    "CompactCNN3D": "neurounlearn.models.encoders",
    "PaperCNN3D": "neurounlearn.models.encoders",
    "SFCN3D": "neurounlearn.models.encoders",
    "build_encoder": "neurounlearn.models.encoders",
    "simulate_cohort": "neurounlearn.data.simulate",
    "simulate_table": "neurounlearn.data.simulate_table",
    "GradientReversal": "neurounlearn.models.grl",
    "ganin_lambda": "neurounlearn.models.grl",
    "confusion_loss": "neurounlearn.losses",
    "adversary_loss": "neurounlearn.losses",
    "masked_regression_loss": "neurounlearn.losses",
    "masked_cross_entropy": "neurounlearn.losses",
    "squared_correlation": "neurounlearn.losses",
    "Strategy": "neurounlearn.training.strategies",
    "BaselineStrategy": "neurounlearn.training.strategies",
    "IterativeStrategy": "neurounlearn.training.strategies",
    "GRLStrategy": "neurounlearn.training.strategies",
    "UnlearningSystem": "neurounlearn.training.system",
    "LeakageAudit": "neurounlearn.evaluation.leakage",
    "ComBatArm": "neurounlearn.evaluation.combat",
    "ConceptEraser": "neurounlearn.erasure",
    "RunConfig": "neurounlearn.config",
    "InputError": "neurounlearn.errors",
    "fit": "neurounlearn.training.fit",
    "evaluate": "neurounlearn.evaluation.evaluate",
    "load_run": "neurounlearn.training.predict",
    "compare": "neurounlearn.evaluation.compare",
    "render_comparison": "neurounlearn.reporting.compare",
    "LeakageResult": "neurounlearn.results",
    "ProbeResult": "neurounlearn.results",
    "TaskResult": "neurounlearn.results",
}

__all__ = [
    "SFCN3D",
    "BaselineStrategy",
    "ComBatArm",
    "CompactCNN3D",
    "ConceptEraser",
    "ConfoundHead",
    "GRLStrategy",
    "GradientReversal",
    "InputError",
    "IterativeStrategy",
    "LeakageAudit",
    "LeakageResult",
    "MLPEncoder",
    "PaperCNN3D",
    "ProbeResult",
    "RunConfig",
    "Strategy",
    "TaskResult",
    "UnlearningModel",
    "UnlearningSystem",
    "__version__",
    "adversary_loss",
    "build_encoder",
    "compare",
    "confusion_loss",
    "evaluate",
    "fit",
    "ganin_lambda",
    "load_run",
    "masked_cross_entropy",
    "masked_regression_loss",
    "render_comparison",
    "simulate_cohort",
    "simulate_table",
    "squared_correlation",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neurounlearn' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from neurounlearn.config import RunConfig
    from neurounlearn.data.simulate import simulate_cohort
    from neurounlearn.data.simulate_table import simulate_table
    from neurounlearn.erasure import ConceptEraser
    from neurounlearn.errors import InputError
    from neurounlearn.evaluation.combat import ComBatArm
    from neurounlearn.evaluation.compare import compare
    from neurounlearn.evaluation.evaluate import evaluate
    from neurounlearn.evaluation.leakage import LeakageAudit
    from neurounlearn.losses import (
        adversary_loss,
        confusion_loss,
        masked_cross_entropy,
        masked_regression_loss,
        squared_correlation,
    )
    from neurounlearn.models.encoders import SFCN3D, CompactCNN3D, PaperCNN3D, build_encoder
    from neurounlearn.models.grl import GradientReversal, ganin_lambda
    from neurounlearn.models.unlearning import ConfoundHead, MLPEncoder, UnlearningModel
    from neurounlearn.reporting.compare import render_comparison
    from neurounlearn.results import LeakageResult, ProbeResult, TaskResult
    from neurounlearn.training.fit import fit
    from neurounlearn.training.predict import load_run
    from neurounlearn.training.strategies import (
        BaselineStrategy,
        GRLStrategy,
        IterativeStrategy,
        Strategy,
    )
    from neurounlearn.training.system import UnlearningSystem
