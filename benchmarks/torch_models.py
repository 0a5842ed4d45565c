"""PyTorch twins of the library's classifiers and the ∇τ step, for the peer benchmarks.

A straightforward PyTorch implementation, the way one would write it without JAX: ``nn.Module``s,
``torch.optim.AdamW`` with a ``LinearLR`` schedule, two forward passes and one backward per step.
:func:`load_flax_params` copies a Flax params pytree in, so a benchmark can check that both
implementations compute the *same* step (same losses, same parameters) before timing them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Where the twins and their tensors live: "cpu" (the default), or "cuda" for a GPU comparison
# (``set_device``; the benchmarks' ``--torch-device``).
DEVICE = torch.device("cpu")


def set_device(name: str) -> torch.device:
    global DEVICE
    DEVICE = torch.device(name)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--torch-device cuda: this torch sees no CUDA device")
    return DEVICE


def to_device(t: torch.Tensor) -> torch.Tensor:
    return t.to(DEVICE)


class TorchMLP(nn.Module):
    """784 → hidden → ... → classes, ReLU (``mlp``: (256, 256); ``gpt_mlp``: (10,))."""

    def __init__(self, hidden=(256, 256), in_dim=784, num_classes=10):
        super().__init__()
        dims = (in_dim, *hidden, num_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class TorchSmallCNN(nn.Module):
    """``SmallCNN``: conv3×3(32)-relu-avgpool2, conv3×3(64)-relu-avgpool2, dense 128, dense 10.
    Inputs NCHW (PyTorch's native layout); the features are flattened in (H, W, C) order, as
    Flax does, so Flax weights load unchanged."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(7 * 7 * 64, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def make_torch_model(name: str) -> nn.Module:
    if name == "mlp":
        return TorchMLP((256, 256))
    if name == "gpt_mlp":
        return TorchMLP((10,))
    if name == "cnn":
        return TorchSmallCNN()
    raise ValueError(f"no PyTorch twin for {name!r}")


def load_flax_params(model: nn.Module, params) -> nn.Module:
    """Copies a Flax params pytree (``Dense_i``/``Conv_i`` in creation order) into ``model``."""
    convs = [params[k] for k in sorted(params, key=_layer_order) if k.startswith("Conv")]
    denses = [params[k] for k in sorted(params, key=_layer_order) if k.startswith("Dense")]
    t_convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    t_denses = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == len(t_convs) and len(denses) == len(t_denses)
    with torch.no_grad():
        for p, m in zip(convs, t_convs):
            m.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()))
            m.bias.copy_(torch.from_numpy(np.array(p["bias"])))
        for p, m in zip(denses, t_denses):
            m.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).T.copy()))
            m.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    return model.to(DEVICE)


def _layer_order(name: str) -> int:
    return int(name.split("_")[-1])


def to_torch_images(x: np.ndarray, arch_name: str) -> torch.Tensor:
    """NHWC numpy images → the layout the twin expects (NCHW for convolutions)."""
    x = np.asarray(x, np.float32)
    if arch_name == "cnn":
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)).to(DEVICE)


def make_torch_gradtau(model: nn.Module, total_steps: int, lr: float = 1e-3,
                       weight_decay: float = 0.01, final_lr_fraction: float = 0.1,
                       compile_model: bool = False):
    """Returns ``step(xf, yf, xr, yr, tau, alpha) -> loss`` (a 0-d tensor; call ``.item()`` to
    sync): L = α·ReLU(τ − L_f)² + (1 − α)·L_r, AdamW, lr linear to ``final_lr_fraction``·lr.
    ``step.calls`` / ``step.ascent_steps`` count the steps taken and those whose ascent term was
    on (the others back-propagate the retain term only, as the library does).

    ``compile_model``: ``torch.compile`` the model (forward and backward graphs through
    AOTAutograd/Inductor) and the optimiser step.
    """
    # Compiled: a tensor learning rate, or every LinearLR step (a new Python float) would make
    # torch.compile guard-fail and recompile opt.step (8 recompilations, then eager fallback).
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr) if compile_model else lr,
                            weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, final_lr_fraction, total_iters=total_steps)
    fwd = torch.compile(model) if compile_model else model

    def opt_step():
        opt.step()
        sched.step()

    if compile_model:  # the pattern of PyTorch's "compiled optimizer with an LR scheduler"
        opt_step = torch.compile(opt_step, fullgraph=False)

    def step(xf, yf, xr, yr, tau, alpha):
        opt.zero_grad(set_to_none=True)
        l_f = F.cross_entropy(fwd(xf), yf)
        l_r = F.cross_entropy(fwd(xr), yr)
        gap = F.relu(tau - l_f)
        loss = alpha * gap ** 2 + (1.0 - alpha) * l_r
        # As the library's step: while the ascent term is off its gradient is 0, so only the
        # retain term is back-propagated (the same work in both frameworks).
        ascent = alpha * float(gap.detach()) != 0
        (loss if ascent else (1.0 - alpha) * l_r).backward()
        opt_step()
        step.ascent_steps += ascent
        step.calls += 1
        return loss.detach()

    step.ascent_steps = step.calls = 0
    return step
