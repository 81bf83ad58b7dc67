"""Report section and plot for the ``nested_growth`` experiment: does a grown net start where the small one was?

Each run's ``metrics.json["train"]["growth"]`` (``odenet.runner.growth``) holds the training loss on the whole
training set just before and just after the growth; ``train_loss`` the loss after the continued training. Runs are
grouped by case (block, tied or untied field, growth mode) and depth N before growth; the control of a case is the
same architecture's ``control`` run (measured at the same iteration, not grown). Both return ``None`` unless the
sweep holds grown runs with their controls.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from .chance import label_mark, withheld_section
from .collect import ReportContext
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .runs import Run, ok_runs
from .stats import mean_std

Case = tuple[str, str]  # (architecture, growth mode)
ARCHS = {"untied residual (h = 1)": 0, "untied plain": 1, "tied residual (ODE view)": 2}
MODE_ORDER = {"identity": 0, "default": 1, "refine": 2, "control": 3}


def _arch(run: Run) -> str:
    cfg = run.cfg
    if cfg.block.kind == "plain":
        return "untied plain"
    return "untied residual (h = 1)" if cfg.field.untied else "tied residual (ODE view)"


def _growth(run: Run) -> dict[str, Any]:
    return run.train.get("growth") or {}


def growth_groups(ctx: ReportContext) -> dict[Case, dict[int, list[Run]]] | None:
    """``(architecture, mode) -> N before growth -> runs`` of the ok runs with a growth record; None without a
    grown case and its control."""
    out: dict[Case, dict[int, list[Run]]] = {}
    for run in ok_runs(ctx):
        g = _growth(run)
        if not g or g.get("steps_before") is None:
            continue
        out.setdefault((_arch(run), g["mode"]), {}).setdefault(int(g["steps_before"]), []).append(run)
    grown = [c for c in out if c[1] != "control" and (c[0], "control") in out]
    if not grown:
        return None
    return dict(sorted(out.items(), key=lambda kv: (ARCHS.get(kv[0][0], 9), MODE_ORDER.get(kv[0][1], 9))))


def _values(runs: Sequence[Run], key: str) -> list[float]:
    return [float(_growth(r)[key]) for r in runs if _growth(r).get(key) is not None]


def _jumps(runs: Sequence[Run]) -> list[float]:
    return [float(_growth(r)["loss_after"]) - float(_growth(r)["loss_before"]) for r in runs]


def _finals(runs: Sequence[Run]) -> list[float]:
    return [float(r.train["train_loss"]) for r in runs if r.train.get("train_loss") is not None]


def _peaks(runs: Sequence[Run]) -> list[float]:
    """The largest logged training loss (``history.csv``: batch means over a log interval) after the growth."""
    out = []
    for r in runs:
        at = _growth(r).get("at")
        after = [float(h["loss"]) for h in r.history if h.get("loss") and at is not None and int(h["iteration"]) > at]
        if after:
            out.append(max(after))
    return out


def _test_acc(runs: Sequence[Run]) -> list[float]:
    return [float(r.train_eval()["accuracy"]) for r in runs if r.train_eval().get("accuracy") is not None]


def _by_seed(runs: Sequence[Run]) -> dict[Any, Run]:
    return {r.seed: r for r in runs}


def _paired(grown: Sequence[Run], control: Sequence[Run]) -> list[float]:
    """Final training loss, grown minus control, for each seed both have."""
    c = _by_seed(control)
    return [float(g.train["train_loss"]) - float(c[g.seed].train["train_loss"]) for g in grown if g.seed in c]


def _fmt(values: Sequence[float]) -> str:
    return mean_std(values, "{:.3g}")


@register_section("nested_growth")
def nested_growth_section(ctx: ReportContext) -> list[str] | Section | None:
    """Loss before / after the growth and after the continued training, against the not-grown control."""
    groups = growth_groups(ctx)
    if groups is None:
        return None
    header = ["case", "N → after", "loss before", "loss after", "jump (after − before)", "max abs. jump",
              "peak logged loss after", "final train loss", "final − control (paired)", "final ≤ before",
              "test acc."]
    body = []
    for (arch, mode), by_n in groups.items():
        control = groups.get((arch, "control"), {})
        for n, runs in sorted(by_n.items()):
            g0 = _growth(runs[0])
            jumps = _jumps(runs)
            not_worse = sum(f <= float(_growth(r)["loss_before"]) for r, f in zip(runs, _finals(runs)))
            paired = _paired(runs, control.get(n, [])) if mode != "control" else []
            body.append([
                f"{arch}, {mode}" + label_mark(ctx, [r.run_dir for r in runs]), f"{n} → {g0.get('steps_after')}",
                _fmt(_values(runs, "loss_before")), _fmt(_values(runs, "loss_after")), _fmt(jumps),
                f"{max(abs(j) for j in jumps):.3g}", _fmt(_peaks(runs)), _fmt(_finals(runs)),
                _fmt(paired) if paired else "–",
                f"{not_worse}/{len(runs)}", mean_std(_test_acc(runs), "{:.4f}"),
            ])
    seeds = max(len(v) for d in groups.values() for v in d.values())
    lines = [
        "## Nested growth",
        "",
        "Cross-entropy of the model on the whole training set just before the growth, just after it, and after the "
        "continued training (same iterations for every case); `control`: the same run measured at the same "
        f"iteration and not grown. `peak logged loss after`: the largest `history.csv` loss (batch means over a log "
        f"interval) after the growth. Mean ± sample std over up to {seeds} seeds; `final ≤ before`: seeds whose "
        "final loss is not above their loss at the growth.",
        "",
        *md_table(header, body),
        "",
    ]
    refine = {n: runs for (arch, mode), d in groups.items() if mode == "refine" for n, runs in d.items()}
    if refine:
        lines += [
            "### Grid refinement N → 2N at fixed T: the change against Euler's error",
            "",
            "Mean row norm over the analysis points of the block's output change, and of each grid's distance from "
            "the same field's flow (dopri5, float64, rtol 1e-8). Euler's error is C h + O(h²): halving h should give "
            "change ≈ error(N) / 2 ≈ error(2N).",
            "",
        ]
        rows = []
        for n, runs in sorted(refine.items()):
            ref = [_growth(r)["refinement"] for r in runs if _growth(r).get("refinement")]
            change = [x["change"] for x in ref]
            rows.append([
                f"{n} → {2 * n}" if ref else str(n), f"1/{n}", _fmt([x["scale"] for x in ref]), _fmt(change),
                _fmt([x["error_coarse"] for x in ref]), _fmt([x["error_fine"] for x in ref]),
                _fmt([x["change"] / x["error_coarse"] for x in ref]),
                _fmt([x["error_fine"] / x["error_coarse"] for x in ref]), _fmt(_jumps(runs)),
            ])
        lines += md_table(["N → 2N", "h", "‖output‖", "change", "error(N)", "error(2N)", "change / error(N)",
                           "error(2N) / error(N)", "loss jump"], rows)
        lines.append("")
    controls = [r.run_dir for (arch, mode), d in groups.items() if arch != "untied plain" for rs in d.values()
                for r in rs]
    return withheld_section(ctx, lines, "Nested growth: residual and refined nets", controls)


@register_plot("nested_growth.png")
def nested_growth_plot(ctx: ReportContext) -> Figure | None:
    """Training-loss curves around the growth (deepest N), one panel per architecture; the refinement's output
    change and Euler errors against h."""
    groups = growth_groups(ctx)
    if groups is None:
        return None
    archs = [a for a in ARCHS if any(c[0] == a for c in groups)]
    fig = Figure(figsize=(4.4 * (len(archs) + 1), 3.8), layout="constrained")
    axes = fig.subplots(1, len(archs) + 1)
    colors = {"identity": "tab:blue", "default": "tab:red", "refine": "tab:purple", "control": "black"}
    for ax, arch in zip(axes, archs):
        cases = {m: d for (a, m), d in groups.items() if a == arch}
        n = max(max(d) for d in cases.values())
        for mode, d in cases.items():
            for i, run in enumerate(d.get(n, [])):
                hist = [(int(r["iteration"]), float(r["loss"])) for r in run.history if r.get("loss")]
                if hist:
                    ax.plot(*zip(*hist), color=colors.get(mode), alpha=0.7, lw=1,
                            label=f"{mode}" if i == 0 else None)
            at = _values(d.get(n, []), "at")
            if at:
                ax.axvline(statistics.fmean(at), color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{arch}, N = {n}", fontsize=9)
        ax.set_xlabel("iteration (dotted: growth)")
        ax.set_ylabel("training loss (history.csv: batch means, log)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, title="one line per seed", title_fontsize=7)
    ax = axes[-1]
    refine = {n: [_growth(r).get("refinement") for r in runs] for (a, m), d in groups.items() if m == "refine"
              for n, runs in d.items()}
    for key, label, style in (("change", "output change N → 2N", "o-"), ("error_coarse", "error(N) vs flow", "s--"),
                              ("error_fine", "error(2N) vs flow", "^--")):
        ns = sorted(n for n, recs in refine.items() if any(recs))
        means = [statistics.fmean(x[key] for x in refine[n] if x) for n in ns]
        if ns:
            ax.plot([1 / n for n in ns], means, style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("h = 1/N before refinement (log₂)")
    ax.set_ylabel("mean |Δ block output| (log)")
    ax.set_title("Tied field: refinement vs Euler error", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("Nested growth: layers inserted (identity / default init) or the grid refined at the dotted line")
    return fig
