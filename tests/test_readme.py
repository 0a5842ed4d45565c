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


def _anchors(path: Path) -> set[str]:
    """GitHub's heading slugs (lower case, punctuation dropped, spaces → '-') and the page's
    explicit `<a id="...">` anchors."""
    text = path.read_text()
    heads = re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    slugs = {"".join(c for c in h.strip().lower().replace("`", "").replace("*", "")
                     if c.isalnum() or c in " -_").replace(" ", "-") for h in heads}
    return slugs | set(re.findall(r'<a (?:id|name)="([^"]+)"', text))


def test_doc_links_point_at_files_and_headings_that_exist():
    root = README.parent
    pages = [README, root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if link.startswith(("http://", "https://")):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, broken
