"""Cost of signing and verifying commands, and of appending to the audit chain.

Run: PYTHONPATH=. python bench/security.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_bridge.protocol import (
    MediaRef,
    PlayCommand,
    decode_command,
    encode,
    sign_command,
    utcnow,
    verify_command,
)
from loudspeaker import audit
from loudspeaker.db import init_db, make_engine


def main() -> None:
    key = bytes(32)
    t = utcnow()
    cmd = PlayCommand(
        id="c0ffee0000000001",
        cluster="lb-01",
        broadcast="b0000001",
        issued_at=t,
        expires_at=t + timedelta(minutes=10),
        title="Thông báo lũ khẩn",
        media=MediaRef(
            url="http://10.0.0.1/media/x.mp3", sha256="ab" * 32, size=48000, duration_s=12.5
        ),
    )
    n = 5000
    t0 = time.perf_counter()
    for _ in range(n):
        signed = sign_command(cmd, key, "k1")
    sign_us = (time.perf_counter() - t0) / n * 1e6
    wire = encode(signed)
    t0 = time.perf_counter()
    for _ in range(n):
        verify_command(decode_command(wire), {"k1": key}, t)
    verify_us = (time.perf_counter() - t0) / n * 1e6
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(f"sqlite:///{d}/a.db")
        init_db(engine)
        m = 500
        t0 = time.perf_counter()
        for i in range(m):
            with Session(engine) as s:
                audit.record(s, "officer1", "broadcast.create", f"hamlet:{i}")
                s.commit()
        append_ms = (time.perf_counter() - t0) / m * 1e3
        t0 = time.perf_counter()
        with Session(engine) as s:
            ok = audit.verify(s).ok
        verify_ms = (time.perf_counter() - t0) * 1e3
        engine.dispose()
    print(f"sign: {sign_us:.1f} us/command; decode+verify: {verify_us:.1f} us/command")
    print(
        f"audit append (SQLite, own transaction): {append_ms:.2f} ms/row; "
        f"verify {m} rows: {verify_ms:.0f} ms (ok={ok})"
    )


if __name__ == "__main__":
    main()
