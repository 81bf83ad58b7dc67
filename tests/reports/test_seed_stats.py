"""Seed aggregation and paired differences in the gradient_flow, loss_landscape, depth_smoothness and regularization
report sections, on fixture run folders whose answers are worked out by hand."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from odenet.reports import ReportContext
from odenet.reports import depth_smoothness as ds
from odenet.reports import gradient_flow as gf
from odenet.reports import loss_landscape as ll
from odenet.reports import regularization as reg
from odenet.reports.stats import paired, paired_text

SEEDS = (0, 1, 2)


def _run(root: Path, name: str, seed: int, train: dict[str, Any], analysis: dict[str, Any] | None = None,
         config: str = "", history: str = "", accuracy: float = 0.9, nfe: float | None = None,
         tight_nfe: float | None = None) -> None:
    d = root / name
    d.mkdir(parents=True)
    evals = [{"test_solver": train.get("solver", "euler"), "test_steps": train.get("steps"), "accuracy": accuracy,
              "loss": 0.1, "nfe": nfe, "status": "ok", "is_train_solver": True}]
    if tight_nfe is not None:
        evals.append({"test_solver": "dopri5", "test_steps": None, "rtol": 1e-6, "atol": 1e-8, "accuracy": accuracy,
                      "loss": 0.1, "nfe": tight_nfe, "status": "ok", "is_train_solver": False})
    metrics = {"status": "ok", "seed": seed, "overrides": {"seed": str(seed)}, "task": "classification",
               "baseline_accuracy": 0.1, "train": {"solver": "euler", "train_loss": 0.01, **train},
               "evaluations": evals, "analysis": analysis or {}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    if config:
        (d / "config.yaml").write_text(config)
    if history:
        (d / "history.csv").write_text(history)


def test_paired_differences_match_seeds_and_skip_missing_values():
    d = paired({0: 3.0, 1: 5.0, 2: None, 3: 1.0}, {0: 1.0, 1: 2.0, 2: 7.0, 3: float("nan")})
    assert d == [2.0, 3.0]  # seed 2: no value in a; seed 3: not finite in b
    assert paired_text(d, "{:+.1f}") == "+2.5 ± 0.7 (2 of 2 > 0)"
    assert paired_text([-1.0, 2.0, -3.0], "{:+.0f}") == "-1 ± 3 (1 of 3 > 0)"
    assert paired_text([]) == "–"


# ---------------------------------------------------------------------------------------------- gradient_flow

# seed -> (init g_0, init g_N, trained g_0, trained g_N)
NORMS = {
    ("residual", 8): {0: (1.0, 1.0, 10.0, 1.0), 1: (1.2, 1.0, 12.0, 1.0), 2: (1.4, 1.0, 14.0, 1.0)},
    ("residual", 64): {0: (1.0, 1.0, 11.0, 1.0), 1: (1.2, 1.0, 11.0, 1.0), 2: (1.4, 1.0, 20.0, 1.0)},
    ("ode", 8): {0: (1.0, 1.0, 9.0, 1.0), 1: (1.2, 1.0, 13.0, 1.0), 2: (1.4, 1.0, 11.0, 1.0)},
    ("plain", 8): {0: (1e-4, 0.5, 2.0, 0.5), 1: (2e-4, 0.5, 1.0, 0.5), 2: (0.0, 0.5, 1.0, 0.5)},
}


@pytest.fixture
def gradient_sweep(tmp_path: Path) -> ReportContext:
    for (block, n), seeds in NORMS.items():
        for seed, (i0, in_, t0, tn) in seeds.items():
            analysis = {"gradients_init": {"times": [0.0, 0.5, 1.0], "norms": [i0, (i0 + in_) / 2, in_]},
                        "gradients": {"times": [0.0, 0.5, 1.0], "norms": [t0, (t0 + tn) / 2, tn]}}
            _run(tmp_path, f"{block}{n}_{seed}", seed, {"block": block, "steps": n, "step_size": 1 / n}, analysis,
                 config="solver: {adjoint: true}\n" if block == "ode" else "")
    return ReportContext.load(tmp_path)


def test_gradient_flow_ratios_are_per_seed_then_averaged(gradient_sweep: ReportContext):
    text = "\n".join(gf.gradient_flow_section(gradient_sweep))
    # residual N=8 trained: ratios 10, 12, 14 -> 12 ± 2; init 1.0, 1.2, 1.4 -> 1.2 ± 0.2
    assert "| residual N=8 | 3 | 0.9000 ± 0.0000 | 1.2 ± 0.2 | 12 ± 2 | 1 ± 0 | 12 ± 2 |" in text
    # plain N=8 at init: 2e-4, 4e-4, 0 (underflow counts as 0) -> mean 2e-4, std 2e-4
    assert "| plain N=8 | 3 | 0.9000 ± 0.0000 | 0.0002 ± 0.0002 |" in text
    # ODE - residual at N=8 trained, per seed: -1, +1, -3 -> -1 ± 2, 1 of 3 positive
    assert "| ODE (adjoint) − residual, N=8 | trained | 3 | -1 ± 2 (1 of 3 > 0) |" in text
    assert "| ODE (adjoint) − residual, N=8 | init | 3 | +0 ± 0 (0 of 3 > 0) |" in text
    # residual N=64 - N=8 trained: +1, -1, +6 -> 2 ± 3.61
    assert "| residual: N=64 − N=8 | trained | 3 | +2 ± 3.61 (2 of 3 > 0) |" in text


def test_gradient_flow_counts_used_seeds_names_the_backprop_and_keeps_groups_apart(tmp_path: Path):
    norms = {0: (1.0, 1.0, 4.0, 1.0), 1: (1.0, 1.0, 6.0, 1.0), 2: (1.0, 0.0, 1.0, 0.0)}  # seed 2: g_N = 0, no ratio
    for block in ("residual", "ode"):
        for seed, (i0, in_, t0, tn) in norms.items():
            analysis = {"gradients_init": {"times": [0.0, 1.0], "norms": [i0, in_]},
                        "gradients": {"times": [0.0, 1.0], "norms": [t0, tn]}}
            _run(tmp_path, f"{block}_{seed}", seed, {"block": block, "steps": 4}, analysis,
                 config="solver: {adjoint: false}\n" if block == "ode" else "")
    # two adaptive residual groups (steps None) that must not overwrite each other into one pairing
    for rtol, ratio in ((1e-3, 2.0), (1e-6, 3.0)):
        for seed in SEEDS:
            analysis = {"gradients": {"times": [0.0, 1.0], "norms": [ratio, 1.0]}}
            _run(tmp_path, f"adaptive_{rtol}_{seed}", seed, {"block": "residual", "solver": "dopri5", "rtol": rtol},
                 analysis)
    text = "\n".join(gf.gradient_flow_section(ReportContext.load(tmp_path)))
    assert "| residual N=4 | 2 | 0.9000 ± 0.0000 | 1 ± 0 | 3.67 ± 2.52 | 0.667 ± 0.577 | 5 ± 1.41 |" in text
    assert "| ODE − residual, N=4 | trained | 2 | +0 ± 0 (0 of 2 > 0) |" in text  # plain backprop: no "(adjoint)"
    assert "(adjoint)" not in text and "N=None" not in text
    assert "| residual dopri5 rtol=0.001 | 3 |" in text and "| residual dopri5 rtol=1e-06 | 3 |" in text


# ---------------------------------------------------------------------------------------------- loss_landscape

TOPS = {("plain", 4): (200.0, 300.0, 100.0), ("residual", 4): (10.0, 20.0, 30.0), ("residual", 64): (12.0, 15.0, 36.0)}


def test_loss_landscape_pairs_every_model_with_the_largest_step_residual_net(tmp_path: Path):
    for (block, n), tops in TOPS.items():
        for seed, top in zip(SEEDS, tops):
            sharp = {"top_eigenvalue": top, "trace": 2 * top, "trace_stderr": 1.0, "converged": True}
            _run(tmp_path, f"{block}{n}_{seed}", seed, {"block": block, "steps": n}, {"sharpness": sharp})
    text = "\n".join(ll.loss_landscape_section(ReportContext.load(tmp_path)))
    assert "Paired by seed against residual N=4" in text
    # plain N=4 - residual N=4: 190, 280, 70 -> mean 180, std 105.36; ratio 20, 15, 3.33 -> 12.8 ± 8.55
    assert "| plain N=4 | 3 | +180 ± 105.4 (3 of 3 > 0) | 12.8 ± 8.55 | +360 ± 210.7 (3 of 3 > 0) |" in text
    # residual N=64 - N=4: +2, -5, +6 -> 1 ± 5.568: smaller steps sharper on 2 of 3 seeds only
    assert "| residual N=64 | 3 | +1 ± 5.568 (2 of 3 > 0) |" in text
    assert "| residual N=4 | 3 |" in text and "| residual N=4 | 3 | +" not in text  # the reference is not paired


# ---------------------------------------------------------------------------------------------- depth_smoothness


def _depth_config(tied: bool) -> str:
    return ("data: {name: tanh_ode, dim: 2}\nfield: {kind: mlp, untied: true, tied_init: %s}\n"
            "model: {head: identity}\n" % ("true" if tied else "false"))


def test_depth_smoothness_fits_a_slope_per_seed(tmp_path: Path):
    # tied init: max = c_s / L (slope -1 on every seed); i.i.d. init: max = c_s * L^(0.1 s) (slopes 0, 0.1, 0.2)
    for tied in (True, False):
        for seed in SEEDS:
            for n in (4, 16, 64):
                top = (seed + 1) / n if tied else (seed + 1) * n ** (0.1 * seed)
                depth = {"layers": n, "max": top, "rss": top * math.sqrt(n)}
                _run(tmp_path, f"{tied}_{seed}_{n}", seed, {"block": "residual", "steps": n}, {"depth": depth},
                     config=_depth_config(tied))
    ctx = ReportContext.load(tmp_path)
    text = "\n".join(ds.depth_section(ctx))
    tied, iid = "mlp field on tanh_ode (tied init)", "mlp field on tanh_ode (i.i.d. init)"
    assert f"Log-log slope in L ({tied}): max increment -1.000 ± 0.000 over 3 seed(s) (-1.000, -1.000, -1.000)" in text
    assert f"Log-log slope in L ({iid}): max increment 0.100 ± 0.100 over 3 seed(s) (0.000, 0.100, 0.200)" in text
    assert "RSS -0.500 ± 0.000" in text  # max * sqrt(L) on the tied task
    # the L = 4 row of the tied task: 1/4, 2/4, 3/4 -> 0.5 ± 0.25
    assert "| 4 | 3 | 0.5 ± 0.25 |" in text
    # tied - i.i.d. slope per seed: -1, -1.1, -1.2 -> -1.1 ± 0.1
    assert f"| {tied} | -1.100 ± 0.100 (0 of 3 > 0) | 3 |" in text
    by = ds._depth_data(ctx)
    assert ds.seed_slopes(by[iid], "max") == pytest.approx({0: 0.0, 1: 0.1, 2: 0.2})


def test_depth_smoothness_pairs_like_tasks_over_common_depths(tmp_path: Path):
    # a linear field on other data with tied init has no i.i.d. partner: it is not paired against the mlp task
    linear = "data: {name: sander, dim: 2}\nfield: {kind: linear, untied: true, tied_init: true}\n"
    for name, config, slope in (("tied", _depth_config(True), -1.0), ("iid", _depth_config(False), 0.0),
                                ("linear", linear, -0.5)):
        for seed in SEEDS:
            for n in (4, 16, 64) if seed else (4, 16, 64, 256):  # seed 0 also has L = 256, off the common depths
                top = n ** slope * (1.0 if n < 256 else 100.0)  # its L = 256 value would bend seed 0's fit
                _run(tmp_path, f"{name}_{seed}_{n}", seed, {"block": "residual", "steps": n},
                     {"depth": {"layers": n, "max": top, "rss": top}}, config=config)
    ctx = ReportContext.load(tmp_path)
    by = ds._depth_data(ctx)
    assert ds.seed_slopes(by["mlp field on tanh_ode (tied init)"], "max") == pytest.approx({0: -1.0, 1: -1.0, 2: -1.0})
    text = "\n".join(ds.depth_section(ctx))
    assert "| mlp field on tanh_ode (tied init) | -1.000 ± 0.000 (0 of 3 > 0) | 3 |" in text
    assert "| linear field on sander" not in text


# ---------------------------------------------------------------------------------------------- regularization


def _history(nfe: list[int], seconds: float) -> str:
    rows = [f"{10 * (i + 1)},{v},0,0.5,{seconds if i == len(nfe) - 1 else 1.0}" for i, v in enumerate(nfe)]
    return "iteration,nfe_forward,nfe_backward,loss,seconds\n" + "\n".join(rows) + "\n"


def test_penalty_pairs_subtract_the_same_seed_unpenalised_model(tmp_path: Path):
    # seed -> (test NFE, accuracy, NFE per iteration, train s), unpenalised and penalised
    plain = {0: (26, 0.95, [20, 26], 19.0), 1: (32, 0.96, [22, 30], 21.0), 2: (26, 0.94, [24, 28], 20.0)}
    pen = {0: (14, 0.97, [20, 20], 26.0), 1: (14, 0.95, [20, 20], 27.0), 2: (20, 0.96, [20, 20], 24.0)}
    for name, table, weight in (("none", plain, 0.0), ("pen", pen, 0.01)):
        config = ("block: {kind: ode}\nsolver: {name: dopri5}\ndata: {name: digits}\n"
                  f"regularization: {{kinetic: {weight}, jacobian: {weight}}}\n")
        for seed, (nfe, acc, hist, secs) in table.items():
            _run(tmp_path, f"{name}_{seed}", seed, {"block": "ode", "solver": "dopri5", "rtol": 1e-3}, None,
                 config=config, history=_history(hist, secs), accuracy=acc, nfe=nfe, tight_nfe=3 * nfe)
    text = "\n".join(reg.penalty_pairs_section(ReportContext.load(tmp_path)))
    assert "### digits: NODE (dopri5), kinetic 0.01, jacobian 0.01 − NODE (dopri5)" in text
    # test NFE: -12, -18, -6 -> -12 ± 6; accuracy +0.02, -0.01, +0.02 -> +0.01 ± 0.0173
    assert "| test NFE | 3 | -12.0 ± 6.0 (0 of 3 > 0) |" in text
    acc = [0.02, -0.01, 0.02]
    assert f"| test acc. | 3 | {statistics.fmean(acc):+.4f} ± {statistics.stdev(acc):.4f} (2 of 3 > 0) |" in text
    assert "| NFE at the tight solver | 3 | -36.0 ± 18.0 (0 of 3 > 0) |" in text
    # NFE per iteration (mean of the log): 23, 26, 26 vs 20 -> -3, -6, -6 -> -5 ± 1.7
    assert "| NFE fwd per iteration: mean | 3 | -5.0 ± 1.7 (0 of 3 > 0) |" in text
    assert "| train s | 3 | +5.7 ± 1.5 (3 of 3 > 0) |" in text
    # a sweep of penalised models alone (no control) has no paired section
    for seed in SEEDS:
        for f in (tmp_path / f"none_{seed}").iterdir():
            f.unlink()
        (tmp_path / f"none_{seed}").rmdir()
    assert reg.penalty_pairs_section(ReportContext.load(tmp_path)) is None
