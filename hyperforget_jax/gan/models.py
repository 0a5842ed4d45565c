"""Small DCGAN-style generators and discriminators (Flax Linen) and the :class:`GANArch` handle.

Two families, chosen by ``GANArch.name``:

* ``"dcgan"`` (the default for 28×28 and 32×32 images): DCGAN layout (Radford et al. 2016):
  G = Dense → reshape → stride-2 4×4 transposed convolutions with ReLU → image; D = stride-2
  4×4 convolutions with LeakyReLU(0.2) → Dense(1) logit. Widths are halved per up-sampling
  stage from ``width``. Where DCGAN normalises G's hidden layers with BatchNorm, we use a
  per-sample layer norm (``GroupNorm`` with one group: learnable scale and bias per channel, no
  batch statistics, no running averages) [ours]: without any normalisation the same G trained
  2× slower to a worse classifier-FID on MNIST-5k (exploratory runs, docs/gan.md).
  Convolutions are :mod:`hyperforget_jax.layers` (fast gradients inside XLA:CPU loops).
* ``"mlp"``: the same adversarial game with dense layers only (G 100→256→512→H·W·C,
  D H·W·C→512→256→1, LeakyReLU(0.2)); the default for other image sizes (``"auto"``).

No BatchNorm anywhere: every model is described by its ``params`` pytree alone (as in
:mod:`hyperforget_jax.models`), so G and D steps are pure functions that jit, pmap and shard
without mutable collections, a sharded batch gives exactly the single-device update, and
G(z) does not depend on the other codes of its batch (the substitution mechanism maps single
codes). Images are float32 NHWC in [0, 1]: G ends with ``(tanh + 1) / 2`` and D maps its input
to [-1, 1] first, so the real data needs no rescaling.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import layers
from hyperforget_jax import params as P_
from hyperforget_jax.data import check_unit_images
from hyperforget_jax.errors import ArchitectureError, ConfigError, DataError, kind_of
from hyperforget_jax.models import _Programs

Params = Any
GAN_ARCHS = ("mlp", "dcgan")
#: Image sizes the ``dcgan`` pair supports (its G up-samples a 7×7 or 4×4 base by 2 per stage).
DCGAN_SIZES = (28, 32)
#: Priors of the latent codes z: ``"normal"``, z ~ N(0, I) (DCGAN's); ``"mixture"``, an equal
#: mixture of K Gaussians N(μ_k, σ² I) around fixed means μ_k ~ N(0, I) (drawn once from
#: ``MIXTURE_SEED``, the same for every GAN of a size) [ours, after the static Gaussian-mixture
#: prior of GM-GAN, Ben-Yosef & Weinshall 2018]; K and σ are fields of the architecture
#: (:class:`GANArch`; defaults ``MIXTURE_COMPONENTS``, ``MIXTURE_SIGMA``). A G fed one
#: connected Gaussian must pass through hybrids of two digits wherever its images change class;
#: the mixture's components lie apart (‖μ_j − μ_k‖ ≈ 14 in 100 dimensions, about 5.6 σ along
#: the line between two means), so G can change class between them, where there are no codes.
#: Probes on MNIST-5k (docs/gan.md): at σ 2 the mixture lowered the retrained GAN's share of
#: the class it never saw but cost the Original's downstream accuracy; σ 2.5 keeps it.
LATENT_PRIORS = ("normal", "mixture")
MIXTURE_COMPONENTS = 20
MIXTURE_SIGMA = 2.5
MIXTURE_SEED = 777
#: What a stored ``"mixture"`` architecture without its K and σ (runs of 2026-12-05, before
#: they were fields) was drawn from.
LEGACY_MIXTURE = (20, 2.0)


def sample_mixture(key: jax.Array, n: int, latent_dim: int,
                   components: int = MIXTURE_COMPONENTS,
                   sigma: float = MIXTURE_SIGMA) -> jax.Array:
    """``n`` codes from the ``"mixture"`` prior (see ``LATENT_PRIORS``): a component k drawn
    uniformly per code, then μ_k + σ·ε.

    >>> z = sample_mixture(jax.random.key(0), 4096, 100)
    >>> z.shape, round(float(z.var()))  # Var = Var(μ) + σ² = 1 + 6.25
    ((4096, 100), 7)
    """
    kc, ke = jax.random.split(key)
    k = jax.random.randint(kc, (n,), 0, components, dtype=jnp.int32)
    return (jnp.asarray(mixture_means(latent_dim, components))[k]
            + sigma * jax.random.normal(ke, (n, latent_dim), jnp.float32))


@functools.cache
def mixture_means(latent_dim: int, components: int = MIXTURE_COMPONENTS) -> np.ndarray:
    """The ``"mixture"`` prior's fixed means μ_k ~ N(0, I), (``components``, ``latent_dim``):
    drawn once per size, a constant in every program that samples codes. Drawn eagerly even
    when the first call comes from inside a trace (``jit``, ``scan``). The means are part of
    the model (a trained G maps codes around them), so they are drawn with JAX's default
    threefry PRNG whatever the process's ``jax_default_prng_impl``: under ``"rbg"`` they were
    other means, and a GAN trained in one process sampled off its prior in the other; so is
    ``jax_threefry_partitionable`` (JAX's default, True: a process that set it to False drew
    other means too)."""
    with jax.ensure_compile_time_eval(), jax.threefry_partitionable(True):
        key = jax.random.key(MIXTURE_SEED, impl="threefry2x32")
        return np.asarray(jax.random.normal(key, (components, latent_dim), jnp.float32))


def check_latent_prior(name: str, components: int = MIXTURE_COMPONENTS,
                       sigma: float = MIXTURE_SIGMA) -> None:
    """Raises :class:`ConfigError` unless ``name`` is in ``LATENT_PRIORS`` and the mixture's
    ``components`` (an integer ≥ 2) and ``sigma`` (> 0, finite) are valid."""
    if name not in LATENT_PRIORS:
        raise ConfigError(f"unknown latent prior {name!r}; choose one of "
                          f"{', '.join(LATENT_PRIORS)}")
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) \
            or components < 2:
        raise ConfigError(f"mixture_components must be an integer >= 2 (the mixture's "
                          f"Gaussians), got {components!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) \
            or not np.isfinite(sigma) or sigma <= 0 or sigma > float(np.finfo(np.float32).max) \
            or np.float32(sigma) == 0:
        # (1e-320 is 0 in float32, where the codes are drawn: every code one of the means)
        raise ConfigError(f"mixture_sigma must be a positive number that float32 holds "
                          f"(each Gaussian's std), got {sigma!r}")


def auto_gan_arch(image_shape: tuple[int, int, int]) -> str:
    """``"dcgan"`` for square 28×28 and 32×32 images, ``"mlp"`` for any other shape.

    >>> auto_gan_arch((28, 28, 1)), auto_gan_arch((8, 8, 1))
    ('dcgan', 'mlp')
    """
    h, w = image_shape[:2]
    return "dcgan" if h == w and h in DCGAN_SIZES else "mlp"


class DCGANGenerator(nn.Module):
    """z (B, latent) → images (B, H, W, C) in [0, 1]; H = W = base · 2^stages."""

    image_shape: tuple[int, int, int]
    width: int = 64

    @nn.compact
    def __call__(self, z):
        h, w, c = self.image_shape
        stages = {28: 2, 32: 3}.get(h)
        base = h // 2 ** stages
        ch = self.width
        norm = lambda x: nn.GroupNorm(num_groups=1)(x)   # per-sample layer norm, see above
        x = nn.Dense(base * base * ch)(z).reshape(z.shape[0], base, base, ch)
        x = nn.relu(norm(x))
        for s in range(stages - 1):
            ch //= 2
            x = nn.relu(norm(layers.ConvTranspose(ch, (4, 4), (2, 2), padding="SAME")(x)))
        x = layers.ConvTranspose(c, (4, 4), (2, 2), padding="SAME")(x)
        return (jnp.tanh(x) + 1.0) / 2.0


class DCGANDiscriminator(nn.Module):
    """images (B, H, W, C) in [0, 1] → real/fake logits (B,)."""

    image_shape: tuple[int, int, int]
    width: int = 64

    @nn.compact
    def __call__(self, x):
        stages = {28: 2, 32: 3}.get(self.image_shape[0])
        x = 2.0 * x - 1.0
        ch = self.width // 2 ** (stages - 1)
        for _ in range(stages):
            x = nn.leaky_relu(layers.Conv(ch, (4, 4), (2, 2), padding="SAME")(x), 0.2)
            ch *= 2
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


class MLPGenerator(nn.Module):
    image_shape: tuple[int, int, int]
    hidden: tuple[int, ...] = (256, 512)

    @nn.compact
    def __call__(self, z):
        x = z
        for width in self.hidden:
            x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
        size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        x = nn.Dense(size)(x).reshape(z.shape[0], *self.image_shape)
        return (jnp.tanh(x) + 1.0) / 2.0


class MLPDiscriminator(nn.Module):
    image_shape: tuple[int, int, int]
    hidden: tuple[int, ...] = (512, 256)

    @nn.compact
    def __call__(self, x):
        x = 2.0 * x.reshape(x.shape[0], -1) - 1.0
        for width in self.hidden:
            x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
        return nn.Dense(1)(x)[:, 0]


@dataclasses.dataclass(frozen=True)
class GANArch:
    """A generator/discriminator pair with its image shape; hashable, so jitted closures can
    capture it. ``init(key) -> (g_params, d_params)``; ``generate(g, z)``; ``discriminate(d, x)``.

    >>> arch = make_gan_arch("mlp", (28, 28, 1))
    >>> arch.param_counts()
    (559632, 533505)
    """

    name: str = "mlp"
    image_shape: tuple[int, int, int] = (28, 28, 1)
    latent_dim: int = 100
    width: int = 64
    latent_prior: str = "normal"
    #: K and σ of the ``"mixture"`` prior (unused by ``"normal"``).
    mixture_components: int = MIXTURE_COMPONENTS
    mixture_sigma: float = MIXTURE_SIGMA
    #: A user's own Flax Linen pair (:func:`make_gan_arch` ``generator=``, ``discriminator=``);
    #: None for the registered pairs, which ``name`` picks.
    g_module: nn.Module | None = dataclasses.field(default=None, repr=False)
    d_module: nn.Module | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_own_programs", None)

    def __getstate__(self) -> dict:
        """Pickled without a user pair's compiled programs (jitted callables do not pickle:
        ``pickle.dumps`` of the arch ``train_gan`` returned failed); the copy compiles anew."""
        return {**self.__dict__, "_own_programs": None}

    @property
    def registered(self) -> bool:
        """True for the library's own pairs (``GAN_ARCHS``), False for a user's modules."""
        return self.g_module is None

    @property
    def generator(self) -> nn.Module:
        if self.g_module is not None:
            return self.g_module
        if self.name == "dcgan":
            return DCGANGenerator(self.image_shape, self.width)
        return MLPGenerator(self.image_shape)

    @property
    def discriminator(self) -> nn.Module:
        if self.d_module is not None:
            return self.d_module
        if self.name == "dcgan":
            return DCGANDiscriminator(self.image_shape, self.width)
        return MLPDiscriminator(self.image_shape)

    def init(self, key: jax.Array) -> tuple[Params, Params]:
        # Compiled whole, once per architecture: op by op, every initialiser compiles per
        # parameter shape (0.5-1 s apiece on XLA:CPU). The same bits (tests/test_gan_models.py).
        # Plain jax.jit: it may run nested (param_shapes' eval_shape).
        return self.program("init", lambda: jax.jit(self._init))(key)

    def _init(self, key: jax.Array) -> tuple[Params, Params]:
        kg, kd = jax.random.split(key)
        g = self.generator.init(kg, jnp.zeros((1, self.latent_dim)))["params"]
        d = self.discriminator.init(kd, jnp.zeros((1, *self.image_shape)))["params"]
        return g, d

    def generate(self, g_params: Params, z: jax.Array) -> jax.Array:
        return self.generator.apply({"params": g_params}, z)

    def discriminate(self, d_params: Params, x: jax.Array) -> jax.Array:
        return self.discriminator.apply({"params": d_params}, x)

    def whole_calls(self, role: str, params: Params, x: Any) -> bool:
        """Whether G (``role="generator"``, ``x`` codes) or D (``"discriminator"``, ``x``
        images) must take ``x`` in one call: a user's module whose rows depend on their batch
        (batch statistics, e.g. centring by the batch mean), checked once per role on 4 rows
        of ``x`` whole and one by one (:func:`hyperforget_jax.metrics.rows_independent`), or
        one row, which the check cannot tell apart (the chunks of :func:`metrics.chunked_apply
        <hyperforget_jax.metrics.chunked_apply>` pad it with zero rows). The registered pairs
        (per-sample layer norm): never."""
        from hyperforget_jax.metrics import rows_independent_once

        fn = self.generate if role == "generator" else self.discriminate
        return not rows_independent_once(self, ("per_example", role), fn, params, x)

    def sample_latents(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` latent codes from the architecture's prior (``LATENT_PRIORS``)."""
        if self.latent_prior == "mixture":
            return sample_mixture(key, n, self.latent_dim, self.mixture_components,
                                  self.mixture_sigma)
        return jax.random.normal(key, (n, self.latent_dim), jnp.float32)

    def describe_prior(self) -> str:
        """The latent prior in words, for reports.

        >>> make_gan_arch("mlp", latent_prior="mixture").describe_prior()
        'a mixture of 20 Gaussians at σ 2.5'
        """
        if self.latent_prior == "mixture":
            return f"a mixture of {self.mixture_components} Gaussians at σ {self.mixture_sigma:g}"
        return "N(0, I)"

    def param_shapes(self) -> tuple[Params, Params]:
        """(G, D) parameter shapes (``jax.ShapeDtypeStruct`` pytrees), traced once per arch."""
        # Tracing init costs ~0.1-1 s and is asked for on every check_params / checkpoint save.
        return self.program("param_shapes",
                            lambda: jax.eval_shape(self.init, jax.random.key(0)))

    def program(self, key: Any, build) -> Any:
        """The compiled callable (or traced value) ``key`` of this architecture, built once by
        ``build()``.

        The owner of a registered pair is the architecture's *value*: such a ``GANArch`` holds
        only library code and plain fields, so its programs are shared by every equal
        ``GANArch`` (a Retrain reuses the Original's compiled epoch), like the registered
        classifiers' programs (:meth:`hyperforget_jax.models.Architecture.program`). A user's
        pair owns its programs itself: no module-level cache keeps the user's modules alive.
        Each owner keeps at most ``models.MAX_PROGRAMS`` (least recently used dropped).
        """
        if self.registered:
            return _GAN_PROGRAMS.setdefault(self, _Programs()).get(key, build)
        if self._own_programs is None:
            object.__setattr__(self, "_own_programs", _Programs())
        return self._own_programs.get(key, build)

    def param_counts(self) -> tuple[int, int]:
        g, d = self.param_shapes()
        return P_.param_count(g), P_.param_count(d)

    def check_params(self, g_params: Params, d_params: Params) -> None:
        """Raises :class:`ArchitectureError` unless the pair fits this architecture."""
        want_g, want_d = self.param_shapes()
        for role, want, got in (("generator", want_g, g_params),
                                ("discriminator", want_d, d_params)):
            ws = jax.tree.map(lambda l: tuple(l.shape), want)
            try:
                gs = jax.tree.map(lambda l: tuple(jnp.shape(l)), got)
            except Exception as e:  # pragma: no cover - exotic inputs
                raise ArchitectureError(f"{role} parameters are not a pytree: {e}") from e
            if ws != gs:
                raise ArchitectureError(f"{role} parameters do not fit GAN {self.name} "
                                        f"{self.image_shape}; were they trained for another "
                                        "GAN architecture?")

    def check_images(self, x, what: str, min_count: int = 1) -> np.ndarray:
        """``x`` as float32 after raising :class:`DataError` unless it holds at least
        ``min_count`` finite floating-point images of this GAN's shape with values in [0, 1]
        (G draws in [0, 1] and D rescales its input from [0, 1]: images in 0..255 would be
        saturated silently)."""
        shape = tuple(np.shape(x))
        if shape[1:] != tuple(self.image_shape):
            raise DataError(f"{what} has images of shape {shape[1:]} but the GAN makes "
                            f"{tuple(self.image_shape)} images; pass images of the dataset the "
                            "GAN was trained on")
        if len(x) < min_count:
            raise DataError(f"{what} holds {len(x)} images, at least {min_count} needed")
        a = np.asarray(x)
        if not jnp.issubdtype(a.dtype, jnp.floating):          # bfloat16 included
            raise DataError(f"{what} has images of dtype {a.dtype}; pass floating-point images "
                            "in [0, 1] (hf.data.from_arrays scales uint8, or divide by 255)")
        return check_unit_images(a, what).astype(np.float32, copy=False)

    def to_json(self) -> dict:
        """The record of run directories. A user's pair is recorded by its modules' reprs
        (``"generator"``, ``"discriminator"``): enough to tell two pairs apart, not to rebuild
        one, so :meth:`from_json` refuses it and names the fix."""
        g, d = self.param_counts()
        return {"name": self.name, "image_shape": list(self.image_shape),
                "latent_dim": self.latent_dim, "width": self.width,
                "latent_prior": self.latent_prior,
                **({"mixture_components": self.mixture_components,
                    "mixture_sigma": self.mixture_sigma} if self.latent_prior == "mixture"
                   else {}),
                **({} if self.registered else {"generator": repr(self.g_module),
                                               "discriminator": repr(self.d_module)}),
                "g_params": g, "d_params": d}

    @classmethod
    def from_json(cls, d: dict) -> "GANArch":
        if "generator" in d:
            # The advice gave make_gan_arch's defaults (N(0, I) codes), where GANConfig's are a
            # mixture: a pair reloaded as told was sampled from another prior, without a word.
            prior = (f"latent_prior='mixture', mixture_components={d.get('mixture_components')}, "
                     f"mixture_sigma={d.get('mixture_sigma')}"
                     if d.get("latent_prior") == "mixture" else "latent_prior='normal'")
            raise ArchitectureError(
                f"the run's GAN is a user's own pair ({d['name']}), which a record cannot "
                "rebuild; load its checkpoint in Python and pass make_gan_arch(generator=..., "
                f"discriminator=..., image_shape={tuple(d['image_shape'])}, "
                f"latent_dim={d.get('latent_dim', 100)}, {prior}) with the same modules (the "
                "CLI runs registered pairs only)")
        # Older runs: no prior means normal; a mixture without K, σ means LEGACY_MIXTURE.
        k, sigma = d.get("mixture_components"), d.get("mixture_sigma")
        if d.get("latent_prior") == "mixture" and k is None:
            k, sigma = LEGACY_MIXTURE
        return make_gan_arch(d["name"], tuple(d["image_shape"]), d.get("latent_dim", 100),
                             d.get("width", 64), d.get("latent_prior", "normal"),
                             MIXTURE_COMPONENTS if k is None else k,
                             MIXTURE_SIGMA if sigma is None else sigma)


