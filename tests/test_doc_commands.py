"""Every command in the docs runs: the shell blocks of README.md, docs/*.md and the measurement logs under
benchmarks/results/, and the CLI spans in their prose; every relative link and anchor resolves.

Each line of a ```bash block is executed, in order, in a scratch directory:

* ``crnn ...`` lines run in this process through click's test runner, shrunk to test size by
  appending options (``--epochs 1``, a few hundred sequences, one seed, one timing repeat; a
  ``crnn bench`` grid keeps the first value the docs give on each axis, ``crnn bench --layer`` one tiny
  shape): the command, its options
  and its outputs are the documented ones, only the sizes differ (a ``--config`` file's task says which
  sizes). ``> file`` redirects stdout. Paths under ``examples/`` are the checkout's. Names that
  stand for a run directory (``RUN_DIR``, ``RUN_A``, ``runs/<run>``, ...) are replaced by tiny runs
  made once for the module, and absolute ``/tmp/...`` paths are moved into the scratch directory.
* ``torchrun`` lines run under torchrun with two processes (gloo, loopback). Those that need GPUs
  or several machines (``--device cuda``, ``--nnodes``) cannot run on a CPU-only CI machine: their
  crnn part is parsed by the real CLI (every option must exist and take its value) and, without
  CUDA, the ``crnn`` command itself must refuse with the one-line CUDA error.
* ``python benchmarks/...`` lines run as scripts, on a partial epoch.
* ``pip install`` and ``bash .ci/run`` lines are what CI runs: the test checks that .ci/run runs
  the same installs and ends with the README's test command. ``pip wheel`` and ``pip install
  X.whl`` lines are what tests/test_wheel.py runs: it must use the same pip options.

The tour in docs/cli.md is run verbatim by tests/test_docs.py and skipped here. Inline spans such
as `crnn sample --steps` are checked against the CLI: the command exists and has each option.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crnn_core.commandline.main import cli

from .conftest import free_port, invoke, torchrun_env
from .test_docs import bash_blocks, docs_plugin_module

ROOT = Path(__file__).resolve().parent.parent
#: The user docs, and the measurement logs beside the raw results (their commands run too).
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "benchmarks" / "results").glob("**/*.md"))]
VERBATIM_ELSEWHERE = {("docs/cli.md", 0)}  # (file, bash block index) run as-is by test_docs.test_cli_tour

#: Appended to a ``crnn run``/``reproduce`` of each task: the documented command at test size.
SHRINK = {
    "art": ["--set", "task.train_size=256", "--set", "task.val_size=128"],
    "lcd": ["--set", "task.train_per_period=20", "--set", "task.val_per_period=10"],
}
#: Words in the docs that stand for a run directory, and which fixture run they become.
PLACEHOLDERS = {
    "runs/<run>": "art_run",
    "runs/grid/": "grid/",
    "ZERO_RUN": "grid/zero_s0",
    "RUN_DIR": "grid/learned_s0",
    "RUN_A": "grid/zero_s0",
    "RUN_B": "grid/learned_s0",
    "RUN": "grid/learned_s0",
}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """(block index, line) for each command line of each ```bash block: continuations joined,
    comment-only lines dropped, shell variables (``A="..."`` lines) expanded."""
    out: list[tuple[int, str]] = []
    variables: dict[str, str] = {}
    for index, block in enumerate(bash_blocks(path)):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            assignment = re.fullmatch(r"([A-Z_]+)=(\".*\"|'.*'|\S+)", line)
            if assignment:
                variables[assignment[1]] = shlex.split(assignment[2])[0]
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            out.append((index, line))
    return out


def documented_commands() -> list[tuple[str, list[tuple[int, str]]]]:
    found = []
    for path in DOC_FILES:
        lines = [(i, line) for i, line in shell_lines(path) if (relative(path), i) not in VERBATIM_ELSEWHERE]
        if lines:
            found.append((relative(path), lines))
    return found


# --------------------------------------------------------------------------- fixtures


def _run_cli(runner, args: list[str]):
    result = invoke(runner, args)
    assert result.exit_code == 0, f"crnn {shlex.join(args)}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory) -> Path:
    """Tiny runs standing in for the docs' placeholders: an lcd grid (zero, learned) and an art run."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("doc-runs")
    runner = CliRunner()
    lcd = ["--task", "lcd", "--cell", "lstm", "--epochs", "1", "--set", "train.threads=1", "-q", *SHRINK["lcd"]]
    _run_cli(runner, ["run", "--init", "zero", *lcd, "--out", str(root / "grid" / "zero_s0")])
    _run_cli(runner, ["run", "--init", "learned", "--set", "init.distribution=normal", *lcd,
                      "--out", str(root / "grid" / "learned_s0")])
    _run_cli(runner, ["run", "--task", "art", "--epochs", "1", "-q", "--set", "train.threads=1", *SHRINK["art"],
                      "--out", str(root / "art_run")])
    return root


@pytest.fixture
def docs_plugin(fresh_plugins):
    """The worked example of docs/plugins.md, registered, so its `--init scalar` commands run."""
    fresh_plugins.register(docs_plugin_module(), name="docs-scalar")
    return fresh_plugins


# --------------------------------------------------------------------------- shrinking


def option_value(args: list[str], name: str, default: str | None = None) -> str | None:
    value = default
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


GRID_AXES = ("--batch", "--length", "--hidden", "--inner-steps")


def config_task(path: Path | str) -> str:
    """The task a ``--config`` file names (``art`` if none): which ``SHRINK`` its run takes."""
    from crnn_core.commandline.configfile import read_config_file

    return read_config_file(Path(path)).data.get("model", {}).get("task") or "art"


def shrink_crnn(args: list[str]) -> list[str]:
    """The documented ``crnn`` arguments with test-size options appended (later options win)."""
    command = args[0]
    if command == "run" and "--resume" not in args:
        config = option_value(args, "--config")
        task = option_value(args, "--task") or (config_task(config) if config else "art")
        return [*args, "--epochs", "1", "--set", "train.threads=1", *SHRINK[task]]
    if command == "reproduce":
        experiment = args[1]
        if "--resume" in args:  # the grid's --set options (the test size among them) are recorded
            return [*args, "--seeds", "1", "--epochs", "1"]
        return [*args, "--seeds", "1", "--epochs", "1", *SHRINK[experiment]]
    if command == "bench" and "--layer" in args:  # the layer cases at one tiny shape instead of the documented ones
        kept = [a for i, a in enumerate(args) if a != "--layer-shape" and args[i - 1] != "--layer-shape"]
        return [*kept, "--layer-shape", "2,4,3", "--repeats", "1", "--warmup", "0"]
    if command == "bench" and "--device" not in args:  # one shape per axis: the first the docs give
        kept, seen, i = [], set(), 0
        while i < len(args):
            if args[i] in GRID_AXES and i + 1 < len(args):
                if args[i] not in seen:
                    kept += args[i:i + 2]
                    seen.add(args[i])
                i += 2
            else:
                kept.append(args[i])
                i += 1
        if "--backend" not in kept:  # compiled compiles every shape (many seconds); test_bench covers it
            kept += ["--backend", "fused", "--backend", "reference", "--backend", "naive"]
        return [*kept, "--repeats", "1", "--warmup", "0"]
    return args


def substitute(line: str, runs: Path, scratch: Path) -> str:
    line = line.replace(" /tmp/", f" {scratch}/tmp/")
    words = []
    for word in shlex.split(line, comments=True):
        if word.startswith("examples/"):  # the checkout's example files (commands run in a scratch directory)
            word = str(ROOT / word)
        for placeholder, target in PLACEHOLDERS.items():
            if word == placeholder or word == placeholder.rstrip("/"):
                word = str(runs / target)
                break
        words.append(word)
    return shlex.join(words)


# --------------------------------------------------------------------------- runners


def needs_hardware(args: list[str]) -> bool:
    return option_value(args, "--device") == "cuda" or "--nnodes" in args


def run_crnn(runner, args: list[str], line: str) -> None:
    if needs_hardware(args) and not torch.cuda.is_available():  # parsed in full, then refused
        result = invoke(runner, shrink_crnn(args))
        assert result.exit_code == 2 and "no CUDA device" in result.stderr, f"{line}\n{result.stderr[-2000:]}"
        return
    redirect = None
    if ">" in args:  # `crnn ... > file`: stdout into the file
        args, redirect = args[:args.index(">")], args[args.index(">") + 1]
    result = invoke(runner, shrink_crnn(args))
    assert result.exit_code == 0, f"{line}\n{result.stderr[-2000:]}"
    if redirect:
        Path(redirect).write_text(result.stdout)
        if "--json" in args:
            json.loads(result.stdout)


def run_torchrun(args: list[str], line: str, scratch: Path, runner) -> None:
    split = args.index("crnn_core")
    launcher, crnn_args = args[1:split - 1], args[split + 1:]
    if needs_hardware(launcher + crnn_args):  # GPUs or several machines: check the crnn part here
        run_crnn(runner, [a for a in crnn_args if a != "..."], line)
        return
    if "--master-port" in launcher:  # the documented port may be taken on this machine: any free one will do
        launcher[launcher.index("--master-port") + 1] = str(free_port())
    else:
        launcher = [*launcher, "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "crnn_core", *shrink_crnn(crnn_args)]
    proc = subprocess.run(command, cwd=scratch, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"


def run_python_script(args: list[str], line: str, scratch: Path) -> None:
    script = ROOT / args[1]
    assert script.is_file(), line
    rest = args[2:]
    if script.name == "art_epoch.py":  # a partial epoch, one repeat
        rest = [*rest, "--repeats", "1", "--train-size", "512", "--threads", "1", "--", "--set", "task.val_size=128"]
    if script.name == "a_update_study.py":  # one seed, one epoch, a few hundred sequences per task
        rest = [*rest, "--seeds", "1", "--epochs", "1", "--keys-set", "train_size=256", "--keys-set", "val_size=128",
                "--", *SHRINK["art"]]
    proc = subprocess.run([sys.executable, str(script), *rest], cwd=scratch, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"


def run_python_module(args: list[str], line: str, scratch: Path) -> None:
    proc = subprocess.run([sys.executable, *args[1:]], cwd=scratch, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"


def check_install_line(args: list[str], line: str) -> None:
    """`pip install [flags] REQ` in the docs: .ci/run runs a pip install with the same flags and
    requirement (its extras a superset), so CI exercises the documented install."""
    flags, requirement = args[2:-1], args[-1]
    base, extras = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", requirement).groups()
    for ci_line in (ROOT / ".ci" / "run").read_text().splitlines():
        words = shlex.split(ci_line, comments=True)
        if not {"pip", "install"} <= set(words):
            continue
        ci_base, ci_extras = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", words[-1]).groups()
        if (ci_base == base and all(f in words for f in flags)
                and set((extras or "").split(",")) - {""} <= set((ci_extras or "").split(","))):
            return
    pytest.fail(f"{line}: .ci/run does not run this install")


def check_wheel_line(args: list[str], line: str) -> None:
    """`pip wheel [flags] .` / `pip install X.whl` in the docs: tests/test_wheel.py builds or installs
    the wheel with the same pip options (it runs in CI, marked slow)."""
    source = (ROOT / "tests" / "test_wheel.py").read_text()
    assert f'"{args[1]}"' in source, f"{line}: tests/test_wheel.py runs no `pip {args[1]}`"
    missing = [a for a in args[2:] if a.startswith("-") and f'"{a}"' not in source]
    assert not missing, f"{line}: tests/test_wheel.py does not use {missing}"


def check_ci_script(line: str) -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    readme = (ROOT / "README.md").read_text()
    assert ci[-1] in readme, f"{line}: .ci/run's last command {ci[-1]!r} is not the README's test command"


@pytest.mark.parametrize("doc,lines", [pytest.param(doc, lines, id=doc) for doc, lines in documented_commands()])
def test_documented_commands_run(doc, lines, fixture_runs, docs_plugin, runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRNN_NO_PLUGINS", "1")
    (tmp_path / "docs" / "figures").mkdir(parents=True)  # for lines that write the docs' figures
    for _, line in lines:
        for part in line.split("&&"):
            args = shlex.split(substitute(part.strip(), fixture_runs, tmp_path), comments=True)
            while re.fullmatch(r"[A-Z_]+=\S*", args[0]):  # NAME=value prefixes: the environment
                monkeypatch.setenv(*args.pop(0).split("=", 1))
            if args[0] == "crnn":
                run_crnn(runner, args[1:], part)
            elif args[0] == "torchrun":
                run_torchrun(args, part, tmp_path, runner)
            elif args[0] == "python" and args[1].startswith("benchmarks/"):
                run_python_script(args, part, tmp_path)
            elif args[:3] == ["python", "-m", "crnn_plugins.experiments.study"]:  # reads the grids the lines above made
                run_python_module(args, part, tmp_path)
            elif args[:2] == ["pip", "wheel"] or (args[:2] == ["pip", "install"] and args[-1].endswith(".whl")):
                check_wheel_line(args, part)
            elif args[:2] == ["pip", "install"]:
                check_install_line(args, part)
            elif args[:2] == ["bash", ".ci/run"]:
                check_ci_script(part)
            else:
                pytest.fail(f"{doc}: no way to run the documented command {part!r}; teach tests/test_doc_commands.py")


# --------------------------------------------------------------------------- inline spans


def inline_cli_spans() -> list[tuple[str, str]]:
    spans = []
    for path in DOC_FILES:
        for span in re.findall(r"(?<!`)`((?:crnn|python -m crnn_core|torchrun)(?: [^`]*)?)`", path.read_text()):
            spans.append((relative(path), span))
    return spans


def test_inline_cli_spans_name_real_commands_and_options():
    """`crnn sample --steps`, `crnn list [cells|...] [--options]`: the command exists and has each option."""
    spans = inline_cli_spans()
    assert len(spans) >= 30
    problems = []
    for doc, span in spans:
        words = span.replace("\\|", "|").split()
        if words[0] == "torchrun":
            if "crnn_core" not in words:
                continue
            words = words[words.index("crnn_core") + 1:]
        elif words[0] == "python":
            words = words[3:]
        else:
            words = words[1:]
        if not words or words[0] == "...":
            continue
        name = words[0].split("|")[0]
        if name.startswith("-"):  # an option of crnn itself: `crnn --help`, `crnn --version`
            command, words = cli, ["crnn", *words]
        else:
            command = cli.get_command(None, name)  # type: ignore[arg-type]
        if command is None:
            problems.append(f"{doc}: `{span}`: no command {name!r}")
            continue
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        known |= {"-h", "--help"}
        for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", " ".join(words[1:])):
            if option not in known:
                problems.append(f"{doc}: `{span}`: crnn {name} has no option {option}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- links


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (code blocks skipped, repeats numbered)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
        heading = re.match(r"#{1,6} +(.*?) *#*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(text: str) -> list[str]:
    """The targets of the relative Markdown links and images of a text (code blocks and spans skipped)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:", target)]


def test_relative_links_and_anchors_resolve():
    """[text](docs/kernels.md#cpu-instruction-sets-...) in any doc: the file exists and has that heading."""
    problems = []
    checked = 0
    for path in DOC_FILES:
        for target in relative_links(path.read_text()):
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            checked += 1
            if not resolved.exists():
                problems.append(f"{relative(path)}: {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text()):
                problems.append(f"{relative(path)}: {target}: no heading with this anchor")
    assert checked >= 50
    assert not problems, "\n".join(problems)


def test_heading_anchors_follow_github():
    text = "# A `crnn run` page\n## Config files: `crnn run --config`\n```bash\n# not a heading\n```\n## Config files: `crnn run --config`\n"
    assert heading_anchors(text) == {"a-crnn-run-page", "config-files-crnn-run---config", "config-files-crnn-run---config-1"}
