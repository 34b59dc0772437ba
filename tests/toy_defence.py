"""A toy stateful defence, added the way a user adds one (this file plus `toy_defence.yaml`):
each client gets `limit` answers; every later query is flagged and refused. Its state (answers
given so far) lives in the API's books, per client, so it survives a new API process."""

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
