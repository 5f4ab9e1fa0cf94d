"""The pre-commit hook runs exactly what ``make lint`` and ``make typecheck`` run.

Read from the two files (pre-commit itself need not be installed): a check added to one
and not the other would let a commit pass that ``make test`` refuses, or the reverse.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_recipe(makefile: str, target: str) -> list[str]:
    """The commands of ``target``'s recipe, with ``$(BIN)`` spelled out."""
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert match, f"no {target!r} target in the Makefile"
    bin_dir = re.search(r"^BIN := (.+)$", makefile, re.M)
    venv = re.search(r"^VENV := (.+)$", makefile, re.M)
    assert bin_dir and venv
    spelled = bin_dir.group(1).replace("$(VENV)", venv.group(1))
    return [line.strip().replace("$(BIN)", spelled) for line in match.group(1).splitlines()]


def hook_entries(config: str) -> list[str]:
    """Each hook's command, in order (the file is plain enough to read without YAML)."""
    return [m.group(1).strip().strip("\"'") for m in re.finditer(r"^\s+entry:(.*)$", config, re.M)]


def test_the_hook_runs_lint_and_typecheck_and_nothing_else() -> None:
    makefile = (ROOT / "Makefile").read_text()
    config = (ROOT / ".pre-commit-config.yaml").read_text()
    expected = make_recipe(makefile, "lint") + make_recipe(makefile, "typecheck")
    # The recipes were found and read (a parser that found nothing would compare equal).
    assert ".venv/bin/ruff check ." in expected and ".venv/bin/mypy" in expected
    assert hook_entries(config) == expected
    # The venv's tools, as `make` runs them: no hook environment of pre-commit's own.
    assert config.count("language: system") == len(expected)
    assert config.count("pass_filenames: false") == len(expected)
