"""The projections rebuilt from the log must equal the live ones (DESIGN §2.4)."""

from __future__ import annotations

from flowledger.engine.engine import Engine

Rows = dict[str, list[tuple[object, ...]]]


def projection_rows(engine: Engine, names: list[str] | None = None) -> Rows:
    """Every row of every table of the named projections (all by default), in key order."""
    rows: Rows = {}
    with engine.log.reading() as c:
        for p in engine.projections.projections:
            if names is None or p.name in names:
                for table in p.tables:
                    c.execute(f"SELECT * FROM {table}")
                    rows[table] = sorted(map(tuple, c.fetchall()), key=repr)
    return rows


def assert_projections_rebuild_equal(engine: Engine) -> None:
    """Rebuild every projection from position 0 and check it equals what the
    engine maintained as it went; an AssertionError names the tables that differ."""
    engine.projections.catch_up()  # what any engine query folds in first
    live = projection_rows(engine)
    engine.rebuild_projections()
    rebuilt = projection_rows(engine)
    differ = [t for t in sorted(set(live) | set(rebuilt)) if live.get(t) != rebuilt.get(t)]
    if differ:
        details = "; ".join(
            f"{t}: live has {len(live.get(t, []))} rows, rebuilt {len(rebuilt.get(t, []))}"
            f" (only live: {[r for r in live.get(t, []) if r not in rebuilt.get(t, [])][:3]},"
            f" only rebuilt: {[r for r in rebuilt.get(t, []) if r not in live.get(t, [])][:3]})"
            for t in differ)
        raise AssertionError(f"projections rebuilt from the log differ from the live ones: "
                             f"{details}")
