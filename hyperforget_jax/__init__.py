"""hyperforget_jax: machine unlearning in JAX/Flax.

Parameters are data: a Flax params pytree trained by :mod:`~hyperforget_jax.train`, flattened
for the hypernetwork, sampled back, unlearned, and evaluated against Retrain. Every function
that takes a model takes any model (:func:`as_model`: a registered name, a Flax Linen or NNX
module, an ``apply_fn(params, x) -> logits`` or an import path). Public names are re-exported
here; the code lives in the private-by-convention modules, and the methods' building blocks in
:mod:`hyperforget_jax.unlearn.gradtau` and :mod:`hyperforget_jax.unlearn.baselines`.
"""

from hyperforget_jax import _sigint

_sigint.install_if_program()     # before JAX's import: the program's Ctrl-C (_sigint.py)

from hyperforget_jax.data import (Dataset, ForgetRequest, ForgetSplit, Splits, load_dataset,
                                  load_digits, load_mnist5k, make_splits, resolve_forget)
from hyperforget_jax.errors import (ArchitectureError, CheckpointError, ConfigError, DataError,
                                    ForgetRequestError, HyperforgetError, NonFiniteError)
from hyperforget_jax.evaluation import evaluate_unlearning, gap_to_retrain
from hyperforget_jax.models import (ARCHITECTURES, Architecture, as_model, load_model,
                                    make_architecture, nnx_params, nnx_update)
from hyperforget_jax.params import flatten, param_count, unflatten
from hyperforget_jax.train import (TrainConfig, TrainState, fit, fit_fleet, fit_stream,
                                   make_train_step, per_example_ce, skip_nonfinite)
from hyperforget_jax.unlearn import METHODS as UNLEARN_METHODS
from hyperforget_jax.unlearn import (UnlearnResult, nabla_tau, run_gradtau_stream, unlearn,
                                     unlearn_sweep)

# `hyperforget_jax.unlearn` is the function above, which hides the subpackage of that name:
# `import hyperforget_jax.unlearn.gradtau as G` (the docs' module paths) was an ImportError and
# `hyperforget_jax.unlearn.gradtau.nabla_tau` an AttributeError. Its modules hang on the
# function too (`from hyperforget_jax.unlearn import gradtau` worked and still does).
from hyperforget_jax.unlearn import (baselines as _baselines, configs as _configs,  # noqa: E402
                                     gradtau as _gradtau, gradtau_run as _gradtau_run,
                                     gradtau_stream as _gradtau_stream)

for _name, _module in (("baselines", _baselines), ("configs", _configs),
                       ("gradtau", _gradtau), ("gradtau_run", _gradtau_run),
                       ("gradtau_stream", _gradtau_stream)):
    setattr(unlearn, _name, _module)
del _name, _module

__version__ = "0.1.0"
