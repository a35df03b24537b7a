"""The FLOP-floor formulas of bench/flop_floor.py, checked by hand."""

from __future__ import annotations

from bench.flop_floor import attended_pairs, matmul_flops_per_second, step_flops


def test_attended_pairs_by_hand():
    """P 3, responses of 2 and 1 tokens: prefix queries see 1 and 2 keys; the chosen queries 2 + 1 = 3 and 4 keys,
    the rejected query 3 keys: 1 + 2 + 3 + 4 + 3 = 13. A one-token prompt has no prefix: R 2 -> 1 + 2 = 3."""
    assert attended_pairs(3, (2, 1)) == 13
    assert attended_pairs(1, (2,)) == 3


def test_step_flops_by_hand():
    """3 * (2*10*3 + 2*5*2*2 + 4*2*1*6) = 3 * (60 + 40 + 48) = 444."""
    assert step_flops(10, 5, 2, 1, fed_tokens=3, response_tokens=2, attended=6) == 444


def test_matmul_rate_is_positive():
    assert matmul_flops_per_second(rows=64, inner=32, cols=16, repeats=2, seconds=0.01) > 0
