"""The CUDA kernels' device code, run on the CPU: ``csrc/fastweights_cuda.cu`` compiled as C++.

No GPU runs in CI, so the CUDA kernels are compiled against the CPU emulation of the CUDA
runtime in ``tests/cuda_emu/`` (each block's threads are OS threads, ``__syncthreads`` a
barrier, shared memory per block, warp shuffles through per-warp slots) and their forward
and backward compared with the CPU kernel (``torch.ops.crnn``) on shapes that reach every
code path: S > 1, tanh, non-zero A0 and an upstream gradient on A_T, float64, H not a
multiple of 32, the largest supported H (1024), W and the history in shared memory, W in
shared memory past the default 48 KiB (the opt-in path), and both in global memory (forced
by a smaller emulated shared-memory size, ``CRNN_EMU_SMEM_OPTIN``).

For H <= 64 the launcher runs the warp-per-example kernels (``csrc/fastweights_cuda_warp.h``);
the harness is built twice, as shipped and without them (``-DCRNN_CUDA_WARP_MAX_HIDDEN=0``), so
that the block kernels keep their small-H cases. ``CRNN_EMU_SMS`` (the emulated multiprocessor
count) makes the warp launcher put several examples in a block.

The glue's library parts (dA0 = G^T zs, dW, the batch sums of dgamma/dbeta) are formed
here from the kernels' raw outputs the way ``fastweights_cuda_glue.cpp`` forms them.

Tolerances: float64 1e-10, float32 1e-4 (relative to the largest entry), as for the CPU
kernel against the reference.

``CRNN_EMU_TSAN=1`` also builds the harness with ThreadSanitizer and runs it (slower):
one run must be race-free, and the same run with one ``__syncthreads`` deleted from the
source must be reported as a race (the harness can fail).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from crnn_core.base.env import env_flag
from crnn_plugins.fast_weights import fused as ff

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMU = Path(__file__).resolve().parent / "cuda_emu"
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
TSAN = env_flag("CRNN_EMU_TSAN")
LAM, ETA, EPS = 0.95, 0.5, 1e-5

pytestmark = [pytest.mark.skipif(CXX is None, reason="no C++ compiler"), pytest.mark.usefixtures("fused_kernel")]


def build(out_dir: Path, source: Path = CSRC / "fastweights_cuda.cu", tsan: bool = False,
          block_only: bool = False) -> Path:
    """Compile the .cu file (as C++) with the emulated runtime and the harness; returns the binary.
    `block_only`: without the warp-per-example kernels (every H runs the block kernels)."""
    exe = out_dir / (("emu_main_tsan" if tsan else "emu_main") + ("_block" if block_only else ""))
    cmd = [CXX, "-std=c++17", "-pthread", "-Wno-unknown-pragmas", f"-I{EMU}", f"-I{CSRC}",
           *(["-DCRNN_CUDA_WARP_MAX_HIDDEN=0"] if block_only else []),
           "-x", "c++", str(source), "-x", "none", str(EMU / "emu_main.cpp"), "-o", str(exe)]
    cmd[1:1] = ["-O1", "-g", "-fsanitize=thread"] if tsan else ["-O1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe


CUDA_FILES = ("fastweights_cuda.cu", "fastweights_cuda.h", "fastweights_cuda_device.h", "fastweights_cuda_warp.h",
              "fastweights_params.h")


@pytest.fixture(scope="module")
def emu_builds(tmp_path_factory) -> dict[str, Path]:
    """The harness as shipped ("warp": H <= 64 runs one warp per example) and without the
    warp kernels ("block": the block-per-example kernels at every H)."""
    digest = hashlib.sha256()
    for p in sorted(EMU.iterdir()) + [CSRC / name for name in CUDA_FILES]:
        digest.update(p.read_bytes())
    out = tmp_path_factory.mktemp("emu_" + digest.hexdigest()[:8])
    return {"warp": build(out), "block": build(out, block_only=True)}


@pytest.fixture(scope="module")
def emu_exe(emu_builds) -> Path:
    return emu_builds["warp"]




def make_case(B, T, H, dtype, a0_scale, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    xp, h0 = r(B, T, H), r(B, H)
    A0 = a0_scale * r(B, H, H)
    W = 0.05 * torch.eye(H, dtype=dtype) + 0.5 * r(H, H) / H**0.5
    gamma, beta = 1 + 0.1 * r(H), 0.1 * r(H)
    gout, gAT = r(B, T, H), r(B, H, H)
    return [xp, h0, A0, W, gamma, beta], gout, gAT


def run_emulated(exe: Path, work: Path, args, gout, gAT, S: int, act: str, smem_optin: int | None = None,
                 env_extra: dict | None = None, a_update: str = "previous",
                 lengths: torch.Tensor | None = None) -> tuple[dict[str, np.ndarray], list[int], subprocess.CompletedProcess]:
    xp = args[0]
    B, T, H = xp.shape
    dtype = xp.dtype
    work.mkdir(parents=True, exist_ok=True)
    names = ("xp", "h0", "A0", "W", "gamma", "beta")
    for name, t in zip(names, args):
        t.contiguous().numpy().tofile(work / f"{name}.bin")
    if gout is not None:
        gout.contiguous().numpy().tofile(work / "gout.bin")
    if gAT is not None:
        gAT.contiguous().numpy().tofile(work / "gAT.bin")
    if lengths is not None:
        lengths.to(torch.int64).numpy().tofile(work / "lengths.bin")
    size = 4 if dtype == torch.float32 else 8
    (work / "meta.txt").write_text(
        f"{size} {B} {T} {H} {S} {0 if act == 'relu' else 1} {LAM!r} {ETA!r} {EPS!r} "
        f"{int(gout is not None)} {int(gAT is not None)} 1 {int(a_update == 'preliminary')}\n")
    env = dict(os.environ)
    if smem_optin is not None:
        env["CRNN_EMU_SMEM_OPTIN"] = str(smem_optin)
    env.update(env_extra or {})
    proc = subprocess.run([str(exe), str(work)], capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        return {}, [], proc
    np_dtype = np.float32 if size == 4 else np.float64
    shapes = {"out": (B, T, H), "AT": (B, H, H), "zs": (B, T, S, H), "xhat": (B, T, S, H), "rstd": (B, T, S),
              "out_nosave": (B, T, H), "AT_nosave": (B, H, H), "out_noAT": (B, T, H), "dxp": (B, T, H), "dh0": (B, H),
              "dgamma_part": (B, H), "dbeta_part": (B, H), "G": (B, T, S, H)}
    res = {k: np.fromfile(work / f"{k}.bin", dtype=np_dtype).reshape(shape) for k, shape in shapes.items()}
    stats = [int(v) for v in (work / "stats.txt").read_text().split()]
    return res, stats, proc


def cuda_glue_grads(res, args, gAT, S, lengths=None):
    """The library half of fastweights_cuda_glue.cpp's backward: dA0, dW and the batch sums."""
    xp, h0 = args[0], args[1]
    B, T, H = xp.shape
    t = {k: torch.from_numpy(v) for k, v in res.items()}
    dA0 = torch.bmm(t["G"].reshape(B, T * S, H).transpose(1, 2), t["zs"].reshape(B, T * S, H))
    if gAT is not None and lengths is not None:
        dA0 = dA0 + torch.pow(LAM, lengths.double()).to(gAT.dtype).view(B, 1, 1) * gAT
    elif gAT is not None:
        dA0 = dA0 + LAM**T * gAT
    hprev = torch.cat([h0.unsqueeze(1), t["out"][:, : T - 1]], 1)
    dW = t["dxp"].reshape(B * T, H).t() @ hprev.reshape(B * T, H)
    return [t["dxp"], t["dh0"], dA0, dW, t["dgamma_part"].sum(0), t["dbeta_part"].sum(0)]


