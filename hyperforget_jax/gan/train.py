"""GAN training: pure jitted D and G steps, their pmap / sharded forms, and a resumable loop.

One training iteration is a D step followed by a G step (non-saturating G loss)::

    state, m = d_step(state, x_real, z)        # BCE(D(x), 1) + BCE(D(G(z)), 0)
    state, m = g_step(state, z2)               # BCE(D(G(z2)), 1)

The latents are inputs of the steps, not drawn inside, so the single-device, ``pmap`` and
sharded compilations see the same numbers (pmap: gradients and losses averaged with
``lax.pmean``). :func:`train_gan` scans whole epochs on device (one compilation per recipe),
checkpoints every ``save_every`` epochs with Orbax and resumes from the latest checkpoint with
the same batches as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperforget_jax import xla
from hyperforget_jax.config import SEED_LIMIT, check_count, refuse_unread
from hyperforget_jax.data import Dataset, _check_seed, batch_indices
from hyperforget_jax.checkpoint_checks import refuse_another_run, refuse_other_jax_settings
from hyperforget_jax.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from hyperforget_jax.gan.models import (GAN_ARCHS, MIXTURE_COMPONENTS, MIXTURE_SIGMA, GANArch,
                                        check_gan_arch, check_latent_prior, make_gan_arch)
from hyperforget_jax.metrics import chunked_apply
from hyperforget_jax.rundir import data_fingerprint
from hyperforget_jax.train import (check_schedule, guarded_apply, is_learning_rate,
                                   raise_if_nonfinite, zero_in_float32)

Params = Any


class GANState(NamedTuple):
    """Both players and their Adam states; a plain pytree (checkpoints, pmaps, shards)."""

    step: jax.Array
    g_params: Params
    d_params: Params
    g_opt: Any
    d_opt: Any


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """GAN recipe (also the Retrain recipe: the same config on D_r).

    Defaults: the convolutional ``dcgan`` pair (``arch="auto"``: ``dcgan`` for 28×28 / 32×32
    images, the dense ``mlp`` pair otherwise), 60 epochs of batch 64 with Adam β₁ = 0.5
    [paper: DCGAN's optimiser] at lr 1e-3 for D [ours]: on MNIST-5k's 3,500 images DCGAN's
    2e-4 needed > 100 epochs for the classifier-FID 1e-3 reaches in 40 (exploratory runs on
    seed 10, docs/gan.md), and 2e-3 for G [ours: G at twice D's rate lowered the retrained
    GAN's classifier-FID by 21 % and its share of the class it never saw from 3.2 to 2.4 %,
    mean of seeds 10–12, which the results do not use; G at 3× did worse, docs/gan.md];
    60 epochs = 3,240 iterations::

        hyperforget gan train --run-dir runs/gan/original

    Attributes:
      arch: ``"auto"``, ``"dcgan"`` or ``"mlp"`` (:mod:`hyperforget_jax.gan.models`) [ours:
        the convolutional pair wherever it applies].
      width: channels of the DCGAN's widest layer [ours: 64, DCGAN's layout scaled to 28×28].
      latent_dim: size of the latent codes z [paper: DCGAN's 100].
      epochs: passes over the training images [ours: 60; clean digits, docs/gan.md].
      batch_size: images per D step and latent codes per G step [ours: 64].
      lr: Adam learning rate of D, and of G when ``g_lr`` is None [ours: 1e-3, see above].
      g_lr: G's own Adam learning rate (None: ``lr``) [ours: 2e-3, see above].
      beta1: Adam β₁ of both players [paper: DCGAN's 0.5].
      seed: initialisation, batch order and latents.
      latent_prior: ``"normal"`` (z ~ N(0, I)) or ``"mixture"`` (an equal mixture of
        Gaussians with gaps between them, :data:`hyperforget_jax.gan.models.LATENT_PRIORS`)
        [ours: ``mixture``; it lowers the retrained GAN's share of the class it never saw and
        meets more of the class targets (docs/gan.md, "The headline run with the mixture
        prior")].
      mixture_components: the mixture's number of Gaussians K [ours: 20].
      mixture_sigma: each Gaussian's standard deviation σ [ours: 2.5; at 2 a classifier
        trained on the Original's samples fell under 90 % on real digits, 1 collapses the
        samples, 3 behaves like the normal prior; docs/gan.md].
    """

    arch: str = "auto"
    width: int = 64
    latent_dim: int = 100
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    g_lr: float | None = 2e-3
    beta1: float = 0.5
    seed: int = 0
    latent_prior: str = "mixture"
    mixture_components: int = MIXTURE_COMPONENTS
    mixture_sigma: float = MIXTURE_SIGMA

    def __post_init__(self):
        if self.arch not in ("auto", *GAN_ARCHS):
            raise ConfigError(f"unknown GAN architecture {self.arch!r}; choose auto, "
                              f"{', '.join(GAN_ARCHS)}")
        check_schedule(self.epochs, self.batch_size, self.lr)
        if self.g_lr is not None and not is_learning_rate(self.g_lr):
            raise ConfigError(f"g_lr (G's learning rate) must be a positive number"
                              f"{zero_in_float32(self.g_lr)} or None (= lr), got {self.g_lr!r}")
        if isinstance(self.beta1, bool) or not isinstance(self.beta1, numbers.Real) \
                or not 0 <= self.beta1 < 1:     # ("0.5" was a bare TypeError here)
            raise ConfigError(f"beta1 must be a number in [0, 1), got {self.beta1!r}")
        check_latent_prior(self.latent_prior, self.mixture_components, self.mixture_sigma)
        for name in ("seed", "latent_dim", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ConfigError(f"GANConfig.{name} must be an integer >= 0, got {v!r}")
        if self.seed >= SEED_LIMIT:      # jax.random.key keeps a seed's low 32 bits
            raise ConfigError(f"GANConfig.seed must be below 2**32, got {self.seed!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def gan_arch_of(cfg: GANConfig, image_shape: tuple[int, int, int], generator=None,
                discriminator=None) -> GANArch:
    """The validated :class:`GANArch` that ``cfg`` trains for images of ``image_shape``: the
    registered pair ``cfg.arch``, or the user's own ``generator`` and ``discriminator`` (Flax
    Linen modules) with ``cfg``'s latent size and prior."""
    if generator is not None and cfg.arch != "auto":
        raise ConfigError(f"GANConfig.arch={cfg.arch!r} names a registered pair but a generator "
                          "and discriminator were given; leave arch at 'auto' to train your own")
    return make_gan_arch(None if generator is not None else cfg.arch, image_shape,
                         cfg.latent_dim, cfg.width, cfg.latent_prior, cfg.mixture_components,
                         cfg.mixture_sigma, generator=generator, discriminator=discriminator)


def refuse_unused_fields(cfg: GANConfig, arch: GANArch) -> None:
    """Raises ConfigError for a field of ``cfg`` that the GAN ``arch`` built from it never reads,
    set to other than its default: ``width`` with the dense ``mlp`` pair (``arch="auto"`` on
    8×8 digits included: fixed hidden sizes) and the mixture's ``mixture_components`` /
    ``mixture_sigma`` with another prior. ``train_gan`` trained the same pair as with the
    default and returned an arch whose ``width`` read as given (the CLI refused the flags)."""
    unused = ([("width", "sets the dcgan pair's channels; the dense mlp pair has fixed hidden "
                "sizes", "drop width")] if arch.name == "mlp" else [])
    if cfg.latent_prior != "mixture":
        unused += [(name, f"sets the mixture prior; z is drawn from the {cfg.latent_prior} "
                    "prior", f"drop {name}") for name in ("mixture_components", "mixture_sigma")]
    refuse_unread(cfg, unused, [GANConfig()])


def make_optimizer(lr: float = 2e-4, beta1: float = 0.5) -> optax.GradientTransformation:
    return optax.adam(lr, b1=beta1, b2=0.999)


def init_gan_state(arch: GANArch, tx: optax.GradientTransformation, key: jax.Array,
                   g_params: Params | None = None, d_params: Params | None = None) -> GANState:
    if g_params is None or d_params is None:
        g0, d0 = arch.init(key)
        g_params = g0 if g_params is None else g_params
        d_params = d0 if d_params is None else d_params
    g, d = g_params, d_params
    return GANState(jnp.zeros((), jnp.int32), g, d, tx.init(g), tx.init(d))


def bce_with_logits(logits: jax.Array, target: jax.Array | float) -> jax.Array:
    """Mean binary cross-entropy of logits against a (soft) target in [0, 1]."""
    target = jnp.broadcast_to(jnp.asarray(target, logits.dtype), logits.shape)
    return optax.sigmoid_binary_cross_entropy(logits, target).mean()


def _pmean(tree, axis_name):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def make_d_step(arch: GANArch, tx: optax.GradientTransformation,
                axis_name: str | None = None) -> Callable:
    """``d_step(state, x_real, z) -> (state, metrics)``: one Adam step on
    BCE(D(x_real), 1) + BCE(D(G(z)), 0) (G frozen). Non-finite updates are skipped and
    reported as ``metrics["finite"] = False``."""

    def loss_fn(d, g, x, z):
        fake = jax.lax.stop_gradient(arch.generate(g, z))
        real_logits, fake_logits = arch.discriminate(d, x), arch.discriminate(d, fake)
        loss = bce_with_logits(real_logits, 1.0) + bce_with_logits(fake_logits, 0.0)
        return loss, (jax.nn.sigmoid(real_logits).mean(), jax.nn.sigmoid(fake_logits).mean())

    def step(state: GANState, x: jax.Array, z: jax.Array):
        (loss, (d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.d_params, state.g_params, x, z)
        grads, loss, d_real, d_fake = _pmean((grads, loss, d_real, d_fake), axis_name)
        d, opt, finite = guarded_apply(state.d_params, state.d_opt, grads, loss, tx)
        return state._replace(d_params=d, d_opt=opt), {
            "d_loss": loss, "d_real": d_real, "d_fake": d_fake, "finite": finite}

    return step


def make_g_step(arch: GANArch, tx: optax.GradientTransformation,
                axis_name: str | None = None) -> Callable:
    """``g_step(state, z) -> (state, metrics)``: one Adam step on the non-saturating loss
    BCE(D(G(z)), 1) against the current (frozen) D; increments ``state.step``."""

    def loss_fn(g, d, z):
        return bce_with_logits(arch.discriminate(d, arch.generate(g, z)), 1.0)

    def step(state: GANState, z: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(state.g_params, state.d_params, z)
        grads, loss = _pmean((grads, loss), axis_name)
        g, opt, finite = guarded_apply(state.g_params, state.g_opt, grads, loss, tx)
        return state._replace(step=state.step + 1, g_params=g, g_opt=opt), {
            "g_loss": loss, "finite": finite}

    return step


def latents_for_step(arch: GANArch, seed: int, step: jax.Array, batch_size: int):
    """The two latent batches of iteration ``step`` (D's and G's): a pure function of
    (seed, step), so resumed and uninterrupted runs agree."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    kd, kg = jax.random.split(key)
    return (arch.sample_latents(kd, batch_size), arch.sample_latents(kg, batch_size))


def compiled_epoch(arch: GANArch, lr: float, beta1: float, batch_size: int,
                   g_lr: float | None = None) -> Callable:
    """``run(state, x, idx, seed) -> (state, metrics)``: ``lax.scan`` of D+G iterations over
    the epoch's batch indices ``idx`` (num_batches, batch_size) into on-device images ``x``.
    D's Adam runs at ``lr``, G's at ``g_lr`` (None: ``lr``). Compiled once per (arch, recipe)
    and owned by the architecture (:meth:`GANArch.program`)."""
    g_lr = lr if g_lr is None else g_lr

    def build():
        d_step = make_d_step(arch, make_optimizer(lr, beta1))
        g_step = make_g_step(arch, make_optimizer(g_lr, beta1))

        def run(state, x, idx, seed):
            def body(s, i):
                zd, zg = latents_for_step(arch, seed, s.step, batch_size)
                s, md = d_step(s, x[i], zd)
                s, mg = g_step(s, zg)
                return s, {**md, **mg, "finite": md["finite"] & mg["finite"]}

            return jax.lax.scan(body, state, idx)

        return xla.jit(run, donate_argnums=0)

    return arch.program(("epoch", float(lr), float(g_lr), float(beta1), int(batch_size)), build)


@xla.standard_promotion
def train_gan(train: Dataset, cfg: GANConfig, *, checkpointer=None, meta: dict | None = None,
              progress: bool = False, save_every: int = 10, generator=None,
              discriminator=None) -> tuple[GANState, list[dict], GANArch]:
    """Trains a GAN on ``train.x`` (labels unused) with ``cfg``.

    Args:
      train: images in [0, 1].
      cfg: the recipe; ``cfg.seed`` fixes initialisation, batch order and latents.
      generator, discriminator: your own Flax Linen pair instead of the registered
        ``cfg.arch`` (:func:`~hyperforget_jax.gan.models.make_gan_arch`); ``cfg`` still sets
        the latent size and prior.
      checkpointer: optional :class:`hyperforget_jax.checkpoint.Checkpointer`; saved every
        ``save_every`` epochs and at the end (checkpoint step = epochs done); a rerun resumes.
      meta: JSON metadata stored with each checkpoint.
      progress: show a tqdm progress bar.
      save_every: epochs between two checkpoints (a positive integer; read only with a
        ``checkpointer``).

    Returns:
      (final state, per-epoch history of mean losses and D scores, the :class:`GANArch`).

    Raises:
      ConfigError: ``train`` not a Dataset, ``cfg`` not a GANConfig, ``save_every`` not a
        positive integer while checkpointing, a field the built pair never reads
        (:func:`refuse_unused_fields`).
      NonFiniteError: a step produced NaN/inf (named in the message).
    """
    t0 = time.perf_counter()
    if checkpointer is not None:
        # Checked up front: `% 0` raised ZeroDivisionError after the first epoch's training.
        check_count(save_every, "save_every", " (epochs)")
    if not isinstance(train, Dataset) or not isinstance(cfg, GANConfig):   # else .x / .arch
        raise ConfigError(f"train_gan takes train=a Dataset (e.g. splits.train, or "
                          f"hf.data.from_arrays(x, y)) and cfg=a GANConfig, got a "
                          f"{type(train).__name__} and a {type(cfg).__name__}")
    if np.ndim(train.x) != 4:
        raise DataError(f"training images must be (N, H, W, C), got shape {np.shape(train.x)}")
    arch = gan_arch_of(cfg, train.x.shape[1:], generator, discriminator)
    refuse_unused_fields(cfg, arch)
    if cfg.batch_size > len(train):
        # Each epoch's one batch repeated images (up to 4 times each at 1,258 images, batch
        # 5,000); the classifier's fit caps its batch, the corpus fleet refuses one.
        raise ConfigError(f"GANConfig.batch_size {cfg.batch_size} is larger than the GAN's "
                          f"training set ({len(train)} images): each batch would repeat "
                          f"images; pass batch_size <= {len(train)} (--batch-size)")
    arch.check_images(train.x, "the GAN's training set")
    # One Adam initialises both players' states: Adam's state does not depend on its rate.
    tx = make_optimizer(cfg.lr, cfg.beta1)
    fresh = lambda key: init_gan_state(arch, tx, key)
    start, prior = 0, 0.0
    data_id = None
    if checkpointer is not None:
        data_id = data_fingerprint(train)
    resume = checkpointer is not None and checkpointer.latest_step() is not None
    # A resumed (or finished) run reads its state into shapes alone: initialising G and D for
    # real compiled the initialiser (≈ 6 s for the dcgan pair on CPU) only to be overwritten.
    key = jax.random.key(cfg.seed)
    state = jax.eval_shape(fresh, key) if resume else fresh(key)
    if resume:
        # The config does not name a user's pair: its record (module reprs) tells them apart.
        was = checkpointer.restore_meta().get("gan_arch") or {}
        if (not arch.registered or "generator" in was) and was != arch.to_json():
            raise CheckpointError(f"{checkpointer.directory} holds a GAN trained with another "
                                  f"pair ({was.get('name')}) than {arch.name}; use a new "
                                  "directory or pass the same generator and discriminator")
    if resume:
        state, stored = checkpointer.restore(state)
        start = int(checkpointer.latest_step())
        prior = float(stored.get("train_seconds", 0.0))
        refuse_another_run(checkpointer.directory, stored, cfg.to_json(), data_id, start,
                           cfg.epochs, config_key="gan_config", data_key="gan_data",
                           what="a GAN", config_name="GANConfig")
        if start < cfg.epochs:
            refuse_other_jax_settings(checkpointer.directory, checkpointer.written_under(),
                                      "a GAN's training")
    run = compiled_epoch(arch, cfg.lr, cfg.beta1, cfg.batch_size, cfg.g_lr)
    x = jnp.asarray(train.x)
    history: list[dict] = []
    epochs = range(start, cfg.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=f"GAN {arch.name}", initial=start, total=cfg.epochs)
    for epoch in epochs:
        idx = jnp.asarray(batch_indices(cfg.seed, epoch, len(train), cfg.batch_size))
        first = int(state.step)
        state, m = run(state, x, idx, cfg.seed)
        raise_if_nonfinite(m["finite"], first, epoch)
        history.append({"epoch": epoch, **{k: float(np.mean(m[k])) for k in
                                           ("d_loss", "g_loss", "d_real", "d_fake")}})
        if checkpointer is not None and ((epoch + 1) % save_every == 0 or epoch + 1 == cfg.epochs):
            checkpointer.save(epoch + 1, state, {**(meta or {}), "epoch": epoch + 1,
                                                 "gan_config": cfg.to_json(),
                                                 "gan_data": data_id,
                                                 # the training time so far, over resumes
                                                 "train_seconds": prior + time.perf_counter()
                                                 - t0,
                                                 "gan_arch": arch.to_json()},
                              force=epoch + 1 == cfg.epochs)   # whatever save_interval_steps
    return state, history, arch


def timed_train_gan(train: Dataset, cfg: GANConfig, **kw) -> tuple[GANState, float, GANArch]:
    """:func:`train_gan` with its wall time (blocking until the parameters are ready). With a
    ``checkpointer`` it is the whole run's training time: a resumed run adds the time its
    checkpoint recorded, and a finished run (a rerun) reports the time it was trained in."""
    ckpt, prior, done = kw.get("checkpointer"), 0.0, False
    if ckpt is not None and ckpt.latest_step() is not None:
        stored = ckpt.restore_meta()
        prior, done = float(stored.get("train_seconds", 0.0)), ckpt.latest_step() >= cfg.epochs
    t0 = time.perf_counter()
    state, _, arch = train_gan(train, cfg, **kw)
    jax.block_until_ready(state)
    return state, (prior if done and prior else prior + time.perf_counter() - t0), arch


def _compiled_sampler(arch: GANArch) -> Callable:
    return arch.program("sampler", lambda: xla.jit(lambda g, z: arch.generate(g, z)))


def generate(arch: GANArch, g_params: Params, z: jax.Array, chunk: int = 2048) -> np.ndarray:
    """G(z) in chunks (bounded memory), as a host array; in one call for a user's G whose
    images depend on their batch (:meth:`GANArch.whole_calls`): chunks and zero-padded codes
    gave its images of the same codes other values for every number of samples."""
    check_gan_arch(arch, "generate")
    if len(z) == 0:
        return np.zeros((0, *arch.image_shape), np.float32)
    return chunked_apply(_compiled_sampler(arch), g_params, z, chunk,
                         arch.whole_calls("generator", g_params, z))


def sample(arch: GANArch, g_params: Params, n: int, seed: int = 0) -> np.ndarray:
    """``n`` images of G from the latents of integer ``seed`` (not a PRNG key: refused with a
    ConfigError, as a seed outside [0, 2**32) is, rather than jax's TypeError or a wrap)."""
    check_gan_arch(arch, "sample")
    seed = _check_seed(seed, "GAN sample seed", ConfigError)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        # -1 died in an MLIR error, 2.5 in a TypeError
        raise ConfigError(f"sample: n must be a number of images (an integer >= 0), got {n!r}")
    return generate(arch, g_params, arch.sample_latents(jax.random.key(seed), int(n)))


def _compiled_scores(arch: GANArch) -> Callable:
    return arch.program("d_scores", lambda: xla.jit(
        lambda d, x: jax.nn.sigmoid(arch.discriminate(d, x))))


def d_scores(arch: GANArch, d_params: Params, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """σ(D(x)) for every image (host array); in one call for a user's D whose scores depend
    on their batch (:meth:`GANArch.whole_calls`). ``x``: images of the GAN's shape in [0, 1]
    (0..16 or 0..255 images saturated D's scores to 0 without a word)."""
    check_gan_arch(arch, "d_scores")
    x = arch.check_images(x, "d_scores' images", 0)
    if not len(x):      # (no image: a TypeError inside chunked_apply)
        check_count(chunk, "chunk", " (rows per call)")
        return np.zeros((0,), np.float32)
    return chunked_apply(_compiled_scores(arch), d_params, x, chunk,
                         arch.whole_calls("discriminator", d_params, x))


def save_grid(images: np.ndarray, path, nrow: int = 8, title: str | None = None) -> None:
    """Saves up to nrow² images in [0, 1] as one PNG grid (grey-scale or RGB). The figure is
    built without pyplot: switching the process's backend (``matplotlib.use("Agg")``) turned a
    notebook's inline plots off for the rest of the session.

    Raises:
      DataError: images outside [0, 1] (0..255 images were clipped to a near-white grid,
        a tanh generator's to half black).
    """
    from matplotlib.figure import Figure

    from hyperforget_jax import report

    check_count(nrow, "save_grid: nrow", " (images per row)")     # 0: a ZeroDivisionError
    if np.ndim(images) != 4:
        raise DataError(f"save_grid: images must be (N, H, W, C), got shape {np.shape(images)}")
    images = np.asarray(images[: nrow * nrow], np.float32)
    if not np.isfinite(images).all():    # min/max comparisons are False for NaN
        raise NonFiniteError(f"save_grid: {int((~np.isfinite(images)).sum())} pixel values are "
                             "NaN/inf; the generator diverged - plot a finite generator's "
                             "samples")
    if images.size and (images.min() < -1e-6 or images.max() > 1 + 1e-6):
        raise DataError(f"save_grid: images with values in [{images.min():.3g}, "
                        f"{images.max():.3g}]; pass images in [0, 1] (divide 0..255 images "
                        "by 255, map a tanh output with (x + 1) / 2)")
    images = np.clip(images, 0, 1)
    n, h, w, c = images.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + 2), nrow * (w + 2), c), np.float32)
    for k, im in enumerate(images):
        r, q = divmod(k, nrow)
        grid[r * (h + 2) + 1: r * (h + 2) + 1 + h, q * (w + 2) + 1: q * (w + 2) + 1 + w] = im
    fig = Figure(figsize=(0.32 * nrow + 0.2, 0.32 * rows + (0.4 if title else 0.2)))
    ax = fig.subplots()
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    report.save_figure(fig, path)
