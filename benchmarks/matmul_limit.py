"""The matrix-multiply limit of a training step: the time ``torch.mm`` alone needs for a model's Linear layers.

Training a fully connected net costs, per step and per ``nn.Linear(in, out)`` at batch ``B``, three products of
``2 * B * in * out`` floating-point operations each: the forward product ``x @ W.T``, the input gradient
``dY @ W`` and the weight gradient ``dY.T @ x``. The first layer's input gradient is not computed by autograd (the
input does not require grad), so it is left out: what remains is the work a step cannot avoid. Timing those
products alone, at the layer's own shapes, gives the seconds per epoch that no implementation of the step can beat
on this machine with this BLAS; a method's epoch divided by it says how much of the step is anything else.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["Product", "linear_products", "time_products"]


@dataclass(frozen=True)
class Product:
    """One matrix product ``(m, k) @ (k, n)`` of a training step, named after its role."""

    layer: int
    role: str  # "forward", "grad_input" or "grad_weight"
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def linear_products(model: nn.Module, batch_size: int, in_shape: tuple[int, ...]) -> list[Product]:
    """The products one training step of ``model`` performs in its ``nn.Linear`` layers, in the order its forward
    pass calls them (found by running it once on an input of shape ``in_shape``)."""
    layers: list[nn.Linear] = []
    hooks = [m.register_forward_hook(lambda module, args, out: layers.append(module))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    if not layers:
        raise ValueError("the model has no nn.Linear layer")
    products = []
    for i, layer in enumerate(layers):
        n_in, n_out = layer.in_features, layer.out_features
        products.append(Product(i, "forward", batch_size, n_in, n_out))
        if i:  # the first layer's input is the data, which needs no gradient
            products.append(Product(i, "grad_input", batch_size, n_out, n_in))
        products.append(Product(i, "grad_weight", n_out, batch_size, n_in))
    return products


def time_products(products: list[Product], steps: int, device: torch.device,
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Run every product ``steps`` times (one epoch of steps) with the memory layouts autograd uses; returns the
    seconds taken, the FLOP count and GFLOP/s, and each product's share."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    # Operands as nn.Linear stores and autograd passes them: W is (out, in), x is (B, in), dY is (B, out).
    operands = []
    for p in products:
        if p.role == "forward":  # x @ W.T
            operands.append((rand(p.m, p.k), rand(p.n, p.k).t()))
        elif p.role == "grad_input":  # dY @ W
            operands.append((rand(p.m, p.k), rand(p.k, p.n)))
        else:  # dY.T @ x
            operands.append((rand(p.k, p.m).t(), rand(p.k, p.n)))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for a, b in operands:  # first-call costs (BLAS handles, kernel selection) stay out of the timing
        torch.mm(a, b)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        for a, b in operands:
            torch.mm(a, b)
    sync()
    seconds = time.perf_counter() - start
    flops = steps * sum(p.flops for p in products)
    return {"seconds": seconds, "flops": flops, "gflops_per_s": flops / seconds / 1e9,
            "products": [{**asdict(p), "flops": p.flops} for p in products]}
