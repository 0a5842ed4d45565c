"""GAN unlearning (METHODS.md §3): small DCGAN-style / dense GANs, pure jitted D and G steps,
cascaded item and class unlearning with fake labels and substitution, and generator metrics
(forgotten share, classifier-FID / classifier-IS, D-score MIA, downstream accuracy).
See ``docs/gan.md``."""

from hyperforget_jax.gan.metrics import (EvalConfig, Judge, cached_judge, class_shares,
                                         classifier_fid, classifier_is, d_score_mia,
                                         downstream_accuracy, evaluate_gan, forgotten_share,
                                         frechet_distance, judge_from_recipe, judge_outputs,
                                         judge_recipe, train_judge)
from hyperforget_jax.gan.models import GAN_ARCHS, LATENT_PRIORS, GANArch, make_gan_arch
from hyperforget_jax.gan.train import (GANConfig, GANState, d_scores, generate, init_gan_state,
                                       make_d_step, make_g_step, sample, save_grid, train_gan)
from hyperforget_jax.gan.unlearn import (CLASS_RECIPE, FAKE_LABELS, ITEM_RECIPE, SUBSTITUTIONS,
                                         UnlearnConfig, UnlearnResult, default_recipe,
                                         fake_label, flag_class_codes, flag_item_codes,
                                         substitutes, unlearn_gan)