def cpu_reference(args, gout, gAT, S, act, a_update="previous", lengths=None):
    """The CPU kernel's forward (saving) and backward on the same inputs."""
    out, AT, zs, xhat, rstd = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, S, act, EPS, True, a_update, True,
                                                             lengths)
    grads = torch.ops.crnn.fastweights_bwd(gout, gAT, args[1], args[2], args[3], args[4], out, zs, xhat, rstd,
                                           LAM, ETA, S, act, True, a_update, lengths)
    return {"out": out, "AT": AT, "zs": zs, "xhat": xhat, "rstd": rstd}, list(grads)


def close(a, b, rtol, what):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert torch.isfinite(b).all(), f"{what}: non-finite values from the emulated kernel"
    err = (a - b).abs().max().item() / (a.abs().max().item() + 1e-12)
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


# (B, T, H, S, act, dtype, A0 scale, with gA, emulated opt-in shared memory per block (None:
# an H100's 227 KiB), expected plan: (W in shared memory, history in shared memory), a_update).
CASES = [
    pytest.param(3, 5, 7, 1, "relu", torch.float32, 0.0, False, None, (True, True), id="relu-S1-f32-zeroA0-H7"),
    pytest.param(2, 6, 40, 3, "tanh", torch.float64, 0.2, True, None, (True, True), id="tanh-S3-f64-A0-gA-H40"),
    pytest.param(2, 4, 50, 2, "relu", torch.float32, 0.2, True, None, (True, True), id="relu-S2-f32-A0-H50"),
    # more than the default 48 KiB of shared memory (W alone is 50 KiB): the opt-in path, as on a GPU
    pytest.param(2, 3, 80, 1, "relu", torch.float64, 0.1, False, None, (True, True), id="optin-f64-H80"),
    # W and the history in global memory
    pytest.param(2, 9, 33, 2, "tanh", torch.float64, 0.2, True, 2048, (False, False), id="global-f64-H33-S2"),
    # the largest H (W in global memory), with the history in global memory too (a smaller device)
    pytest.param(1, 2, 1024, 1, "relu", torch.float32, 0.05, True, 16384, (False, False), id="largest-H1024"),
    # the authors' update (cell.a_update=preliminary): keys f(p_t) in the workspace, dK in global memory
    pytest.param(2, 6, 40, 3, "tanh", torch.float64, 0.2, True, None, (True, True), "preliminary",
                 id="preliminary-tanh-S3-f64-A0-gA-H40"),
    pytest.param(3, 5, 7, 1, "relu", torch.float32, 0.0, False, None, (True, True), "preliminary",
                 id="preliminary-relu-S1-f32-zeroA0-H7"),
    pytest.param(2, 9, 33, 2, "tanh", torch.float64, 0.2, True, 2048, (False, False), "preliminary",
                 id="preliminary-global-f64-H33-S2"),
]


