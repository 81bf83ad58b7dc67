"""``benchmarks/peers.py --quick`` runs in seconds and prints every contender's row (peers absent: one line each)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_peers_quick_prints_a_row_per_contender(capsys):
    spec = importlib.util.spec_from_file_location("peers", PEERS)
    assert spec is not None and spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = peers  # dataclasses look their module up
    spec.loader.exec_module(peers)
    assert peers.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "contender" not in line]
    names = {line.split(" | ")[1] for line in rows}
    assert {"hand loop (euler)", "odenet ResidualStack", "odenet ODEBlock", "torchdiffeq odeint"} <= names
    assert len({line.split(" | ")[0] for line in rows}) == 4  # euler and dopri5 at two sizes
    for peer, row in (("torchode", "torchode"), ("torchdyn", "torchdyn odeint")):
        assert (row in names) == _installed(peer)
        assert (f"skipped: {peer} (not installed" in out) != _installed(peer)
    hand = [line for line in rows if "hand loop" in line]
    assert all("| 1.00x |" in line for line in hand)
    assert "skipped: odenet ResidualStack compiled (--quick; add --compile)" in out


def test_step_quick_prints_the_eager_rows_with_the_hand_loop_as_reference(capsys):
    spec = importlib.util.spec_from_file_location("step_bench", PEERS.parent / "step.py")
    assert spec is not None and spec.loader is not None
    step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step)
    assert step.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "contender" not in line]
    assert [line.split(" | ")[0] for line in rows] == ["| hand loop, eager", "| odenet ResidualStack, eager"]
    assert "| 1.00x |" in rows[0]
    assert len(step.contenders(quick=False)) > len(rows)  # the compiled contenders: full runs only


def test_adaptive_quick_checks_the_nfe_and_prints_every_contender():
    """``benchmarks/adaptive.py --quick``: every contender's NFE equals torchdiffeq's (asserted inside), each prints
    a row with a ratio."""
    import subprocess

    script = PEERS.parent / "adaptive.py"
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=120,
                          check=True)
    rows = [line for line in proc.stdout.splitlines() if line[:1].isalpha() or line[:1].isdigit()]
    for name in ("torchdiffeq.odeint", 'ODEBlock(backend="odenet")', "one odeint_members solve"):
        row = next(r for r in rows if name in r)
        assert float(row.split()[-1]) > 0
