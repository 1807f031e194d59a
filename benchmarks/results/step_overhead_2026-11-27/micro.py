"""The two functions alone, old and new, on the zero-init ART model's gradients and an ART batch index
(one thread, medians of 7 blocks of 2000 calls):

    python benchmarks/results/step_overhead_2026-11-27/micro.py
"""
import statistics
import time

import torch

from crnn_core.training import train
from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.plugin_manager.manager import get_plugins
from crnn_core.training.step import grads_finite

torch.set_num_threads(1)
built = build_model(ModelSpec(cell="fastweights", init="zero", task="art", cell_options={"backend": "fused"}), get_plugins())
net = built.model
for p in net.parameters():
    p.grad = torch.randn_like(p)
data = built.task.dataset("train")
index = torch.randperm(next(iter(data.values())).shape[0])[:128]


def old_check(params):
    groups = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            if not torch.isfinite(p.grad.coalesce().values()).all():
                return False
        elif p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad.detach())
    found = {d: torch.zeros(1, device=d) for d, _ in groups}
    for (d, _), g in groups.items():
        torch._amp_foreach_non_finite_check_and_unscale_(g, found[d], torch.ones(1, device=d))
    return not any(bool(f.item()) for f in found.values())


params = list(net.parameters())
cases = {
    "take, old (value[index])": lambda: {k: v[index] for k, v in data.items()},
    "take, new (index_select)": lambda: train.take(data, index),
    "grads_finite, old, over model.parameters()": lambda: old_check(net.parameters()),
    "grads_finite, new, over the optimizer's list": lambda: grads_finite(p for p in params),
}
for name, f in cases.items():
    blocks = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(2000):
            f()
        blocks.append((time.perf_counter() - t) / 2000 * 1e6)
    print(f"{name:46s} {statistics.median(blocks):6.1f} us  ({min(blocks):.1f}-{max(blocks):.1f})")