def planned_bytes(B, T, H, dtype, plan):
    """Shared memory per block the kernels should ask for under `plan` (fastweights_cuda.cu)."""
    size = torch.finfo(dtype).bits // 8
    w, hist = plan
    extra = (H * H if w else 0) + ((T + 1) * H if hist else 0)
    return (3 * H + 2 * (T + 1) + 64 + extra) * size, (3 * H + 3 * (T + 1) + 64 + extra) * size


@pytest.mark.parametrize("B,T,H,S,act,dtype,a0,with_gA,optin,plan,a_update",
                         [c if len(c.values) == 11 else pytest.param(*c.values, "previous", id=c.id) for c in CASES])
def test_emulated_cuda_kernels_match_cpu_kernel(emu_builds, tmp_path, B, T, H, S, act, dtype, a0, with_gA, optin,
                                                plan, a_update):
    """The block-per-example kernels (built without the warp kernels, so that small H reaches them too)."""
    args, gout, gAT = make_case(B, T, H, dtype, a0)
    gAT = gAT if with_gA else None
    res, stats, proc = run_emulated(emu_builds["block"], tmp_path / "case", args, gout, gAT, S, act,
                                    smem_optin=optin, a_update=a_update)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fwd_smem, bwd_smem, max_attr, launches = stats[:4]
    assert launches == 4  # forward saving, forward not saving, forward without A_T, backward
    assert (fwd_smem, bwd_smem) == planned_bytes(B, T, H, dtype, plan), "the case no longer takes its path"
    if fwd_smem > 48 * 1024:
        assert max_attr >= fwd_smem, "the launch needed the shared-memory opt-in attribute"

    compare_with_cpu(res, args, gout, gAT, S, act, dtype, a_update)


