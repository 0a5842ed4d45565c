"""The README's library examples run as written: five lines that unlearn and evaluate, a user's
own Flax module end to end, ∇τ inside your own loop (a flax TrainState, an optax optimiser and
your own jit), and sweeps."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(heading: str, index: int = 0) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_five_lines_unlearn_and_evaluate(capsys):
    code = _block("Library in five lines")
    assert "hf.unlearn(" in code and "hf.evaluate_unlearning(" in code
    exec(compile(code, "README:five-lines", "exec"), {})
    out = capsys.readouterr().out
    assert "'forget_acc': 0.0" in out and "mia_loss_lr" in out


def test_your_own_model_end_to_end(capsys):
    ns = {}
    exec(compile(_block("Your own model"), "README:own-model", "exec"), ns)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gradtau ") and out[1].startswith("salun ")
    assert float(out[1].split()[1]) < 0.1                     # SalUn forgot class 4
    assert all(0 <= float(v) <= 1 for line in out for v in line.split()[1:])


def test_gradtau_inside_your_own_loop_and_sweeps(capsys):
    ns = {}
    exec(compile(_block("∇τ inside your own loop"), "README:own-loop", "exec"), ns)
    forget_loss, tau, alpha = map(float, capsys.readouterr().out.split())
    assert tau > 0 and 0 <= alpha < ns["alpha0"]
    from hyperforget_jax.train import mean_cross_entropy
    f = ns["fsplit"].forget
    before = float(mean_cross_entropy(ns["model"], ns["params"], f.x, f.y))
    after = float(mean_cross_entropy(ns["model"], ns["state"].params, f.x, f.y))
    assert after > before                                      # the ascent raised D_f's loss
    assert type(ns["state"]).__module__.startswith("flax.training")
    exec(compile(_block("Sweeps and meshes"), "README:sweeps", "exec"), ns)
    assert len(ns["results"]) == 6
    assert {r.info["group_size"] for r in ns["results"]} == {6}
