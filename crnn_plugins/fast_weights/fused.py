"""The `fused` fast-weights backend: the C++/CUDA custom ops ``torch.ops.crnn.fastweights_*``.

``fastweights_fused`` has exactly the signature and results of
``fastweights_reference`` (see that module for the equations). The kernels live in
``csrc/`` and are found, in this order:

1. the extension built by ``setup.py`` (``crnn_plugins._fastweights_C``);
2. a just-in-time build with ``torch.utils.cpp_extension.load`` (ninja) into a cache
   directory (``$CRNN_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/crnn/kernels``, else
   ``~/.cache/crnn/kernels``), one directory per hash of sources, flags and versions,
   guarded by a file lock so that concurrent processes build it once;
3. neither: ``load_status()`` returns ``(False, reason)`` and nothing raises here;
   ``backend="auto"`` (``fastweights_layer``) then runs the reference with one warning.

Importing this module registers the ops (``torch.ops.crnn.*``, ready for ``torch.compile``
and ``torch.export``) when the prebuilt extension or a cached JIT build is there; a JIT
build that has yet to be compiled waits for the first use (``load_status()``), so that an
import never compiles for a minute.

Environment variables:

``CRNN_NO_FUSED=1``      never load the fused kernel (as if it could not be built)
``CRNN_NO_JIT=1``        use the prebuilt or an already cached build, never compile
``CRNN_KERNEL_CACHE``    cache directory for JIT builds
``CRNN_CPU_ARCH``        JIT builds: compile the CPU kernel for this one ``-march`` (``native``,
                         ``none``, ...) instead of the baseline/AVX2/AVX-512 paths (cpu_isa.py)
``CRNN_CPU_CAPABILITY``  use this compiled CPU path (``baseline``, ``avx2``, ...) instead of the
                         best one the CPU runs; a path the CPU cannot run, or one not compiled,
                         is ignored with a warning (select_cpu_path)
``CRNN_VERBOSE_BUILD=1`` show the compiler's output
``CRNN_NO_POOL=1``       no private block pool for the CPU op's large outputs (block_pool_info)

Autograd (``torch.library.register_autograd``) and fake implementations
(``torch.library.register_fake``, for ``torch.compile`` and meta tensors) are
registered here, once, when the ops load.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from crnn_core.base import torch_ops
from crnn_core.base.env import env_flag, logger
from crnn_plugins.fast_weights import cpu_isa

__all__ = [
    "block_pool_info",
    "build_info",
    "select_cpu_path",
    "device_status",
    "fastweights_fused",
    "load_status",
    "kernel_sources",
]

PREBUILT_MODULE = "crnn_plugins._fastweights_C"
CPU_SOURCES = ("fastweights_op.cpp",)
CUDA_SOURCES = ("fastweights_cuda_glue.cpp", "fastweights_cuda.cu")
HEADERS = ("fastweights_checks.h", "fastweights_cuda.h", "fastweights_cuda_device.h", "fastweights_cuda_warp.h",
           "fastweights_params.h", *cpu_isa.PATH_HEADERS)

_lock = threading.Lock()
_state: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------
# Locating and building the extension


def kernel_sources() -> Path | None:
    """The directory holding the kernel sources (the repository's ``csrc/`` or the packaged copy)."""
    here = Path(__file__).resolve().parent.parent  # crnn_plugins/
    for candidate in (here.parent / "csrc", here / "csrc"):
        if (candidate / CPU_SOURCES[0]).is_file():
            return candidate
    return None


def _cache_root() -> Path:
    if os.environ.get("CRNN_KERNEL_CACHE"):
        return Path(os.environ["CRNN_KERNEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crnn" / "kernels"


def _want_cuda() -> tuple[bool, str]:
    """Whether a JIT build should include the CUDA kernels, and why (not)."""
    if torch.version.cuda is None:
        return False, "this PyTorch is a CPU build"
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home is None or not (Path(home, "bin", "nvcc").exists() or shutil.which("nvcc")):
        return False, "nvcc / CUDA_HOME not found"
    return True, "nvcc and a CUDA PyTorch"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _cpu_arch() -> str | None:
    return os.environ.get("CRNN_CPU_ARCH") or None


def _jit_build(src: Path, allow_build: bool = True) -> tuple[Any, str]:
    from torch.utils import cpp_extension

    with_cuda, _ = _want_cuda()
    sources = [src / s for s in CPU_SOURCES] + ([src / s for s in CUDA_SOURCES] if with_cuda else [])
    paths, glue_defines = cpu_isa.planned_paths(_cpu_arch())
    cflags = ["-O3", "-fopenmp", "-Wno-psabi", *glue_defines] + (["-DCRNN_WITH_CUDA"] if with_cuda else [])
    cuda_flags = ["-O3"] if with_cuda else []
    digest = hashlib.sha256()
    for path in sources + [src / p.source for p in paths] + [src / h for h in HEADERS if (src / h).exists()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(repr((cflags, cuda_flags, paths, torch.__version__, sys.version_info[:2], platform.machine())).encode())
    if any(p.march == "native" for p in paths):  # a cache shared between different CPUs
        digest.update(_cpu_signature().encode())
    name = "crnn_fastweights_" + digest.hexdigest()[:16]
    build_dir = _cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / f"{name}{_ext_suffix()}"
    marker = build_dir / "built.ok"
    with _file_lock(build_dir / "crnn-build.lock"):
        if marker.exists() and lib.exists():
            try:
                return _import_from_file(name, lib), f"JIT build cached in {build_dir}"
            except ImportError:  # a corrupt or foreign file: rebuild below
                marker.unlink(missing_ok=True)
        if env_flag("CRNN_NO_JIT"):
            raise _NoJit("the JIT build is disabled (CRNN_NO_JIT=1) and nothing is cached")
        if not allow_build:
            raise _BuildDeferred(str(build_dir))
        cpp_extension.verify_ninja_availability()
        started = time.monotonic()
        logger.info(f"crnn: compiling the fused fast-weights kernel into {build_dir} (about a minute, once)...")
        # The per-ISA objects need their own -march, which load() cannot give per source:
        # compiled first, then linked after the glue (cpu_isa.py).
        objects = cpu_isa.compile_paths(paths, src, build_dir / "cpu_paths", cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                                        verbose=env_flag("CRNN_VERBOSE_BUILD"))
        module = cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources],
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_flags,
            extra_ldflags=[*(str(obj) for obj in objects), "-fopenmp"],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=True,
            verbose=env_flag("CRNN_VERBOSE_BUILD"),
        )
        marker.write_text(f"{time.ctime()} {time.monotonic() - started:.0f}s\n")
    return module, f"JIT-compiled into {build_dir}"


class _NoJit(RuntimeError):
    pass


class _BuildDeferred(RuntimeError):
    """A JIT build is needed and was not allowed (at import): left to the first use."""


def _ext_suffix() -> str:
    return ".pyd" if sys.platform == "win32" else ".so"  # what torch's load() names the library


def _import_from_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock (released by the OS if the process dies).

    ``flock`` where it exists (kept by hand: docs/architecture.md, "Kept by hand"); elsewhere
    (Windows) ``filelock``, which PyTorch installs, if importable; else none (torch's own
    FileBaton in ``cpp_extension.load`` still serialises the compile).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux/macOS
        try:
            from filelock import FileLock
        except ImportError:
            yield
            return
        with FileLock(str(path)):
            yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _prebuilt_is_stale(src: Path | None) -> bool:
    """In a source checkout, a prebuilt library older than the kernel sources is stale."""
    spec = importlib.util.find_spec(PREBUILT_MODULE)
    if spec is None or spec.origin is None or src is None:
        return False
    here = Path(__file__).resolve().parent.parent  # crnn_plugins/
    if src != here.parent / "csrc":  # packaged sources: installed together with the library
        return False
    built = Path(spec.origin).stat().st_mtime
    files = CPU_SOURCES + HEADERS + cpu_isa.PATH_SOURCES
    return any((src / f).stat().st_mtime > built for f in files if (src / f).exists())


def _load(allow_build: bool = True) -> dict[str, Any] | None:
    """Load (or build) the extension and register its Python parts; None if a build was needed
    and not allowed."""
    if env_flag("CRNN_NO_FUSED"):
        return {"ok": False, "reason": "disabled by CRNN_NO_FUSED=1"}
    if "CRNN_NO_POOL" in os.environ:  # read by the C++ op, which takes only "0"/"" as off: give it env_flag's reading
        os.environ["CRNN_NO_POOL"] = "1" if env_flag("CRNN_NO_POOL") else "0"
    src = kernel_sources()
    notes = []
    module = None
    how = ""
    try:
        if importlib.util.find_spec(PREBUILT_MODULE) is None:
            notes.append(f"no prebuilt {PREBUILT_MODULE}")
        elif _prebuilt_is_stale(src):
            notes.append(f"prebuilt {PREBUILT_MODULE} is older than csrc/ (rebuild with pip install -e .)")
        else:
            module = importlib.import_module(PREBUILT_MODULE)
            how = f"prebuilt {PREBUILT_MODULE}"
    except Exception as exc:  # noqa: BLE001 - any import failure means: try the JIT
        notes.append(f"prebuilt {PREBUILT_MODULE} failed to import: {exc}")
    if module is None:
        if src is None:
            notes.append("kernel sources (csrc/) not found for a JIT build")
            return {"ok": False, "reason": "; ".join(notes)}
        try:
            module, how = _jit_build(src, allow_build)
        except _BuildDeferred:
            return None
        except _NoJit as exc:
            notes.append(str(exc))
            return {"ok": False, "reason": "; ".join(notes)}
        except Exception as exc:  # noqa: BLE001 - report, never raise
            lines = str(exc).strip().splitlines()
            errors = [ln.strip() for ln in lines if "error" in ln.lower() and "build stopped" not in ln]
            detail = errors[0] if errors else (lines[-1] if lines else "")
            notes.append(f"JIT build failed: {type(exc).__name__}: {detail[:300]} (CRNN_VERBOSE_BUILD=1 shows the log)")
            return {"ok": False, "reason": "; ".join(notes)}
    try:
        _register_python_parts()
        forced = os.environ.get(cpu_isa.CAPABILITY_ENV, "").strip()
        if forced:
            problem = _set_cpu_path(module, forced)
            if problem:
                logger.warning(f"crnn: {cpu_isa.CAPABILITY_ENV}={forced} ignored: {problem}")
        info = dict(module.build_info())
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "reason": f"{how} loaded but failed to register: {exc}"}
    return {"ok": True, "reason": _describe(how, info), "how": how, "info": info, "module": module}


def _describe(how: str, info: dict[str, Any]) -> str:
    return f"{how}; cpu path {info.get('cpu_isa')}" + (", cuda" if info.get("cuda") else ", no cuda kernel")


def _set_cpu_path(module: Any, name: str) -> str | None:
    """Select the compiled CPU path ``name`` in ``module``; None, or why it was not selected."""
    info = module.build_info()
    compiled, runnable = list(info["cpu_paths"]), list(info["cpu_paths_runnable"])
    if name not in compiled:
        return f"no CPU path {name!r} was compiled (compiled: {', '.join(compiled)}); using {info['cpu_isa']}"
    if name not in runnable or not module.set_cpu_path(name):
        return f"this CPU cannot run the {name} path (it runs: {', '.join(runnable)}); using {info['cpu_isa']}"
    return None


def select_cpu_path(name: str | None = None) -> str:
    """Use the compiled CPU path ``name`` from now on (None: the best this CPU runs); returns the path in use.

    The environment variable ``CRNN_CPU_CAPABILITY`` does the same when the ops load.
    Raises ValueError (one line) for a path that was not compiled or that this CPU cannot
    run, and RuntimeError if the fused ops are not loaded.
    """
    state = _get_state()
    module = state.get("module")
    if not state.get("ok") or module is None:
        raise RuntimeError(f"the fused fast-weights kernel is not available: {state['reason']}")
    with _lock:
        problem = _set_cpu_path(module, name or module.build_info()["cpu_path_best"])
        if problem:
            raise ValueError(problem)
        state["info"] = dict(module.build_info())
        state["reason"] = _describe(state["how"], state["info"])
        return str(state["info"]["cpu_isa"])


def _get_state() -> dict[str, Any]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def _load_at_import() -> None:
    """Register the ops now if that needs no compiling (see the module docstring)."""
    global _state
    torch_ops.uninstall()  # torch.ops.crnn is PyTorch's own from here on
    with _lock:
        if _state is None:
            _state = _load(allow_build=False)


def load_status() -> tuple[bool, str]:
    """``(True, how it was loaded)`` if the fused ops are usable, else ``(False, why not)``. Never raises."""
    state = _get_state()
    return bool(state["ok"]), str(state["reason"])


# torch.compile runs load_status eagerly and takes its result as a constant, so that a first
# use under compile (a JIT build left to it) does not trace the loader's lock. This is the
# mark torch.compiler.assume_constant_result sets; set here without it, which would import
# torch._dynamo (seconds) into every process that imports the layer.
load_status._dynamo_marked_constant = True  # type: ignore[attr-defined]


def build_info() -> dict[str, Any]:
    """What the loaded extension was compiled with; empty if not loaded.

    ``cuda``, ``openmp``, ``cpu_isa`` (the CPU path in use), ``cpu_paths`` (the compiled
    paths, lowest first), ``cpu_paths_runnable`` (those this CPU runs) and ``cpu_path_best``.
    """
    return dict(_get_state().get("info", {}))


def block_pool_info() -> dict[str, Any]:
    """The CPU kernel's private block pool (fastweights_op.cpp): ``enabled`` (off with
    ``CRNN_NO_POOL=1``), ``cached_bytes``, ``limit_bytes``, ``min_block_bytes``; empty if not loaded."""
    state = _get_state()
    module = state.get("module")
    if not state.get("ok") or module is None or not hasattr(module, "block_pool_info"):
        return {}
    return dict(module.block_pool_info())


def device_status(device: str | torch.device) -> tuple[bool, str]:
    """Whether the fused op can run on ``device`` and why (not)."""
    ok, reason = load_status()
    if not ok:
        return False, reason
    dev = torch.device(device)
    if dev.type == "cpu":
        return True, reason
    if dev.type == "cuda":
        if not build_info().get("cuda"):
            return False, f"the fused extension was built without CUDA ({_want_cuda()[1]})"
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        return True, reason
    return False, f"no fused kernel for device type {dev.type!r}"


# ---------------------------------------------------------------------------------------
# The public function, autograd and fake implementations


def fastweights_fused(
    xp: Tensor,
    h0: Tensor,
    A0: Tensor | None,
    W: Tensor,
    gamma: Tensor,
    beta: Tensor,
    lam: float,
    eta: float,
    inner_steps: int,
    activation: str = "relu",
    eps: float = 1e-5,
    a_update: str = "previous",
    *,
    final_state: bool = True,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fast-weights unroll with the fused kernel; same arguments and results as ``fastweights_reference``.

    Returns ``(outputs [B, T, H], A_T [B, H, H])``, or ``(outputs, None)`` with
    ``final_state=False`` (A_T is not computed). ``A0=None`` means all-zero initial fast
    weights, which the op then neither allocates nor reads; besides ``[B, H, H]``, ``A0`` may
    be one ``[H, H]`` matrix shared by the whole batch (a tiled learned ``A_0``): the kernel
    reads it once instead of a copy per example, and its gradient is the batch sum.
    Differentiable in all tensor arguments but ``lengths`` (int64 ``[B]`` in [1, T] on ``xp``'s
    device, or None: see ``fastweights_reference``; the op checks it), twice too: with
    ``create_graph=True`` the backward recomputes the unroll with the reference and
    differentiates it with autograd (``_backward_by_reference``), so that its gradients have a
    graph of their own. Tensors
    share one device and a dtype: float32 or float64, or bfloat16 / float16, which run in
    float32 (the tensors are converted at the op's boundary, the outputs converted back, and
    the gradients come back in the inputs' dtypes); under ``torch.autocast`` the op's own
    autocast rule casts the inputs to float32 and returns float32.
    """
    ok, reason = load_status()
    if not ok:
        raise RuntimeError(f"the fused fast-weights kernel is not available: {reason}")
    if xp.device.type == "cuda" and not build_info().get("cuda"):
        raise RuntimeError(
            "the fused fast-weights kernel was built without CUDA; use the reference backend on GPU "
            f"({_want_cuda()[1]})"
        )
    tensors = (xp, h0, xp.new_empty(0) if A0 is None else A0, W, gamma, beta)  # empty A0: zero (the op's convention)
    result_dtype = _low_precision(tensors, xp)
    if result_dtype is not None:
        tensors = tuple(t.float() if t.dtype in LOW_PRECISION else t for t in tensors)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, A_T, _, _, _ = torch.ops.crnn.fastweights_fwd(
        *(t.contiguous() for t in tensors),
        float(lam),
        float(eta),
        int(inner_steps),
        str(activation),
        float(eps),
        save,
        str(a_update),
        bool(final_state),
        lengths,
    )
    if result_dtype is not None:
        out, A_T = out.to(result_dtype), A_T.to(result_dtype)
    return out, (A_T if final_state else None)


#: Dtypes the kernel has no code for; ``fastweights_fused`` runs them in float32.
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _low_precision(tensors: tuple[Tensor, ...], xp: Tensor) -> torch.dtype | None:
    """The dtype to give the outputs back in if some tensor is bfloat16 / float16 and the op
    must convert them itself (not under autocast, whose rule for the op casts them already), else None."""
    if not any(t.dtype in LOW_PRECISION for t in tensors) or torch.is_autocast_enabled(xp.device.type):
        return None
    return xp.dtype if xp.dtype in LOW_PRECISION else torch.float32


_registered = False


def _register_python_parts() -> None:
    """Fake (meta) implementations and autograd for the C++ ops; idempotent."""
    global _registered
    if _registered:
        return
    lib = "crnn::fastweights_fwd"

    @torch.library.register_fake(lib)
    def _fwd_fake(xp, h0, A0, W, gamma, beta, lam, eta, inner_steps, activation, eps, save, a_update="previous",
                  final_state=True, lengths=None):
        torch._check(xp.dim() == 3, lambda: f"crnn::fastweights_fwd: xp must be [B, T, H], got {tuple(xp.shape)}")
        B, T, H = xp.shape
        out = xp.new_empty((B, T, H))
        A_T = xp.new_empty((B, H, H)) if final_state else xp.new_empty((0,))
        if save:
            zs = xp.new_empty((B, T, inner_steps, H))
            xhat = xp.new_empty((B, T, inner_steps, H))
            rstd = xp.new_empty((B, T, inner_steps))
        else:
            zs, xhat, rstd = xp.new_empty((0,)), xp.new_empty((0,)), xp.new_empty((0,))
        return out, A_T, zs, xhat, rstd

    @torch.library.register_fake("crnn::fastweights_bwd")
    def _bwd_fake(grad_out, grad_AT, h0, A0, W, gamma, out, zs, xhat, rstd, lam, eta, inner_steps,
                  activation, need_dA0, a_update="previous", lengths=None):
        B, T, H = out.shape
        dA0 = out.new_empty((H, H) if A0.dim() == 2 else (B, H, H)) if need_dA0 else out.new_empty((0,))
        return (out.new_empty((B, T, H)), out.new_empty((B, H)), dA0, out.new_empty((H, H)),
                out.new_empty((H,)), out.new_empty((H,)))

    def _setup_context(ctx, inputs, output):
        xp, h0, A0, W, gamma, beta, lam, eta, inner_steps, activation, eps, save, a_update, *rest = inputs
        lengths = rest[1] if len(rest) > 1 else None  # (final_state, lengths) when given
        out, A_T, zs, xhat, rstd = output
        ctx.mark_non_differentiable(zs, xhat, rstd)
        ctx.set_materialize_grads(False)  # an unused A_T (or out) gets None, not a zero tensor
        ctx.save_for_backward(xp, h0, A0, W, gamma, beta, out, zs, xhat, rstd, lengths)
        ctx.fw_args = (lam, eta, inner_steps, activation, eps, save, a_update)

    def _backward(ctx, g_out, g_AT, _g_zs, _g_xhat, _g_rstd):
        xp, h0, A0, W, gamma, beta, out, zs, xhat, rstd, lengths = ctx.saved_tensors
        lam, eta, inner_steps, activation, eps, save, a_update = ctx.fw_args
        if not save:
            raise RuntimeError(
                "crnn::fastweights_fwd was called with save=False (no grad needed at the time), "
                "so it cannot be differentiated; call it with save=True"
            )
        need = ctx.needs_input_grad
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (xp, h0, A0, W, gamma, beta, g_out, g_AT)):
            grads = _backward_by_reference((xp, h0, A0, W, gamma, beta), need[:6], g_out, g_AT,
                                           (lam, eta, inner_steps, activation, eps, a_update), lengths)
            return grads + (None,) * (len(need) - 6)
        dxp, dh0, dA0, dW, dgamma, dbeta = torch.ops.crnn.fastweights_bwd(
            None if g_out is None else g_out.contiguous(),
            None if g_AT is None or g_AT.numel() == 0 else g_AT.contiguous(),  # empty: A_T was not computed
            h0, A0, W, gamma, out, zs, xhat, rstd,
            lam, eta, inner_steps, activation, bool(need[2]), a_update, lengths,
        )
        grads = (dxp, dh0, dA0, dW, dgamma, dbeta)
        return tuple(g if n else None for g, n in zip(grads, need[:6])) + (None,) * (len(need) - 6)

    torch.library.register_autograd(lib, _backward, setup_context=_setup_context)
    _registered = True


def _backward_by_reference(
    inputs: tuple[Tensor, ...], need: tuple[bool, ...], g_out: Tensor | None, g_AT: Tensor | None, args: tuple,
    lengths: Tensor | None = None,
) -> tuple[Tensor | None, ...]:
    """The op's backward as a differentiable function, for ``create_graph=True``.

    The kernel's backward is not itself differentiable, so here the unroll is recomputed
    with ``fastweights_reference`` from the op's saved inputs (which keep their own graph)
    and differentiated with autograd: the same gradients (up to rounding), with a graph a
    second backward (a Hessian-vector product, a gradient penalty) can go through.
    """
    from .reference import reference_unroll

    xp, h0, A0, W, gamma, beta = inputs
    lam, eta, inner_steps, activation, eps, a_update = args
    A0_ref = None if A0.numel() == 0 else (A0.expand(xp.shape[0], *A0.shape) if A0.dim() == 2 else A0)
    with torch.enable_grad():
        out, A_T = reference_unroll(xp, h0, A0_ref, W, gamma, beta, lam, eta, inner_steps, activation, eps,
                                    a_update, final_state=g_AT is not None and g_AT.numel() > 0, lengths=lengths)
    pairs = [(o, g) for o, g in ((out, g_out), (A_T, g_AT)) if g is not None and o is not None]
    wanted = [t for t, n in zip(inputs, need) if n]
    found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                     allow_unused=True) if pairs and wanted else [None] * len(wanted))
    grads = [next(found) if n else None for n in need]
    return tuple(torch.zeros_like(t) if n and g is None else g for t, n, g in zip(inputs, need, grads))


_load_at_import()
