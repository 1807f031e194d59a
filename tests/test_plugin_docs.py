"""docs/plugins.md states the whole plugin contract, and cannot drift from the code.

The reference section is generated (``python -m crnn_core.plugin_manager.reference docs/plugins.md``);
these tests fail when an interface's public method, signature, class attribute or a hook is
missing from the page or differs from it, and when the page names something that does not exist.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from crnn_core.plugin_manager import hookspecs; from crnn_core.plugin_manager import reference as plugin_reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
TEXT = DOC.read_text()
CLASSES = {cls.__name__: cls for cls in plugin_reference.interfaces()}


def test_the_generated_reference_is_current():
    assert plugin_reference.section(TEXT), "docs/plugins.md has no generated reference section"
    assert plugin_reference.section(TEXT) == plugin_reference.render(), (
        "docs/plugins.md is out of date: run python -m crnn_core.plugin_manager.reference docs/plugins.md")


@pytest.mark.parametrize("cls", plugin_reference.interfaces(), ids=lambda c: c.__name__)
def test_every_public_method_is_documented_with_its_signature(cls):
    section = plugin_reference.section(TEXT)
    assert f"### `crnn_core.{cls.__name__}`" in section
    public = [n for n, m in vars(cls).items() if not n.startswith("_") and (inspect.isfunction(m) or isinstance(m, (property, classmethod)))]
    assert public, cls
    for name in public:
        member = vars(cls)[name]
        if isinstance(member, property):
            text = f"-> {inspect.signature(member.fget).return_annotation}"
        else:
            function = member.__func__ if isinstance(member, classmethod) else member
            text = re.sub(r"\((self|cls)(, )?", "(", str(inspect.signature(function)))
        assert f"| `{name}` | `{text.replace(chr(39), '').replace('|', chr(92) + '|')}`" in section, (cls, name)


def test_every_hook_is_documented_with_its_signature():
    section = plugin_reference.section(TEXT)
    specs = [n for n in vars(hookspecs) if hasattr(getattr(hookspecs, n), "crnn_spec")]
    assert len(specs) == 6
    for name in specs:
        signature = str(inspect.signature(getattr(hookspecs, name))).replace("'", "")
        assert f"| `{name}` | `{signature}` |" in section
        assert f"### `{name}(" in TEXT  # and in the prose section "Hooks"


def test_documented_names_exist():
    """Every `Class.attribute` and `register_*` hook the page names is real (no stale names)."""
    named = set(re.findall(r"`(Cell|InitStrategy|ContextNetwork|Task|TaskModule)\.(\w+)", TEXT))
    assert len(named) >= 5
    for cls, attr in named:
        instance = {name for name, _ in plugin_reference.constructor_attributes(CLASSES[cls])}
        assert hasattr(CLASSES[cls], attr) or attr in instance, f"docs/plugins.md names {cls}.{attr}, which does not exist"
    for hook in set(re.findall(r"`(register_\w+)\(", TEXT)):
        assert hasattr(hookspecs, hook), f"docs/plugins.md names the hook {hook}, which does not exist"


def test_the_plugin_contract_facts_are_stated():
    """Split names, batch means, metric types, properties, where TaskModule comes from, prepare, failures."""
    for fact in ['dataset(split)` is called with `"train"` and `"val"`', "`loss` returns\nthe batch mean",
                 "`{name: float}` of per-batch means", "are *properties*", "from crnn_core import Task, TaskModule",
                 "`Task.prepare(uses_context)`", "### Failure behaviour", "| `early_stop_target` | `tuple[str, float] \\| None`",
                 "| `training_defaults` | `dict[str, Any]`"]:
        assert fact in TEXT, fact
