"""The kit's verdict as an 80-column table (by protocol section) and as JSON."""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

from loudspeaker.conformance.checks import CheckResult

WIDTH = 80
_SECTION_W = 4
_RESULT_W = 14
_TITLE_W = WIDTH - _SECTION_W - _RESULT_W - 2
_SHOWN = {"pass": "pass", "fail": "FAIL", "skipped": "skipped", "not applicable": "n/a"}
OUTCOMES = ("pass", "fail", "skipped", "not applicable")


def passed(results: list[CheckResult]) -> bool:
    """True when no check failed (skipped and not-applicable checks do not fail a box)."""
    return all(r.result != "fail" for r in results)


def counts(results: list[CheckResult]) -> dict[str, int]:
    """How many checks ended in each outcome."""
    c: Counter[str] = Counter(r.result for r in results)
    return {k: c[k] for k in OUTCOMES}


def format_table(results: list[CheckResult], heading: str) -> str:
    """One line per check, sorted by section; why, under any check that did not pass."""
    lines = textwrap.wrap(heading, WIDTH)
    lines.append("")
    lines.append(f"{'§':<{_SECTION_W}} {'check':<{_TITLE_W}} {'result':<{_RESULT_W}}".rstrip())
    lines.append("-" * WIDTH)
    ordered = sorted(enumerate(results), key=lambda ir: (int(ir[1].section), ir[0]))
    for _, r in ordered:
        title = textwrap.shorten(r.title, _TITLE_W, placeholder="…")
        lines.append(f"§{r.section:<{_SECTION_W - 1}} {title:<{_TITLE_W}} {_SHOWN[r.result]}")
        if r.result != "pass" and r.detail:
            lines.extend(
                textwrap.wrap(
                    r.detail,
                    WIDTH,
                    initial_indent=" " * (_SECTION_W + 3),
                    subsequent_indent=" " * (_SECTION_W + 3),
                    break_on_hyphens=False,
                )
            )
    lines.append("-" * WIDTH)
    c = counts(results)
    summary = ", ".join(f"{n} {k}" for k, n in c.items())
    verdict = "CONFORMS" if passed(results) else "DOES NOT CONFORM"
    lines.append(f"{verdict}: {summary}")
    return "\n".join(lines)


def as_json(results: list[CheckResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The verdict as a JSON-ready object (documented in docs/protocol.md)."""
    return {
        **meta,
        "passed": passed(results),
        "counts": counts(results),
        "checks": [
            {
                "key": r.key,
                "section": r.section,
                "title": r.title,
                "result": r.result,
                "detail": r.detail,
                "seconds": r.seconds,
            }
            for r in results
        ],
    }
