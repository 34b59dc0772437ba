"""A toy stateful defence, added the way a user adds one (this file plus `toy_defence.yaml`):
each client gets `limit` answers; every later query is flagged and refused. Its state (answers
given so far) lives in the API's books, per client, so it survives a new API process."""

import os
import signal

from knockoff_lab.defences import Defence, QueryBatch, register_defence


@register_defence
class RefuseAfter(Defence):
    stateless = False  # keeps per-client history

    def __init__(self, limit: int = 100):
        self.limit = limit

    def apply(self, batch: QueryBatch) -> None:
        given = int(batch.state.get("given", 0))
        over = (given + batch.refused.logical_not().cumsum(0)) > self.limit
        over &= ~batch.refused
        batch.flagged |= over
        batch.refused |= over
        batch.state["given"] = given + int((~batch.refused).sum())


@register_defence
class KillOnMark(Defence):
    """SIGKILLs its own process when a query's first value is below -100: a server or attack
    killed mid-request, after the ledger counted the call and before it settled."""

    def apply(self, batch: QueryBatch) -> None:
        if (batch.images.flatten(1)[:, 0] < -100).any():
            os.kill(os.getpid(), signal.SIGKILL)
