"""Agreement between two raters (a model and the people who verify it), from a confusion matrix.

NumPy only, no PyTorch: the portal's quality page uses it and never loads torch.
"""

from __future__ import annotations

import numpy as np


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa of a square confusion matrix: agreement beyond what chance would give.

    (p_o - p_e) / (1 - p_e), p_o the observed share on the diagonal, p_e the share expected
    from the row and column totals alone. NaN when it is undefined: no samples, or both raters
    always used one same class (p_e = 1).
    """
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a square confusion matrix is needed, not shape {cm.shape}")
    total = cm.sum()
    if total == 0:
        return float("nan")
    observed = np.trace(cm) / total
    expected = float((cm.sum(axis=1) * cm.sum(axis=0)).sum()) / total**2
    if expected == 1.0:
        return float("nan")
    return float((observed - expected) / (1.0 - expected))
