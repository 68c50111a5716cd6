"""The projections every store keeps: the engine folds them, `verify` checks them."""

from __future__ import annotations

from flowledger.projections.audit import Audit
from flowledger.projections.base import Projection
from flowledger.projections.costs import Costs
from flowledger.projections.log_times import LogTimes
from flowledger.projections.pending_work import PendingWork
from flowledger.projections.settled import Settled


def store_projections() -> list[Projection]:
    """Fresh instances, in the order they fold each batch."""
    return [PendingWork(), Costs(), Audit(), LogTimes(), Settled()]
