"""Block lesions (odenet.analysis.lesion): known answers on a scalar linear untied stack, where every lesion's
output and every relative update is a product / ratio computed by hand, and the evenness summaries."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import odenet
from odenet.analysis import (
    evenness,
    lesion_accuracy,
    lesioned_forward,
    random_lesions,
    relative_updates,
    single_lesions,
)
from odenet.fields import DepthIndexedField


class Scale(nn.Module):
    """``F(t, x) = a x``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.a * x


class Model(nn.Module):
    """A block and a head ``logits = [x, 1]``: class 0 exactly when the block's output exceeds 1."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def head(self, x: Tensor) -> Tensor:
        return torch.cat([x, torch.ones_like(x)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x))


A = [1.0, 0.0, -0.5, 2.0]
X0 = torch.tensor([[0.5], [1.25], [2.0], [4.0], [5.0]], dtype=torch.float64)  # the block's inputs v


def _stack(a=A, h=1.0, shortcut=True) -> odenet.ResidualStack:
    """Untied Euler stack ``x_{k+1} = (1 + h a_k) x_k`` (plain: ``a_k x_k``), ``T = h N``."""
    it = iter(a)
    T = h * len(a)
    field = DepthIndexedField(lambda: Scale(next(it)), len(a), T)
    return odenet.ResidualStack(field, steps=len(a), T=T, shortcut=shortcut)


def _factors(a=A, h=1.0) -> list[float]:
    return [1 + h * ak for ak in a]  # 2, 1, 0.5, 3 at h = 1


def test_lesioned_forward_is_the_product_of_the_kept_factors():
    model = Model(_stack())
    f = _factors()
    for deleted in [(), (0,), (2,), (1, 3), (0, 1, 2, 3), [3, 0]]:
        want = X0[:, 0] * math.prod(fk for k, fk in enumerate(f) if k not in set(deleted))
        got = lesioned_forward(model, X0, deleted)[:, 0]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(lesioned_forward(model, X0), model(X0))


def test_single_lesion_accuracy_by_hand():
    # x_N = v * prod(kept factors); the head says class 0 iff x_N > 1. Intact: x_N = 3v > 1 for every v.
    model = Model(_stack())
    y = torch.zeros(5, dtype=torch.long)
    assert lesion_accuracy(model, X0, y) == 1.0
    # deleting block k leaves 3 / f_k = 1.5, 3, 6, 1: only v = 0.5 falls to 0.75 (k = 0) and 0.5 (k = 3)
    acc = single_lesions(model, X0, y)
    assert acc.dtype == torch.float64 and acc.shape == (4,)
    torch.testing.assert_close(acc, torch.tensor([4 / 5, 1.0, 1.0, 4 / 5], dtype=torch.float64))
    for k in range(4):
        assert lesion_accuracy(model, X0, y, [k]) == pytest.approx(float(acc[k]))


def test_single_lesions_with_mixed_labels():
    # inputs v / 3: the intact x_N = v, so v = 0.4 is class 1 and the rest class 0
    v = torch.tensor([[0.4], [1.25], [2.5], [4.0], [5.0]], dtype=torch.float64)
    model = Model(_stack())
    y = torch.tensor([1, 0, 0, 0, 0])
    assert lesion_accuracy(model, v / 3, y) == 1.0
    # deleting block k: x_N = v / f_k. k = 0: v / 2 = .2, .625, 1.25, 2, 2.5 -> one wrong (1.25 -> .625);
    # k = 1: v; k = 2: 2v = .8, 2.5, ... all right; k = 3: v / 3 = .13, .42, .83, 1.33, 1.67 -> two wrong
    torch.testing.assert_close(single_lesions(model, v / 3, y),
                               torch.tensor([0.8, 1.0, 1.0, 0.6], dtype=torch.float64))


def test_plain_lesion_is_the_identity_step():
    model = Model(_stack(a=[2.0, 0.5, 4.0], shortcut=False))  # x_{k+1} = a_k x_k
    torch.testing.assert_close(lesioned_forward(model, X0, [1])[:, 0], X0[:, 0] * 8.0, rtol=1e-12, atol=0)
    torch.testing.assert_close(lesioned_forward(model, X0, [0, 2])[:, 0], X0[:, 0] * 0.5, rtol=1e-12, atol=0)


def test_relative_updates_are_h_times_a():
    for h in (1.0, 0.25):
        model = Model(_stack(h=h))
        rel = relative_updates(model, X0)  # |x_{k+1} - x_k| / |x_k| = |h a_k| for every sample
        torch.testing.assert_close(rel, torch.tensor([abs(h * a) for a in A], dtype=torch.float64))
        assert relative_updates(model, X0, reduction="none").shape == (4, 5)
    plain = Model(_stack(a=[2.0, 0.5], shortcut=False))  # |a x - x| / |x| = |a - 1|
    torch.testing.assert_close(relative_updates(plain, X0), torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_random_lesions_match_the_deleted_sets():
    model = Model(_stack())
    y = torch.zeros(5, dtype=torch.long)
    out = random_lesions(model, X0, y, ks=[0, 1, 4], draws=6, seed=3)
    assert out.shape == (3, 6)
    assert bool((out[0] == 1.0).all())  # k = 0: the intact model
    # k = 4: every block deleted, x_N = v: class 0 iff v > 1 -> 4 of 5
    assert bool((out[2] == 0.8).all())
    # k = 1: each draw is one of the single lesions (accuracies 0.8, 1, 1, 0.8)
    assert set(out[1].tolist()) <= {0.8, 1.0}
    torch.testing.assert_close(out, random_lesions(model, X0, y, ks=[0, 1, 4], draws=6, seed=3))
    with pytest.raises(ValueError, match="ks must be"):
        random_lesions(model, X0, y, ks=[5])


def test_evenness_known_answers():
    e = evenness([0.3] * 7)
    assert e.entropy == pytest.approx(1.0) and e.cv == pytest.approx(0.0, abs=1e-15) and e.min_share == pytest.approx(1)
    e = evenness([1.0, 1.0, 2.0])  # shares 1/4, 1/4, 1/2
    h = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert e.entropy == pytest.approx(h / math.log(3))
    assert e.cv == pytest.approx(math.sqrt(2 / 9) / (4 / 3))
    assert e.min_share == pytest.approx(0.75)
    e = evenness([0.0, 0.0, 5.0])  # one block does all the work
    assert e.entropy == pytest.approx(0.0, abs=1e-15) and e.min_share == 0.0 and e.cv == pytest.approx(math.sqrt(2))
    assert evenness([2.0]).entropy == 1.0
    with pytest.raises(ValueError):
        evenness([0.0, 0.0])
    with pytest.raises(ValueError):
        evenness([1.0, -1.0])


def test_identical_blocks_are_exactly_even():
    a = [0.3] * 8
    rel = relative_updates(Model(_stack(a=a, h=1 / 8)), X0)
    e = evenness(rel)
    assert e.entropy == pytest.approx(1.0, abs=1e-12) and e.cv == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs():
    model = Model(_stack())
    with pytest.raises(ValueError, match="out of range"):
        lesioned_forward(model, X0, [4])
    with pytest.raises(TypeError):
        lesioned_forward(model, X0, [1.0])
    with pytest.raises(ValueError, match="class labels"):
        single_lesions(model, X0, torch.zeros(5))
    ode = Model(odenet.ODEBlock(Scale(1.0), solver="dopri5"))
    with pytest.raises(ValueError, match="ResidualStack"):
        relative_updates(ode, X0)
