"""HyperForget: diffusion hypernetworks that sample unlearned classifiers (METHODS.md §2).

    from hyperforget_jax.hyperforget import (CorpusConfig, build_corpus, Corpus,
                                             train_hypernet, make_prompt, sample)

    build_corpus("runs/corpus", CorpusConfig(num_seeds=24))          # vmapped fleets, resumable
    corpus = Corpus("runs/corpus")                                   # memory-mapped reader
    net, history = train_hypernet(corpus, "dihyfo2")                 # or "dihyfo1", forget_class=c
    prompt = make_prompt(net, params, splits.train, classes=(3,))
    unlearned = sample(jax.random.key(0), net, params, prompt)       # arch.apply(unlearned, x)

Modules: :mod:`.diffusion` (pure diffusion math), :mod:`.denoiser` (G.pt's transformer and its
training step), :mod:`.corpus` (checkpoint corpus), :mod:`.dihyfo` (DiHyFo-1/2, sampling),
:mod:`.demo` (the ``hyperforget demo`` section).
"""

from hyperforget_jax.hyperforget.corpus import (Corpus, CorpusConfig, build_corpus,
                                                build_shard)
from hyperforget_jax.hyperforget.denoiser import (DenoiserConfig, GptDenoiser,
                                                  HyperTrainConfig, HyperTrainState,
                                                  frequency_embed, init_hyper_state,
                                                  make_hyper_optimizer, make_hyper_train_step,
                                                  permutation_index, permute_mlp_hidden,
                                                  prepare_batch)
from hyperforget_jax.hyperforget.diffusion import (Schedule, ddim_sample, ddim_step,
                                                   ddpm_sample, make_schedule, q_posterior,
                                                   q_sample, x0_loss)
from hyperforget_jax.hyperforget.dihyfo import (VARIANTS, Hypernet, HyperSpec, Prompt,
                                                check_request, load_hypernet, make_prompt,
                                                multi_hot, sample, sample_many, save_hypernet,
                                                stack_prompts, train_hypernet)

__all__ = ["Corpus", "CorpusConfig", "build_corpus", "build_shard", "DenoiserConfig",
           "GptDenoiser", "HyperTrainConfig", "HyperTrainState", "frequency_embed",
           "init_hyper_state", "make_hyper_optimizer", "make_hyper_train_step",
           "permutation_index", "permute_mlp_hidden", "prepare_batch", "Schedule",
           "ddim_sample", "ddim_step", "ddpm_sample", "make_schedule", "q_posterior", "q_sample",
           "x0_loss", "VARIANTS", "Hypernet", "HyperSpec", "Prompt", "check_request",
           "load_hypernet", "make_prompt", "multi_hot", "sample", "sample_many",
           "save_hypernet", "stack_prompts", "train_hypernet"]
