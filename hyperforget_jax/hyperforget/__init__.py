"""HyperForget: diffusion hypernetworks that sample unlearned classifiers (METHODS.md §2).

    from hyperforget_jax.hyperforget import (load_hypernet, make_prompt, sample,
                                             CorpusConfig, build_corpus, Corpus, train_hypernet)

    net, _ = load_hypernet("pretrained")                             # shipped DiHyFo-2, gpt_mlp
    prompt = make_prompt(net, params, splits.train, classes=(3,))
    unlearned = sample(jax.random.key(0), net, params, prompt)       # arch.apply(unlearned, x)

    build_corpus("runs/corpus", CorpusConfig())                      # vmapped fleets, resumable
    net, history = train_hypernet(Corpus("runs/corpus"), "dihyfo2")  # or "dihyfo1", forget_class=c

Modules: :mod:`.diffusion` (pure diffusion math), :mod:`.weightspace` (canonical start networks,
normalised changes), :mod:`.denoiser` (G.pt's transformer and its training step), :mod:`.corpus`
(checkpoint corpus; :mod:`.corpus_index` validates it), :mod:`.spec` (what a hypernetwork is),
:mod:`.dihyfo` (training), :mod:`.sampling` (prompts, sampling), :mod:`.store` (files, the
pretrained network), :mod:`.demo` (the ``hyperforget demo`` section).
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
from hyperforget_jax.hyperforget.dihyfo import train_hypernet
from hyperforget_jax.hyperforget.sampling import (SampleConfig, check_guidance, make_prompt,
                                                  sample, sample_best_of, sample_many)
from hyperforget_jax.hyperforget.spec import (VARIANTS, Hypernet, HyperSpec, Prompt,
                                              check_request, multi_hot, stack_prompts)
from hyperforget_jax.hyperforget.store import load_hypernet, load_pretrained, save_hypernet
from hyperforget_jax.hyperforget.weightspace import WeightSpace, canonicalize, decanonicalize

__all__ = ["Corpus", "CorpusConfig", "build_corpus", "build_shard", "DenoiserConfig",
           "GptDenoiser", "HyperTrainConfig", "HyperTrainState", "frequency_embed",
           "init_hyper_state", "make_hyper_optimizer", "make_hyper_train_step",
           "permutation_index", "permute_mlp_hidden", "prepare_batch", "Schedule",
           "ddim_sample", "ddim_step", "ddpm_sample", "make_schedule", "q_posterior", "q_sample",
           "x0_loss", "VARIANTS", "Hypernet", "HyperSpec", "Prompt", "check_guidance",
           "check_request",
           "load_hypernet", "load_pretrained", "make_prompt", "multi_hot", "sample",
           "sample_best_of", "sample_many", "SampleConfig", "save_hypernet", "stack_prompts",
           "train_hypernet", "WeightSpace", "canonicalize", "decanonicalize"]
