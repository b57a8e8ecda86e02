"""The optimizer of the built-in fine-tuner: AdamW, DeepSC's gradient clipping, and CPU upkeep.

Used by every optimizer step of :mod:`deepsc_tune.backends.builtin._train` (trials and the LR range test).
"""

from __future__ import annotations

from typing import Any

import torch

from deepsc_tune.backends.builtin._settings import TrainSettings

#: Gradients are clipped to this total norm before every optimizer step (as DeepSC does).
GRAD_CLIP_NORM = 100.0

#: On the CPU, optimizer moments below this are zeroed every :data:`FLUSH_EVERY` steps, before
#: they become subnormal (beta1 = 0.9 needs ~170 steps to take 1e-30 below float32's 1.2e-38).
TINY_STATE = 1e-30
FLUSH_EVERY = 64


def build_optimizer(
    params: list[torch.nn.Parameter], settings: TrainSettings, device: torch.device, *, lr: float
) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": settings.weight_decay}
    # The fused kernel is one call per step for all parameters: it matters at ~1 ms per batch.
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_``, but on the CPU the rescale only runs when the norm is over the limit.

    torch always multiplies every gradient by the (usually 1.0) clip factor to avoid a device
    sync; on the CPU there is no sync to avoid and the multiplies cost ~7 % of an MLP step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if grads[0].device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if total > max_norm:
        torch._foreach_mul_(grads, max_norm / (float(total) + 1e-6))


def flush_tiny_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero optimizer moments below :data:`TINY_STATE` before they decay into subnormal floats.

    Adam's first moment of a weight whose gradient is exactly 0 (a gene not expressed in the
    batch, a dead ReLU) shrinks by ``beta1`` every step and spends ~150 steps as a subnormal
    float, which x86 CPUs process far slower: from the third epoch on the MLP lost ~30 % of its
    throughput. ``torch.set_flush_denormal`` would fix it only for threads created after the call,
    so the values are cleared instead. Numerically irrelevant: a moment under 1e-30 moves a
    weight by less than ``1e-22 * learning_rate``.
    """
    with torch.no_grad():
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.dim() and value.is_floating_point():
                    value.masked_fill_(value.abs() < TINY_STATE, 0.0)
