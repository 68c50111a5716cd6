"""What a PostgreSQL writer expects the log to look like at its next append.

An append needs the log's head (the positions it will give), the chain's last
link and the projections' tracking rows before it can write its chain links
and fold its events, so it normally reads them in a first round trip, under
the log's lock, and writes in a second (ADR 0017). While this writer is the
only one appending, what it would read is what it left there: the forecast.
An append made on the forecast sends everything in one message, headed by a
guard (`fl_guard`) that checks the forecast under the lock and aborts the
transaction, with nothing stored, if another writer moved anything. The
append is then made again the ordinary way, and forecasts pause for a while:
with other writers appending, they would mostly miss.
"""

from __future__ import annotations

from typing import Any

from flowledger.infrastructure.store import Fence

GUARD_FAILED = "FL001"  # the SQLSTATE fl_guard raises


def create_guard_sql(schema: str) -> str:
    return (f"CREATE OR REPLACE FUNCTION \"{schema}\".fl_guard(ok boolean) RETURNS void "
            "LANGUAGE plpgsql AS $$ BEGIN IF ok IS NOT TRUE THEN RAISE EXCEPTION "
            "'the log moved since this writer''s last append' "
            f"USING ERRCODE = '{GUARD_FAILED}'; END IF; END $$")


class Forecast:
    """The head, chain head and tracking rows this writer left, while they
    can be trusted to still be there."""

    # After a forecast missed, appends made the ordinary way before forecasting again.
    PAUSE_AFTER_MISS = 50

    def __init__(self, events_table: str) -> None:
        self.events_table = events_table
        self.head: int | None = None
        self.chain_head: tuple[int, bytes] | None = None
        self.tracking: dict[str, int] | None = None
        self._pause = 0

    def usable(self, chained: bool) -> bool:
        if self._pause > 0:
            self._pause -= 1
            return False
        return (self.head is not None and self.tracking is not None
                and (self.chain_head is not None or not chained))

    def missed(self) -> None:
        self.forget()
        self._pause = self.PAUSE_AFTER_MISS

    def forget(self) -> None:
        self.head = self.chain_head = self.tracking = None

    def learn(self, head: int, chain_head: tuple[int, bytes] | None,
              tracking: dict[str, int] | None) -> None:
        """What an append that committed left: the head, the chain's last
        link (None: unchanged) and the tracking rows (None: not known)."""
        self.head = head
        if chain_head is not None:
            self.chain_head = chain_head
        self.tracking = dict(tracking) if tracking is not None else None

    def tracked(self, changes: dict[str, int | None]) -> None:
        """This writer's other transactions moved tracking rows (None: deleted)."""
        if self.tracking is not None:
            for name, position in changes.items():
                if position is None:
                    self.tracking.pop(name, None)
                else:
                    self.tracking[name] = position

    def guard(self, fence: Fence | None, fence_before: int | None) -> tuple[str, list[Any]]:
        """The statement that aborts the transaction unless the log is as
        forecast: its head, the tracking rows, and the fenced stream's version."""
        assert self.head is not None and self.tracking is not None
        tracking = ",".join(f"{k}={v}" for k, v in sorted(self.tracking.items())) or None
        sql = (f"SELECT fl_guard((SELECT COALESCE(MAX(notification_id), 0) "
               f"FROM {self.events_table}) = %s "
               "AND (SELECT string_agg(application_name || '=' || COALESCE(notification_id, 0), "
               "',' ORDER BY application_name COLLATE \"C\") FROM tracking) "
               "IS NOT DISTINCT FROM %s")
        params: list[Any] = [self.head, tracking]
        if fence is not None:
            sql += (f" AND (SELECT MAX(originator_version) FROM {self.events_table} "
                    "WHERE originator_id=%s) IS NOT DISTINCT FROM %s")
            params += [fence.stream_id, fence_before]
        return sql + ")", params
