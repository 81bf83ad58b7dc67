"""One training step of K members as a batched ensemble (``trainer.ensemble=K``) against K sequential steps.

Run from the repository root::

    python benchmarks/ensemble.py            # full run, under 20 s
    python benchmarks/ensemble.py --quick    # smoke run, a few seconds
    python benchmarks/ensemble.py --runs block=plain solver.steps=8   # whole runs, see below

``--runs OVERRIDES...`` instead trains the degradation experiment's config (``+experiment=degradation``, 1000
iterations) with those overrides as 3 separate runs (seeds 0, 1, 2) and as one ``trainer.ensemble=3`` ensemble,
in a temporary folder, and prints both wall times, each member's test accuracy beside its run's and whether the
trained ``model.pt`` files are bit-identical.

The members are built by the runner itself (``odenet.runner.ensemble.prepared_members``) from the digits model
(``conf/setup/digits_mlp.yaml``: 64 pixels -> 32 features -> residual stack of a 32-32-32 tanh MLP field ->
10 classes) with Euler N = 32, batch 128, Adam. A *sequential step* is what ``Trainer.fit`` does per member:
forward, loss, ``zero_grad``, backward, ``optimizer.step()``, for each of the K members in turn; an *ensemble
step* is ``Ensemble.losses`` (one forward of all members: by default the batched-weights model, ``baddbmm`` on
``(K, out, in)`` weights; also timed, the ``vmap`` fallback and, as ``trainer.compile=true`` trains it, the batched
forward and loss compiled as one graph with a fused Adam) and ``Ensemble.step`` (backward of the summed loss, one
Adam step on the stacked parameters). All contenders are timed interleaved in one process
(``benchmarks/_timing.py``) and reported as median ms per step; the ratio is ensemble / sequential (target
<= 0.35x for K = 8).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._timing import interleaved  # noqa: E402
from odenet.runner.accel import fused_adam  # noqa: E402
from odenet.runner.config import load_config  # noqa: E402
from odenet.runner.ensemble import Ensemble, SweepNaming, member_runs, prepared_members  # noqa: E402
from odenet.runner.loop import loss_function  # noqa: E402

TARGET = 0.35


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few rounds")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32, help="Euler steps N")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="+", metavar="OVERRIDE", help="time whole runs of the degradation config")
    args = parser.parse_args()
    if args.runs:
        whole_runs(args.runs)
        return
    k = args.members
    cfg = load_config(["+setup=digits_mlp", f"solver.steps={args.steps}", f"trainer.batch_size={args.batch}",
                       f"trainer.ensemble={k}", f"threads={args.threads}", "device=cpu"])
    with tempfile.TemporaryDirectory() as tmp, prepared_members(
            cfg, member_runs(cfg, Path(tmp) / "seed=0", ["seed=0"], SweepNaming(Path(tmp)))) as (jobs, rngs):
        ens, ens_vmap = Ensemble(jobs, rngs, compile=False), Ensemble(jobs, rngs, fast=False, compile=False)
        ens_c = Ensemble(jobs, rngs, compile=True)  # what trainer.compile=true trains: compiled, fused Adam
        ens_c.optimizer = fused_adam(ens_c.optimizer)
        assert ens.batched is not None and ens_vmap.batched is None and ens_c.compile
        loss_fn = loss_function(jobs[0].data.task)
        x, y = jobs[0].x_train, jobs[0].y_train
        idx = torch.stack([j.trainer.sampler.next() for j in jobs])  # each member's own first batch
        xb, yb = x[idx], y[idx]

        def sequential() -> None:
            for i, j in enumerate(jobs):
                loss = loss_fn(j.model(xb[i]), yb[i])
                j.trainer.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                j.trainer.optimizer.step()

        def ensemble() -> None:
            ens.step(ens.losses(xb, yb, loss_fn)[0])

        def ensemble_vmap() -> None:
            ens_vmap.step(ens_vmap.losses(xb, yb, loss_fn)[0])

        def ensemble_compiled() -> None:
            ens_c.step(ens_c.losses(xb, yb, loss_fn)[0])

        start = time.perf_counter()
        ensemble_compiled()  # the first call compiles
        compile_s = time.perf_counter() - start
        params = [p for j in jobs for p in j.model.parameters()] + [
            *ens.params.values(), *ens_vmap.params.values(), *ens_c.params.values()]
        budget = 2.0 if args.quick else 12.0
        (seq_s, ens_s, vmap_s, comp_s), rounds, paired = interleaved(
            [sequential, ensemble, ensemble_vmap, ensemble_compiled], params, budget, 3 if args.quick else 50,
            10_000, 5 if args.quick else 20)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s); K = {k}, "
          f"Euler N = {args.steps}, batch {args.batch}, digits MLP (hidden 32), Adam; {rounds} interleaved rounds")
    print("| contender | median ms per step | ratio to sequential |\n|---|---:|---:|")
    print(f"| {k} sequential steps | {seq_s * 1e3:.2f} | 1 |")
    print(f"| ensemble step, batched weights (default) | {ens_s * 1e3:.2f} | {ens_s / seq_s:.3f}x |")
    print(f"| ensemble step, vmap (fallback) | {vmap_s * 1e3:.2f} | {vmap_s / seq_s:.3f}x |")
    print(f"| ensemble step, batched weights, compiled (trainer.compile=true) | {comp_s * 1e3:.2f} | "
          f"{comp_s / seq_s:.3f}x |")
    best = min(ens_s, comp_s)
    verdict = "ok" if best / seq_s <= TARGET else "missed"
    print(f"ratio ensemble / sequential: eager {ens_s / seq_s:.3f}x (median of per-round ratios {paired:.3f}x), "
          f"compiled {comp_s / seq_s:.3f}x (first call, compiling: {compile_s:.1f} s); target <= {TARGET}x: "
          f"{verdict}")


def whole_runs(overrides: list[str], k: int = 3) -> None:
    """K separate runs against one K-member ensemble of the degradation config with ``overrides``."""
    from odenet.runner.ensemble import train_ensemble
    from odenet.runner.train import train_and_evaluate

    base = ["+experiment=degradation", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        runs = [train_and_evaluate(load_config([*base, f"seed={s}"]), root / "sep" / f"seed={s}", {"seed": str(s)})
                for s in range(k)]
        t1 = time.perf_counter()
        cfg = load_config([*base, f"trainer.ensemble={k}"])
        members = train_ensemble(cfg, member_runs(cfg, root / "ens" / "seed=0", ["seed=0"], SweepNaming(root / "ens")))
        t2 = time.perf_counter()
        print(f"{' '.join(overrides)}: {k} separate runs {t1 - t0:.1f} s, ensemble {t2 - t1:.1f} s "
              f"({(t2 - t1) / (t1 - t0):.2f}x); {torch.get_num_threads()} thread(s)")
        for s in range(k):
            mine = torch.load(root / "ens" / f"seed={s}" / "model.pt", weights_only=True)
            own = torch.load(root / "sep" / f"seed={s}" / "model.pt", weights_only=True)
            same = all(torch.equal(mine[n], own[n]) for n in own)
            print(f"seed {s}: test accuracy {runs[s]['evaluations'][0]['accuracy']:.4f} separate, "
                  f"{members[s]['evaluations'][0]['accuracy']:.4f} ensemble; model.pt bit-identical: {same}")


if __name__ == "__main__":
    main()