def compare_with_cpu(res, args, gout, gAT, S, act, dtype, a_update):
    """Every output, saved tensor and gradient of an emulated run against the CPU kernel's."""
    rtol_f, rtol_g = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    ref_fwd, ref_grads = cpu_reference(args, gout, gAT, S, act, a_update)
    for k in ("out", "AT", "zs", "xhat", "rstd"):
        close(ref_fwd[k], res[k], rtol_f, f"forward {k}")
    close(ref_fwd["out"], res["out_nosave"], rtol_f, "forward out (save=False)")
    close(ref_fwd["AT"], res["AT_nosave"], rtol_f, "forward A_T (save=False)")
    close(ref_fwd["out"], res["out_noAT"], rtol_f, "forward out (A_T not wanted, AT = nullptr)")
    got = cuda_glue_grads(res, args, gAT, S)
    for name, a, b in zip(("dxp", "dh0", "dA0", "dW", "dgamma", "dbeta"), ref_grads, got):
        close(a, b, rtol_g, f"backward {name}")


# --- The warp-per-example kernels (H <= 64) ------------------------------------------------------


def warp_plan(B, T, H, dtype, backward, optin, sms):
    """(shared bytes, examples per block, W in shared memory, keys in shared memory) that the
    warp launcher should choose (plan_warp in csrc/fastweights_cuda_warp.h)."""
    size = torch.finfo(dtype).bits // 8
    per_warp = 3 * H + 2 * (T + 1) if backward else 2 * H + (T + 1)
    wpb = max(1, min(8, -(-B // sms)))
    while wpb > 1 and (T + 1 + wpb * per_warp) * size > optin:
        wpb -= 1
    nbytes = (T + 1 + wpb * per_warp) * size
    w = nbytes + H * H * size <= optin
    nbytes += H * H * size if w else 0
    hist = nbytes + wpb * T * (H | 1) * size <= optin
    nbytes += wpb * T * (H | 1) * size if hist else 0
    return nbytes, wpb, w, hist


H100_OPTIN = 232448
# (B, T, H, S, act, dtype, A0 scale, with gA, emulated opt-in shared memory (None: an H100's),
# emulated multiprocessors, expected (examples per block, W in shared memory, keys in shared
# memory) of the forward, a_update).
WARP_CASES = [
    pytest.param(3, 5, 8, 1, "relu", torch.float32, 0.0, False, None, 132, (1, True, True), "previous",
                 id="H8-S1-f32-zeroA0-one-per-block"),
    # three examples per block, the second block with one warp and no example
    pytest.param(5, 6, 50, 3, "tanh", torch.float64, 0.2, True, None, 2, (3, True, True), "previous",
                 id="H50-S3-f64-A0-gA-3-per-block"),
    pytest.param(5, 6, 50, 3, "tanh", torch.float64, 0.2, True, None, 2, (3, True, True), "preliminary",
                 id="preliminary-H50-S3-f64-A0-gA-3-per-block"),
    # two hidden units per lane (H = 64), T > 32 (a lane dots several keys), eight per block
    pytest.param(8, 40, 64, 1, "relu", torch.float32, 0.2, True, None, 1, (8, True, True), "previous",
                 id="H64-T40-S1-f32-8-per-block"),
    pytest.param(4, 35, 64, 3, "tanh", torch.float64, 0.1, True, None, 1, (4, True, True), "preliminary",
                 id="preliminary-H64-T35-S3-f64"),
    # H not a multiple of 32 with two units per lane; W in shared memory, keys in global memory
    pytest.param(2, 9, 33, 2, "relu", torch.float32, 0.2, True, 6144, 1, (2, True, False), "previous",
                 id="H33-f32-W-smem-keys-global"),
    # W and the keys in global memory
    pytest.param(2, 9, 33, 2, "tanh", torch.float64, 0.2, True, 2048, 1, (2, False, False), "previous",
                 id="H33-f64-global"),
    pytest.param(2, 9, 33, 2, "tanh", torch.float64, 0.2, True, 2048, 1, (2, False, False), "preliminary",
                 id="preliminary-H33-f64-global"),
]


@pytest.mark.parametrize("B,T,H,S,act,dtype,a0,with_gA,optin,sms,plan,a_update", WARP_CASES)
def test_emulated_warp_kernels_match_cpu_kernel(emu_exe, tmp_path, B, T, H, S, act, dtype, a0, with_gA, optin, sms,
                                                plan, a_update):
    """H <= 64 runs one warp per example, several per block: the same results as the CPU kernel on
    every memory plan, both a_updates, S = 1 and 3, float32 and float64."""
    args, gout, gAT = make_case(B, T, H, dtype, a0)
    gAT = gAT if with_gA else None
    optin = optin or H100_OPTIN
    res, stats, proc = run_emulated(emu_exe, tmp_path / "case", args, gout, gAT, S, act, smem_optin=optin,
                                    a_update=a_update, env_extra={"CRNN_EMU_SMS": str(sms)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    fwd_smem, bwd_smem, max_attr, launches, fwd_threads, bwd_threads = stats
    assert launches == 4
    fwd, bwd = warp_plan(B, T, H, dtype, False, optin, sms), warp_plan(B, T, H, dtype, True, optin, sms)
    assert fwd[1:] == plan, "the case no longer takes its path"
    assert (fwd_smem, fwd_threads) == (fwd[0], 32 * fwd[1]) and (bwd_smem, bwd_threads) == (bwd[0], 32 * bwd[1])
    if max(fwd_smem, bwd_smem) > 48 * 1024:
        assert max_attr >= max(fwd_smem, bwd_smem)
    compare_with_cpu(res, args, gout, gAT, S, act, dtype, a_update)


def test_emulated_launch_refuses_bad_shapes(emu_exe, tmp_path):
    """H above the supported 1024 is refused at launch (cudaErrorInvalidValue), not run."""
    args, gout, _ = make_case(1, 2, 1056, torch.float32, 0.0)
    _, _, proc = run_emulated(emu_exe, tmp_path / "big", args, gout, None, 1, "relu")
    assert proc.returncode == 2 and "launch error" in proc.stderr


def test_emulated_launch_refuses_a_batch_beyond_the_grid(emu_exe):
    """B > 2^31 - 1 examples (one block each) is refused, not truncated to an unsigned grid size."""
    proc = subprocess.run([str(emu_exe), "--refuse-huge-batch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- ThreadSanitizer (opt-in: CRNN_EMU_TSAN=1) -------------------------------------------------------

needs_tsan = pytest.mark.skipif(not TSAN, reason="set CRNN_EMU_TSAN=1 to run the ThreadSanitizer checks (slower)")
TSAN_ENV = {"TSAN_OPTIONS": "halt_on_error=0 report_signal_unsafe=0 history_size=2"}
# Per kernel: the file holding the barrier whose removal must be caught (h_t written to shared
# memory at the end of a step and read by other threads at the next one), the barrier, and a
# case that runs the kernel (the warp kernels with three examples in a block).
TSAN_KERNELS = {
    "block": ("fastweights_cuda.cu",
              "    __syncthreads();  // h_t visible to the block (shared or global) before step t+1\n",
              dict(B=1, H=64, sms=132)),
    "warp": ("fastweights_cuda_warp.h",
             "    __syncwarp();  // h_t visible to the warp (shared or global) before step t+1\n",
             dict(B=3, H=50, sms=1)),
}


def run_tsan_case(exe: Path, work: Path, kernel: str, a_update: str = "previous"):
    shape = TSAN_KERNELS[kernel][2]
    args, gout, gAT = make_case(shape["B"], 4, shape["H"], torch.float32, 0.2)
    env = dict(TSAN_ENV, CRNN_EMU_SMS=str(shape["sms"]))
    res, _, proc = run_emulated(exe, work, args, gout, gAT, 2, "tanh", env_extra=env, a_update=a_update)
    return args, gout, gAT, res, proc


@needs_tsan
@pytest.mark.slow
@pytest.mark.parametrize("kernel, a_update", [("block", "previous"), ("warp", "previous"), ("warp", "preliminary")])
def test_tsan_finds_no_race(tmp_path, kernel, a_update):
    exe = build(tmp_path, tsan=True, block_only=kernel == "block")
    args, gout, gAT, res, proc = run_tsan_case(exe, tmp_path / "run", kernel, a_update)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref_fwd, _ = cpu_reference(args, gout, gAT, 2, "tanh", a_update)
    close(ref_fwd["out"], res["out"], 1e-5, "forward out under TSan")


@needs_tsan
@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["block", "warp"])
def test_tsan_catches_a_deleted_barrier(tmp_path, kernel):
    name, barrier, _ = TSAN_KERNELS[kernel]
    source = (CSRC / name).read_text()
    assert source.count(barrier) == 1, "the barrier this test deletes has moved; update TSAN_KERNELS"
    # The mutant sits next to a copy of the .cu, whose quoted includes find it before csrc/'s.
    shutil.copy(CSRC / "fastweights_cuda.cu", tmp_path / "fastweights_cuda.cu")
    (tmp_path / name).write_text(source.replace(barrier, ""))
    exe = build(tmp_path, source=tmp_path / "fastweights_cuda.cu", tsan=True, block_only=kernel == "block")
    *_, proc = run_tsan_case(exe, tmp_path / "run", kernel)
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr, proc.stderr[-3000:]


# --- NaN and inf: the same non-finite pattern as the reference (tests/test_fused_nonfinite.py) ---


@pytest.mark.parametrize("kernel", ["warp", "block"])
@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_emulated_cuda_kernels_propagate_nan_and_inf_as_the_reference(emu_builds, tmp_path, dtype, S, a_update,
                                                                      kernel):
    from .test_fused_nonfinite import poisoned, poisons, reference_patterns, upstream

    B, T = 4, 5
    for n, (label, name, index) in enumerate(poisons(B, T)):
        for bad in (float("nan"), float("inf")):
            inputs = poisoned(B, T, dtype, name, index, bad)
            gout, gAT = upstream(B, T, dtype)
            want = reference_patterns(inputs, gout, gAT, S, a_update)
            args = list(inputs.values())
            res, _, proc = run_emulated(emu_builds[kernel], tmp_path / f"{n}-{bad}", args, gout, gAT, S, "relu",
                                        a_update=a_update, env_extra={"CRNN_EMU_SMS": "2"})
            assert proc.returncode == 0, proc.stderr[-2000:]
            got = dict(zip(("dxp", "dh0", "dA0", "dW", "dgamma", "dbeta"), cuda_glue_grads(res, args, gAT, S)))
            got.update(out=torch.from_numpy(res["out"]), A_T=torch.from_numpy(res["AT"]))
            for key, (nan, inf) in want.items():
                assert torch.equal(torch.isnan(got[key]), nan) and torch.equal(torch.isinf(got[key]), inf), \
                    f"{label} = {bad}: the non-finite pattern of {key} differs from the reference"


# --- Variable lengths: a per-block loop bound; zeros after each example's end ---


@pytest.mark.parametrize("kernel, H", [("warp", 9), ("warp", 64), ("block", 9)])
@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("S, act, dtype, optin", [(1, "relu", torch.float64, None), (2, "tanh", torch.float32, 2048)],
                         ids=["relu-S1-f64-smem", "tanh-S2-f32-global"])
def test_emulated_cuda_kernels_with_lengths_match_cpu_kernel(emu_builds, tmp_path, S, act, dtype, optin, a_update,
                                                             kernel, H):
    """Each example runs its own steps (padding holding NaN and inf): the emulated CUDA kernels
    give the CPU kernel's outputs, saved tensors, A_T and gradients, with exact zeros after each end.
    The warp kernels run the three examples in one block."""
    B, T = 3, 6
    args, gout, gAT = make_case(B, T, H, dtype, 0.2)
    lengths = torch.tensor([4, 6, 1])
    for b, n in enumerate(lengths.tolist()):
        args[0][b, n:] = float("nan")
        args[0][b, n:, 0] = float("inf")
    res, _, proc = run_emulated(emu_builds[kernel], tmp_path / "case", args, gout, gAT, S, act, smem_optin=optin,
                                a_update=a_update, lengths=lengths, env_extra={"CRNN_EMU_SMS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rtol_f, rtol_g = (1e-10, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    ref_fwd, ref_grads = cpu_reference(args, gout, gAT, S, act, a_update, lengths)
    for k in ("out", "AT", "zs", "xhat", "rstd"):
        close(ref_fwd[k], res[k], rtol_f, f"forward {k}")
    close(ref_fwd["out"], res["out_noAT"], rtol_f, "forward out (A_T not wanted)")
    got = cuda_glue_grads(res, args, gAT, S, lengths)
    for name, a, b in zip(("dxp", "dh0", "dA0", "dW", "dgamma", "dbeta"), ref_grads, got):
        close(a, b, rtol_g, f"backward {name}")
    for b, n in enumerate(lengths.tolist()):
        for k in ("out", "zs", "xhat", "rstd", "dxp", "G"):
            assert not res[k][b, n:].any(), f"{k} of example {b} is not zero after its end"