#: Programs per GAN architecture value (see :meth:`GANArch.program`).
_GAN_PROGRAMS: dict[GANArch, _Programs] = {}


def make_gan_arch(name: str | None = None, image_shape: tuple[int, int, int] = (28, 28, 1),
                  latent_dim: int = 100, width: int = 64,
                  latent_prior: str = "normal", mixture_components: int = MIXTURE_COMPONENTS,
                  mixture_sigma: float = MIXTURE_SIGMA, *, generator: nn.Module | None = None,
                  discriminator: nn.Module | None = None) -> GANArch:
    """Returns a validated :class:`GANArch`: a registered pair (``name`` in ``GAN_ARCHS``,
    default ``"mlp"``, or ``"auto"``: :func:`auto_gan_arch`; 28×28 or 32×32 images for
    ``dcgan``), or the user's own Flax Linen ``generator`` and ``discriminator`` (``name``, if
    given, is only their display name; default ``"<G class>/<D class>"``). ``latent_prior`` in
    ``LATENT_PRIORS``, with the mixture's ``mixture_components`` ≥ 2 and ``mixture_sigma`` > 0;
    the normal prior keeps their defaults, so equal GANs compare equal.

    A user's pair is checked here, on shapes alone (no compilation): G must map
    (B, ``latent_dim``) codes to (B, *``image_shape``) floating-point images, which it should
    keep in [0, 1] (the real images' range, where D is fed both), and D must map such images to
    one logit per image, shape (B,).

    ``width`` sizes the dcgan pair; the dense ``mlp`` pair has fixed layers and does not read
    it (the value is still part of the arch's identity and record; ``train_gan`` and the CLI
    refuse a width beside the mlp pair).
    """
    if (generator is None) != (discriminator is None):
        raise ConfigError("pass both generator= and discriminator= (your own GAN pair), or "
                          "neither (a registered pair)")
    user = generator is not None
    if user and name in ("auto", *GAN_ARCHS):
        raise ConfigError(f"name={name!r} names a registered GAN pair; drop it to use your own "
                          "generator and discriminator (name= is only their display name)")
    # Sizes are whole numbers >= 1: int() truncated 16.7 to 16 and (8.9, 8, 1) to (8, 8, 1),
    # took True as 1 and (0, 0, 1) / (-8, 8, 1) as shapes; "16" was a bare TypeError.
    try:
        shape = None if isinstance(image_shape, (str, bytes)) else tuple(image_shape)
    except TypeError:           # not a sequence
        shape = None
    if shape is None or len(shape) != 3 or not all(_is_size(s) for s in shape):
        raise ConfigError(f"image_shape must be (H, W, C), three integers >= 1, got "
                          f"{image_shape!r}")
    image_shape = tuple(int(s) for s in shape)
    if name is None:
        name = (f"{type(generator).__name__}/{type(discriminator).__name__}" if user
                else "mlp")
    if name == "auto":
        name = auto_gan_arch(image_shape)
    if not user and name not in GAN_ARCHS:
        raise ConfigError(f"unknown GAN architecture {name!r}; choose one of "
                          f"{', '.join(GAN_ARCHS)}")
    for what, value, least in (("latent_dim", latent_dim, 1), ("width", width, 4)):
        if not _is_size(value) or value < least:
            raise ConfigError(f"{what} must be an integer >= {least}, got {value!r}")
    if name == "dcgan" and (image_shape[0] != image_shape[1] or image_shape[0] not in DCGAN_SIZES):
        raise ConfigError(f"the dcgan GAN supports 28×28 and 32×32 images, got "
                          f"{image_shape[0]}×{image_shape[1]}; use the mlp pair (name='mlp', "
                          "GANConfig(arch='mlp'), the CLI's --gan-arch mlp)")
    if user and width != 64:
        raise ConfigError(f"width ({width}) sizes the registered dcgan pair only; size your "
                          "own generator and discriminator in their modules")
    check_latent_prior(latent_prior, mixture_components, mixture_sigma)
    if latent_prior != "mixture":
        mixture_components, mixture_sigma = MIXTURE_COMPONENTS, MIXTURE_SIGMA
    arch = GANArch(name, image_shape, int(latent_dim), int(width), latent_prior,
                   int(mixture_components), float(mixture_sigma), generator, discriminator)
    if user:
        _check_user_pair(arch)
    return arch


