"""Imports run one way down the stack (docs/architecture.md, "Layers").

    cli.py and other faces -> loudspeaker.commands -> loudspeaker.services
        -> loudspeaker (domain, controller) -> schedules (pure calendar)
        -> firmware_bridge, audio (the bottom; neither imports the other)

Read from the source with ``ast``: every import counts, at module level or inside a
function, under ``TYPE_CHECKING`` or not, absolute or relative. A face is the only thing
that imports ``loudspeaker.commands`` or ``loudspeaker.services``, or Typer, Rich or Click.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("cli", "loudspeaker", "schedules", "firmware_bridge", "audio")

# The faces: they authenticate a caller, call services and render. A new face (web page,
# HTTP API, SMS, alert feed) is added here, and may then import services.
FACES = ("cli", "loudspeaker.commands")
UI_LIBRARIES = ("typer", "rich", "click")

# Imports let through on purpose, as (importer, imported); the test also fails when one of
# them is gone, so this list only shrinks and stays true. Empty: keep it so.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to an absolute module name."""

    importer: str
    imported: str
    path: Path  # relative to the tree's root
    line: int


@dataclass(frozen=True)
class Violation:
    """An import the layers forbid, and the rule it breaks."""

    importer: str
    imported: str
    rule: str
    where: str

    @property
    def pair(self) -> tuple[str, str]:
        """What the allowlist is keyed by."""
        return (self.importer, self.imported)


def within(module: str, package: str) -> bool:
    """``module`` is ``package`` or inside it."""
    return module == package or module.startswith(package + ".")


def is_face(module: str) -> bool:
    """``module`` belongs to a face."""
    return any(within(module, face) for face in FACES)


def module_name(root: Path, path: Path) -> str:
    """The dotted name of the module in ``path`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> Iterator[Path]:
    """Every module of ours under ``root``: the packages and the top-level cli.py."""
    for name in OURS:
        single = root / f"{name}.py"
        if single.is_file():
            yield single
        if (root / name).is_dir():
            yield from sorted((root / name).rglob("*.py"))


def imports_in(root: Path) -> Iterator[Import]:
    """Every import in our modules under ``root``, resolved to absolute module names.

    ``from package import name`` imports ``package.name`` when that is one of our modules
    (``from loudspeaker import services`` is an import of ``loudspeaker.services``).
    """
    files = list(source_files(root))
    modules = {module_name(root, path) for path in files}
    for path in files:
        importer = module_name(root, path)
        shown = path.relative_to(root)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(importer, alias.name, shown, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    yield Import(
                        importer,
                        submodule if submodule in modules else target,
                        shown,
                        node.lineno,
                    )


def ours(module: str) -> bool:
    """``module`` is one of this project's (not the standard library or a dependency)."""
    return module.split(".", maxsplit=1)[0] in OURS


# Each rule: what it says, and when an import (importer, imported) breaks it.
RULES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    (
        "only a face uses Typer, Rich or Click (services and below never print)",
        lambda importer, imported: (
            imported.split(".", maxsplit=1)[0] in UI_LIBRARIES and not is_face(importer)
        ),
    ),
    (
        "nothing imports cli.py: it is the top",
        lambda importer, imported: within(imported, "cli") and importer != "cli",
    ),
    (
        "only a face imports loudspeaker.commands",
        lambda importer, imported: (
            within(imported, "loudspeaker.commands") and not is_face(importer)
        ),
    ),
    (
        "only a face imports loudspeaker.services",
        lambda importer, imported: (
            within(imported, "loudspeaker.services")
            and not (is_face(importer) or within(importer, "loudspeaker.services"))
        ),
    ),
    (
        "schedules (the pure calendar) imports only itself and firmware_bridge.protocol",
        lambda importer, imported: (
            within(importer, "schedules")
            and ours(imported)
            and not (within(imported, "schedules") or imported == "firmware_bridge.protocol")
        ),
    ),
    (
        "firmware_bridge (the cluster side) imports nothing else of ours",
        lambda importer, imported: (
            within(importer, "firmware_bridge")
            and ours(imported)
            and not within(imported, "firmware_bridge")
        ),
    ),
    (
        "audio imports nothing else of ours",
        lambda importer, imported: (
            within(importer, "audio") and ours(imported) and not within(imported, "audio")
        ),
    ),
)


def broken_rule(importer: str, imported: str) -> str | None:
    """The first layer rule that importing ``imported`` from ``importer`` breaks, if any."""
    return next((rule for rule, breaks in RULES if breaks(importer, imported)), None)


def violations(found: Iterable[Import]) -> list[Violation]:
    """Each forbidden import (one per importer, imported and rule), in source order."""
    seen: dict[tuple[str, str], Violation] = {}
    for imp in found:
        rule = broken_rule(imp.importer, imp.imported)
        if rule is not None and (imp.importer, imp.imported) not in seen:
            where = f"{imp.path}:{imp.line}"
            seen[(imp.importer, imp.imported)] = Violation(imp.importer, imp.imported, rule, where)
    return list(seen.values())


