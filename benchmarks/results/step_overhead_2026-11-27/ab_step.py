"""A/B in one process: train._step with the new ``take`` (index_select) and ``grads_finite`` (one list,
one call) against the old ones swapped in, one thread, interleaved blocks of 150 steps.

    python benchmarks/results/step_overhead_2026-11-27/ab_step.py zero 8
    python benchmarks/results/step_overhead_2026-11-27/ab_step.py learned 6
"""
import sys, time, torch, statistics
from crnn_core.training import train, step as S
from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.plugin_manager.manager import get_plugins
torch.set_num_threads(1)
init = sys.argv[1]
new_take, new_check = train.take, train.grads_finite
def old_take(data, index): return {k: v[index] for k, v in data.items()}
def old_check(params):
    groups = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            if not torch.isfinite(p.grad.coalesce().values()).all(): return False
        elif p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad.detach())
    found = {d: torch.zeros(1, device=d) for d, _ in groups}
    for (d, _), g in groups.items(): torch._amp_foreach_non_finite_check_and_unscale_(g, found[d], torch.ones(1, device=d))
    return not any(bool(f.item()) for f in found.values())
spec = ModelSpec(cell="fastweights", init=init, task="art", cell_options={"backend": "fused"}, task_options={"train_size": 100000, "val_size": 256})
built = build_model(spec, get_plugins())
cfg = train.train_config_from(built.task.training_defaults, {"threads": 1}, {})
loop = train._prepare(built.model, built.task, cfg)
loop.loss_of = S.forward_loss(built.model, built.task.loss, cfg.precision, loop.device, cfg.compile)
order = torch.randperm(100000)
for i in range(50): train._step(loop, built.model, order[i*128:(i+1)*128])
res = {"old": [], "new": []}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 8):
    for name, (tk, ck) in (("old", (old_take, old_check)), ("new", (new_take, new_check))):
        train.take, train.grads_finite = tk, ck
        t = time.perf_counter()
        for i in range(150): train._step(loop, built.model, order[i*128:(i+1)*128])
        res[name].append((time.perf_counter()-t)/150*1e3)
for k, v in res.items(): print(init, k, round(statistics.median(v), 3), "ms/step", [round(x, 3) for x in v])
