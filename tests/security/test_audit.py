"""The audit chain on SQLite and PostgreSQL: intact, edited, deleted, truncated, concurrent."""

from __future__ import annotations

import threading

from sqlalchemy import text
from sqlmodel import Session

from loudspeaker import audit
from loudspeaker.db import init_db, make_engine


def _fill(url: str, n: int = 5) -> None:
    engine = make_engine(url)
    init_db(engine)
    with Session(engine) as s:
        for i in range(n):
            audit.record(
                s,
                "officer1",
                "broadcast.create",
                f"hamlet:h{i}",
                detail={"title": f"Bản tin {i}"},
                role="officer",
            )
        s.commit()
    engine.dispose()


def _verify(url: str, expect: tuple[int, str] | None = None) -> audit.Verification:
    engine = make_engine(url)
    with Session(engine) as s:
        result = audit.verify(s, expect_head=expect)
    engine.dispose()
    return result


def _sql(url: str, stmt: str) -> None:
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(text(stmt))
    engine.dispose()


def test_intact_chain_verifies(db_url: str) -> None:
    _fill(db_url)
    result = _verify(db_url)
    assert result.ok, result.problems
    assert result.rows == 5 and result.head_seq == 5


def test_edited_row_is_found(db_url: str) -> None:
    _fill(db_url)
    _sql(db_url, "UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    assert _verify(db_url).problems == ["row 3 was altered (its content does not match its hash)"]


def test_edited_detail_is_found(db_url: str) -> None:
    _fill(db_url)
    _sql(db_url, """UPDATE audit SET detail = '{"title":"Bản tin khác"}' WHERE seq = 2""")
    assert any("row 2 was altered" in p for p in _verify(db_url).problems)


def test_deleted_row_is_found(db_url: str) -> None:
    _fill(db_url)
    _sql(db_url, "DELETE FROM audit WHERE seq = 2")
    problems = _verify(db_url).problems
    assert "rows 2-2 are missing (deleted)" in problems
    assert "row 3 does not link to the row before it" in problems


def test_deleted_tail_is_found_by_the_head(db_url: str) -> None:
    _fill(db_url)
    before = _verify(db_url)
    _sql(db_url, "DELETE FROM audit WHERE seq = 5")
    assert any("newest rows are missing" in p for p in _verify(db_url).problems)
    # An attacker who also rewinds the head is caught by a head written down elsewhere.
    _sql(db_url, "UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit WHERE seq = 4)")
    assert _verify(db_url).ok
    assert not _verify(db_url, expect=(5, before.head_hash)).ok


def test_concurrent_writers_never_fork_the_chain(db_url: str) -> None:
    _fill(db_url, 1)
    engine = make_engine(db_url)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                with Session(engine) as s:
                    audit.record(s, f"w{n}", "test.write", str(i))
                    s.commit()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.dispose()
    assert not errors
    result = _verify(db_url)
    assert result.ok, result.problems
    assert result.rows == 41