def check(
    root: Path, allowed: frozenset[tuple[str, str]] = frozenset()
) -> tuple[list[Violation], set[tuple[str, str]]]:
    """New violations under ``root``, and ``allowed`` entries that no longer occur."""
    found = violations(imports_in(root))
    new = [v for v in found if v.pair not in allowed]
    stale = set(allowed) - {v.pair for v in found}
    return new, stale


def describe(found: list[Violation]) -> str:
    """One line per violation, saying which rule it breaks."""
    return "\n".join(f"  {v.importer} imports {v.imported} ({v.where}): {v.rule}" for v in found)


def test_the_code_follows_the_layers() -> None:
    new, stale = check(ROOT, KNOWN_VIOLATIONS)
    assert not new, "imports that run against the layers (docs/architecture.md):\n" + describe(new)
    assert not stale, f"no longer violated, remove from KNOWN_VIOLATIONS: {sorted(stale)}"


# The checker itself, on a small tree where the answers are known.

SYNTHETIC = {
    "cli.py": "from loudspeaker.commands import broadcast\nimport typer\n",
    "loudspeaker/__init__.py": "",
    "loudspeaker/models.py": "from schedules import spec\nfrom firmware_bridge import protocol\n",
    "loudspeaker/sneaky.py": "def later():\n    from loudspeaker import services\n",
    "loudspeaker/printer.py": "import rich.console\n",
    "loudspeaker/services/__init__.py": "",
    "loudspeaker/services/broadcasts.py": "from .. import models\nimport typer\n",
    "loudspeaker/commands/__init__.py": "",
    "loudspeaker/commands/broadcast.py": (
        "from ..services import broadcasts\nimport typer\nfrom rich.table import Table\n"
    ),
    "schedules/__init__.py": "",
    "schedules/spec.py": "from firmware_bridge.protocol import Priority\nimport datetime\n",
    "schedules/store.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from loudspeaker.models import Broadcast\n"
    ),
    "schedules/retry.py": "from firmware_bridge.backoff import Backoff\n",
    "firmware_bridge/__init__.py": "",
    "firmware_bridge/protocol.py": "import json\n",
    "firmware_bridge/backoff.py": "",
    "firmware_bridge/agent.py": "from audio import render\nfrom . import protocol\n",
    "audio/__init__.py": "",
    "audio/render.py": "from cli import app\n",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name, text in SYNTHETIC.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checker_finds_each_kind_of_upward_import(tree: Path) -> None:
    new, stale = check(tree)
    assert {(v.importer, v.imported) for v in new} == {
        ("loudspeaker.sneaky", "loudspeaker.services"),
        ("loudspeaker.printer", "rich.console"),
        ("loudspeaker.services.broadcasts", "typer"),
        ("schedules.store", "loudspeaker.models"),
        ("schedules.retry", "firmware_bridge.backoff"),
        ("firmware_bridge.agent", "audio.render"),
        ("audio.render", "cli"),
    }
    assert not stale
    rules = {v.importer: v.rule for v in new}
    assert rules["loudspeaker.sneaky"] == "only a face imports loudspeaker.services"
    assert rules["audio.render"] == "nothing imports cli.py: it is the top"


def test_relative_imports_resolve_from_the_package(tree: Path) -> None:
    found = {(i.importer, i.imported) for i in imports_in(tree)}
    assert ("loudspeaker.services.broadcasts", "loudspeaker.models") in found
    assert ("loudspeaker.commands.broadcast", "loudspeaker.services.broadcasts") in found
    assert ("firmware_bridge.agent", "firmware_bridge.protocol") in found


def test_the_allowlist_hides_only_its_entries_and_must_stay_exact(tree: Path) -> None:
    allowed = frozenset(
        {("schedules.store", "loudspeaker.models"), ("schedules.spec", "loudspeaker.db")}
    )
    new, stale = check(tree, allowed)
    assert ("schedules.store", "loudspeaker.models") not in {v.pair for v in new}
    assert ("audio.render", "cli") in {v.pair for v in new}
    assert stale == {("schedules.spec", "loudspeaker.db")}


def test_a_new_face_may_use_services_once_it_is_listed(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "loudspeaker" / "web.py").write_text("from loudspeaker.services import broadcasts\n")
    assert ("loudspeaker.web", "loudspeaker.services.broadcasts") in {
        v.pair for v in check(tree)[0]
    }
    monkeypatch.setattr(sys.modules[__name__], "FACES", (*FACES, "loudspeaker.web"))
    assert ("loudspeaker.web", "loudspeaker.services.broadcasts") not in {
        v.pair for v in check(tree)[0]
    }
