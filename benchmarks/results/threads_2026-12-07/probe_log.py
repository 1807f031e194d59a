"""Log each thread-count probe of one ART epoch beside N busy processes: python benchmarks/results/threads_2026-12-07/probe_log.py INIT N."""
import sys, time, statistics, subprocess, torch
sys.path.insert(0, "benchmarks")
from art_epoch import competitors
from crnn_core import ModelSpec, TrainConfig, build_model, fit
from crnn_core.plugin_manager import manager
from crnn_core.training import threads as T
log = []
orig_pick = T.pick
def pick(times, current):
    c = orig_pick(times, current); log.append((dict((k, round(v*1e3,2)) for k,v in times.items()), c)); return c
T.pick = pick
orig_rec = T.ThreadChooser.record
steps = []
def rec(self, s): steps.append((torch.get_num_threads(), s)); orig_rec(self, s)
T.ThreadChooser.record = rec
from crnn_core.plugin_manager.manager import PluginSystem
plugins = PluginSystem(load_entry_points=False).fill()
init = sys.argv[1]
built = build_model(ModelSpec("fastweights", init, "art"), plugins)
with competitors(int(sys.argv[2])):
    t = time.perf_counter(); fit(built.model, built.task, TrainConfig(epochs=1)); print("epoch", round(time.perf_counter()-t,2))
for l in log: print(l)
for n in (1,2):
    xs=[s for c,s in steps if c==n]
    if xs: print(n, "threads: steps", len(xs), "median ms", round(statistics.median(xs)*1e3,2), "mean", round(statistics.mean(xs)*1e3,2))
