from __future__ import annotations

import numpy as np
import pytest

from ml.agreement import cohen_kappa


def test_cohen_kappa_of_the_textbook_two_rater_example():
    # Cohen (1960)-style worked example (also on Wikipedia): 50 items, the raters agree on
    # 20 + 15; p_o = 0.7, p_e = (25*30 + 25*20) / 50^2 = 0.5, so kappa = (0.7-0.5)/(1-0.5).
    cm = np.array([[20, 5], [10, 15]])
    p_o = (20 + 15) / 50
    p_e = (25 * 30 + 25 * 20) / 50**2
    assert cohen_kappa(cm) == pytest.approx((p_o - p_e) / (1 - p_e))


def test_cohen_kappa_is_one_for_full_agreement_and_zero_for_chance():
    assert cohen_kappa(np.diag([7, 3, 12])) == pytest.approx(1.0)
    # Independent raters: every cell is the product of its margins, so agreement is chance.
    rows, cols = np.array([10, 30]), np.array([20, 20])
    assert cohen_kappa(np.outer(rows, cols) / 40) == pytest.approx(0.0)
    cm = np.array([[4, 1, 0], [2, 6, 1], [0, 3, 9]])
    assert cohen_kappa(cm) == pytest.approx(cohen_kappa(cm.T))


def test_cohen_kappa_is_undefined_without_data_or_variety():
    assert np.isnan(cohen_kappa(np.zeros((3, 3))))
    assert np.isnan(cohen_kappa(np.array([[5, 0], [0, 0]])))
    with pytest.raises(ValueError, match="square"):
        cohen_kappa(np.zeros((2, 3)))
