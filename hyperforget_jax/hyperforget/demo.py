"""The HyperForget section of ``hyperforget demo``: the shipped DiHyFo-2 samples unlearned
networks for freshly trained originals, beside Retrain of the same seeds.

    hyperforget demo --sections hyperforget

The hypernetwork's target is G.pt's 784→10→10 MLP (``gpt_mlp``; its input is the flat
parameter vector), not the demo's larger classifier, so the section trains its own ``gpt_mlp``
originals the way ``hyperforget train --arch gpt_mlp --seed S`` does (the demo's seeds, which
no corpus contains) and their Retrain runs (one vmapped fleet), then samples
``DEMO_SAMPLES`` networks per original in one vmapped call. Nothing is trained for the
hypernetwork itself: it is loaded (hash-checked) from the package. The full evaluation is
``experiments/hyperforget_eval.py``; results in docs/hyperforget.md.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import report, train
from hyperforget_jax import params as P_
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import sampling as S
from hyperforget_jax.hyperforget import store
from hyperforget_jax.hyperforget.spec import stack_prompts

DEMO_SAMPLES = 3


def demo_section(ctx) -> dict:
    from hyperforget_jax.demo import mean_std_row, row_header

    t0 = time.perf_counter()
    net, meta = store.load_pretrained()
    arch, tmpl = net.spec.arch, net.spec.arch.param_shapes()
    classes = tuple(ctx.request.classes or ())
    try:
        S.check_request(net.spec, classes)
    except ValueError as e:
        md = f"## HyperForget\n\nSkipped: {e}\n"
        return {"markdown": md, "results": {"skipped": str(e)}}
    cfg = train.TrainConfig(arch=arch.name)
    x, y = jnp.asarray(ctx.splits.train.x), jnp.asarray(ctx.splits.train.y)
    seeds = list(ctx.seeds)
    retain = np.flatnonzero(~np.isin(ctx.splits.train.y, classes))
    fleet = C.train_fleet(arch, x, y, seeds * 2, [(cfg.lr, cfg.epochs)] * (2 * len(seeds)),
                          [np.arange(len(y))] * len(seeds) + [retain] * len(seeds))
    t_train = time.perf_counter() - t0
    ev = lambda flat, s: evaluate_unlearning(arch, P_.unflatten(jnp.asarray(flat), tmpl),
                                             ctx.splits, ctx.fsplit, ctx.request, s)
    orig, retr, samp, sample_s = [], [], [], []
    for i, s in enumerate(seeds):
        p0 = P_.unflatten(jnp.asarray(fleet[i]), tmpl)
        orig.append(ev(fleet[i], s))
        retr.append(ev(fleet[len(seeds) + i], s))
        prompt = S.make_prompt(net, p0, ctx.splits.train, classes)
        keys = jax.random.split(jax.random.key(s), DEMO_SAMPLES)
        many = S.sample_many(keys, net, p0, stack_prompts([prompt] * DEMO_SAMPLES))
        samp += [ev(P_.flatten(jax.tree.map(lambda a: a[j], many)), s)
                 for j in range(DEMO_SAMPLES)]
        S.sample(keys[0], net, p0, prompt)                         # compile, then time warm
        ts = time.perf_counter()
        jax.block_until_ready(S.sample(keys[1], net, p0, prompt))
        sample_s.append(time.perf_counter() - ts)
    t_sample = statistics.median(sample_s)
    total = time.perf_counter() - t0
    hist = meta.get("history", {})
    md = ["## HyperForget (pretrained DiHyFo-2)\n",
          f"The DiHyFo-2 shipped with the package (G.pt's MLP, {arch.param_count:,} "
          f"parameters; trained {hist.get('train_config', {}).get('steps', '?')} steps on a "
          f"corpus of {meta.get('corpus_config', {}).get('num_seeds', '?')} originals, none "
          f"of them these) samples networks that forget {ctx.request.describe()} for "
          f"{len(seeds)} freshly trained `gpt_mlp` originals (seeds {seeds}, `hyperforget "
          f"train --arch gpt_mlp`'s recipe), {DEMO_SAMPLES} DDIM samples each, beside Retrain "
          "of the same seeds. Mean ± std over the seeds; the sample row over every (seed, "
          "sample):\n",
          report.markdown_table(row_header(), [mean_std_row("Original", orig),
                                               mean_std_row("Retrain", retr),
                                               mean_std_row("DiHyFo-2 sample", samp)]),
          f"\nOne sample: {t_sample * 1000:.0f} ms warm (20 DDIM steps); originals and "
          f"Retrain {t_train:.0f} s; section total {total:.0f} s. Full evaluation (pairs, "
          "other recipes, DiHyFo-1, prompt alignment, memorisation): docs/hyperforget.md.\n"]
    return {"markdown": "\n".join(md),
            "results": {"original": orig, "retrain": retr, "samples": samp,
                        "train_seconds": t_train, "sample_seconds": t_sample,
                        "section_seconds": total}}
