"""The HyperForget section of ``hyperforget demo``: a small checkpoint corpus, a small DiHyFo-1
for the demo's forget class, sampled unlearned models on held-out original networks beside the
Retrain runs of the same seeds.

    hyperforget demo --sections hyperforget

Scaled for the demo's budget (≤ 2 minutes on 2 CPU cores): G.pt's 784→10→10 MLP (not the
demo's larger classifier: the hypernetwork's input is the flat parameter vector), a corpus of
``DEMO_SEEDS`` runs forgetting only the demo's class, a one-layer denoiser. The full-size
evaluation (DiHyFo-2, every class, prompt alignment, memorisation) is
``experiments/hyperforget_eval.py``; results in docs/hyperforget.md.
"""

from __future__ import annotations

import statistics
import time

import jax

from hyperforget_jax import report
from hyperforget_jax import params as P_
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import dihyfo as H

DEMO_SEEDS = 9
DEMO_TEST_SEEDS = 3
DEMO_CORPUS = dict(num_seeds=DEMO_SEEDS, fleet_size=DEMO_SEEDS,
                   test_fraction=DEMO_TEST_SEEDS / DEMO_SEEDS, save_every_steps=2)
DEMO_DENOISER = DN.DenoiserConfig(num_layers=1, width=64, num_heads=4)
DEMO_TRAIN = DN.HyperTrainConfig(steps=600, batch_size=32, lr=1e-3, from_start=1.0)
DEMO_SAMPLES = 3


def demo_section(ctx) -> dict:
    from hyperforget_jax.demo import mean_std_row, row_header

    classes = ctx.request.classes
    if not classes or len(classes) != 1:
        md = "## HyperForget\n\nSkipped: the demo section runs for a single forget class.\n"
        return {"markdown": md, "results": {"skipped": True}}
    c = int(classes[0])
    t0 = time.perf_counter()
    ccfg = C.CorpusConfig(forget_classes=(c,), **DEMO_CORPUS)
    stats = C.build_corpus(ctx.run_dir / "hyperforget_corpus", ccfg, ctx.splits, "mnist5k",
                           progress=ctx.progress)
    corpus = C.Corpus(ctx.run_dir / "hyperforget_corpus")
    net, hist = H.train_hypernet(corpus, "dihyfo1", c, DEMO_DENOISER, DEMO_TRAIN,
                                 progress=ctx.progress)
    arch, tmpl = corpus.arch, corpus.arch.param_shapes()
    ev = lambda p, s: evaluate_unlearning(arch, p, ctx.splits, ctx.fsplit, ctx.request, s)
    rid = corpus.requests.index((c,))
    orig, retr, samp, sample_s = [], [], [], []
    for s in corpus.index["test_seeds"]:
        p0 = P_.unflatten(corpus.params([corpus.find(s, "original")])[0], tmpl)
        orig.append(ev(p0, s))
        retr.append(ev(P_.unflatten(corpus.params([corpus.find(s, "retrain", rid)])[0], tmpl),
                       s))
        prompt = H.make_prompt(net, p0, ctx.splits.train, (c,))
        keys = jax.random.split(jax.random.key(s), DEMO_SAMPLES)
        many = H.sample_many(keys, net, p0, H.stack_prompts([prompt] * DEMO_SAMPLES))
        samp += [ev(jax.tree.map(lambda a: a[i], many), s) for i in range(DEMO_SAMPLES)]
        H.sample(keys[0], net, p0, prompt)                       # compile, then time warm
        ts = time.perf_counter()
        jax.block_until_ready(H.sample(keys[1], net, p0, prompt))
        sample_s.append(time.perf_counter() - ts)
    t_sample = statistics.median(sample_s)
    total = time.perf_counter() - t0
    md = ["## HyperForget (DiHyFo-1, small)\n",
          f"Corpus: {DEMO_SEEDS} runs of G.pt's MLP ({arch.param_count:,} parameters), "
          f"{len(corpus):,} checkpoints ({stats['total_checkpoints_per_second']:.0f} checkpoints/s, compilation included); "
          f"DiHyFo-1 for class {c} ({DEMO_DENOISER.num_layers} layer × "
          f"{DEMO_DENOISER.width}, {DEMO_TRAIN.steps} steps, {hist['seconds']:.0f} s). "
          f"Held-out originals (seeds {corpus.index['test_seeds']}), {DEMO_SAMPLES} DDIM "
          "samples each, beside Retrain of the same seeds (784→10→10 MLP, not the demo's "
          "classifier above). Mean ± std over the held-out seeds; the sample row over every "
          "(seed, sample):\n",
          report.markdown_table(row_header(), [mean_std_row("Original", orig),
                                               mean_std_row("Retrain", retr),
                                               mean_std_row("DiHyFo-1 sample", samp)]),
          f"\nOne sample: {t_sample * 1000:.0f} ms warm (20 DDIM steps). Section total "
          f"{total:.0f} s. The full evaluation (DiHyFo-2 for every class, prompt alignment, "
          "memorisation) is in docs/hyperforget.md.\n"]
    return {"markdown": "\n".join(md),
            "results": {"original": orig, "retrain": retr, "samples": samp,
                        "corpus": stats, "train_seconds": hist["seconds"],
                        "sample_seconds": t_sample, "section_seconds": total}}