def check_gan_arch(arch: Any, who: str) -> None:
    """ConfigError unless ``arch`` is a :class:`GANArch`, or an object with its interface (a
    stand-in pair): the GAN functions called its methods, an AttributeError for the name
    "mlp" or a GANConfig."""
    if not isinstance(arch, GANArch) and not all(
            hasattr(arch, a) for a in ("image_shape", "generate", "discriminate",
                                       "sample_latents")):
        raise ConfigError(f"{who} takes arch=the GANArch train_gan returned (or "
                          f"make_gan_arch(...)), got {kind_of(arch, GANArch)}")


def _is_size(value) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= 1)


def _check_user_pair(arch: GANArch) -> None:
    """Raises :class:`ConfigError` unless the user's pair are hashable Linen modules that
    initialise and map codes → images of ``arch.image_shape`` → one logit each (shapes only)."""
    for role, m in (("generator", arch.g_module), ("discriminator", arch.d_module)):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"the {role} must be a flax.linen Module, got a "
                              f"{type(m).__name__}; the GAN half takes Linen pairs only")
        try:
            hash(m)
        except TypeError as e:
            raise ConfigError(f"the {role} {type(m).__name__} is not hashable ({e}); give its "
                              "fields hashable values (tuples, not lists or arrays)") from None
    b = 2
    for role, m, shape in (("generator", arch.g_module, (b, arch.latent_dim)),
                           ("discriminator", arch.d_module, (b, *arch.image_shape))):
        try:
            extra = sorted(set(jax.eval_shape(m.init, jax.random.key(0),
                                              jnp.zeros(shape, jnp.float32))) - {"params"})
        except Exception:   # named with its shapes by the check below
            extra = []
        if extra:   # init kept only 'params': BatchNorm then failed with ScopeCollectionNotFound
            raise ConfigError(f"the {role} {type(m).__name__} has mutable collections {extra} "
                              "besides 'params' (BatchNorm?); the GAN half treats each player "
                              "as its params pytree alone: normalise per sample (nn.GroupNorm "
                              "or nn.LayerNorm, as the dcgan pair does)")
    try:
        g, d = arch.param_shapes()
        fake = jax.eval_shape(arch.generate, g, jax.ShapeDtypeStruct((b, arch.latent_dim),
                                                                     jnp.float32))
        logits = jax.eval_shape(arch.discriminate, d,
                                jax.ShapeDtypeStruct((b, *arch.image_shape), jnp.float32))
    except Exception as e:   # a user's module raises anything: name the pair and why
        raise ConfigError(f"the GAN pair {arch.name} does not run on (B, {arch.latent_dim}) "
                          f"codes and (B, *{arch.image_shape}) images ({type(e).__name__}: "
                          f"{e}); check latent_dim= and image_shape=") from None
    if tuple(fake.shape) != (b, *arch.image_shape) or not jnp.issubdtype(fake.dtype,
                                                                         jnp.floating):
        raise ConfigError(f"the generator maps {b} codes to {fake.dtype} {tuple(fake.shape)}, "
                          f"not {b} float images of image_shape={arch.image_shape}; reshape "
                          "its output or pass the image_shape it makes")
    if tuple(logits.shape) != (b,):
        raise ConfigError(f"the discriminator maps {b} images to shape {tuple(logits.shape)}, "
                          f"not one logit per image ({b},); end it with e.g. "
                          "nn.Dense(1)(x)[:, 0]")
