"""The controller's address card: how the CLI finds the running controller."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerCard:
    """Written by ``loudspeaker serve`` at start, removed at a clean stop."""

    pid: int
    site: str
    broker_url: str
    http_url: str
    started_at: str

    @staticmethod
    def path(run_dir: Path) -> Path:
        """Where the card lives."""
        return run_dir / "controller.json"

    def write(self, run_dir: Path) -> None:
        """Write the card atomically."""
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "controller.json.tmp"
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(tmp, self.path(run_dir))

    @classmethod
    def read(cls, run_dir: Path) -> ControllerCard | None:
        """The card of a controller that is alive, or None."""
        try:
            data = json.loads(cls.path(run_dir).read_text(encoding="utf-8"))
            card = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(card.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return card

    def poke(self) -> bool:
        """Tell the controller to look for new work now (it also polls)."""
        req = urllib.request.Request(f"{self.http_url}/api/poke", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=0.5):
                return True
        except (urllib.error.URLError, OSError):
            logger.debug("poke to %s failed", self.http_url)
            return False


def remembered_port(run_dir: Path, name: str) -> int:
    """A port a previous controller used (kept across clean stops and crashes), or 0."""
    try:
        return int((run_dir / f"{name}.port").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return 0


def remember_port(run_dir: Path, name: str, port: int) -> None:
    """Keep ``port`` for the next controller start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{name}.port").write_text(f"{port}\n", encoding="utf-8")
