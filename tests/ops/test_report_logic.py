"""Pure logic of the weekly report."""

import pytest


@pytest.mark.parametrize("pnls, expected", [
    ([], 0.0),
    ([10, 5, 2], 0.0),
    # Running sums 10, 6, 3, 11, -9: the peak 11 falls to -9.
    ([10, -4, -3, 8, -20], 20.0),
    ([-5, -5, 3], 10.0),
])
def test_max_drawdown(report, pnls, expected):
    assert report.max_drawdown(pnls) == pytest.approx(expected)
