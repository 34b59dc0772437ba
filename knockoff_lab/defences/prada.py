"""PRADA (Juuti et al. 2019, "PRADA: Protecting against DNN model stealing attacks"), Algorithm
1: a benign client's queries are natural samples, so the distance from each new query to the
nearest earlier one of the same predicted class is roughly normally distributed; synthetic
extraction queries (small perturbations of a few seeds) make that distribution far from normal.

Per client: a growing set G_c of stored queries per class c (the victim's predicted class) and
its threshold T_c. A query x of class c with G_c empty starts it; otherwise d = min L2 distance
from x to G_c is added to the client's distances D, and x joins G_c when d > T_c, which then
becomes max(T_c, mean - std of the distances that admitted members of G_c). Once |D| exceeds
`min_queries`, D less its outliers (beyond 3 std of its mean, as in the paper) is tested with
Shapiro-Wilk (scipy's, an scikit-learn dependency); W < `delta` marks the client an attacker:
that query and every later one is flagged, and refused unless `on_flag` is "flag".

Processed query by query as in the paper (the growing set changes within a batch), on float16
copies of the flattened images (the stored set's precision), with exact (non-matmul) distances:
the flags do not depend on how a client's queries are split into batches. The state is the
stored images: about 2 bytes x 3 x H x W per admitted query (6 KB at 32x32), kept in the API's
books; W is recomputed after every query, so a long benign stream costs O(|D|) per query.
"""

import warnings
from typing import Literal

import torch
from scipy.stats import shapiro

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence


def normality(distances: torch.Tensor) -> float:
    """Shapiro-Wilk W of `distances` without the values beyond 3 std of their mean (1.0, i.e.
    normal, when fewer than 3 remain or they are all equal)."""
    d = distances.double()
    kept = d[(d - d.mean()).abs() <= 3 * d.std(correction=0)]
    if len(kept) < 3 or bool((kept == kept[0]).all()):
        return 1.0
    with warnings.catch_warnings():  # over 5000 values scipy warns about the p-value only
        warnings.simplefilter("ignore")
        return float(shapiro(kept.numpy()).statistic)


@register_defence
class PRADA(Defence):
    """`delta`: the W below which a client is taken for an attacker (the paper tunes it per
    victim on benign traffic, around 0.9 to 0.96); `min_queries`: distances needed before the
    first test; `on_flag`: refuse or only flag the client's queries once detected."""

    stateless = False  # keeps per-client query history

    def __init__(
        self,
        delta: float = 0.9,
        min_queries: int = 100,
        on_flag: Literal["refuse", "flag"] = "refuse",
    ):
        self.delta, self.min_queries, self.on_flag = delta, min_queries, on_flag

    def check(self, num_classes: int) -> None:
        if not 0 < self.delta < 1:
            raise ConfigError(
                f"PRADA: delta must be in (0, 1) (a Shapiro-Wilk W), got {self.delta}"
            )
        if self.min_queries < 3:
            raise ConfigError(f"PRADA: min_queries must be >= 3, got {self.min_queries}")
        if self.on_flag not in ("refuse", "flag"):
            raise ConfigError(f"PRADA: on_flag must be refuse or flag, got {self.on_flag!r}")

    def apply(self, batch: QueryBatch) -> None:
        s, n = batch.state, len(batch)
        x = batch.images.detach().flatten(1).to("cpu", torch.float16)
        if not s:
            c = batch.posteriors.shape[-1]
            s.update(
                growing=x[:0],
                members=torch.zeros(0, dtype=torch.long),
                threshold=torch.zeros(c, dtype=torch.float64),
                admitted=torch.zeros(c, 3, dtype=torch.float64),  # count, sum, sum of squares
                distances=torch.zeros(0),
                detected_at=-1,
            )
        if s["growing"].shape[1:] != x.shape[1:] and len(s["growing"]):
            raise ConfigError(
                f"PRADA: this client's queries changed size ({x.shape[1]} values per "
                f"image, earlier {s['growing'].shape[1]})"
            )
        start = 0 if s["detected_at"] >= 0 else self._scan(s, x, batch.posteriors.argmax(-1).cpu())
        hit = torch.arange(n, device=batch.flagged.device) >= start
        batch.flagged |= hit
        if self.on_flag == "refuse":
            batch.refused |= hit

    def _scan(self, s: dict, x: torch.Tensor, classes: torch.Tensor) -> int:
        """Algorithm 1 over the batch, updating the state; the index of the query on which the
        client was detected (len(x) when it was not)."""
        if len(x) == 0:
            return 0
        xf, grown = x.float(), s["growing"].float()
        mode = "donot_use_mm_for_euclid_dist"
        same = classes[:, None] == s["members"][None, :]
        old = torch.cdist(xf, grown, compute_mode=mode).masked_fill(~same, float("inf"))
        nearest = old.min(-1).values if len(grown) else torch.full((len(x),), float("inf"))
        within = torch.cdist(xf, xf, compute_mode=mode)
        within.masked_fill_(classes[:, None] != classes[None, :], float("inf"))
        admitted, new_distances = s["admitted"], []
        joined = torch.zeros(len(x), dtype=torch.bool)
        for i, c in enumerate(classes.tolist()):
            d = float(nearest[i])
            if d == float("inf"):  # G_c is empty: x starts it
                joined[i] = True
            else:
                new_distances.append(d)
                if d > s["threshold"][c]:
                    joined[i] = True
                    admitted[c] += torch.tensor([1.0, d, d * d], dtype=torch.float64)
                    count, total, squares = admitted[c].tolist()
                    mean = total / count
                    std = max(squares / count - mean * mean, 0.0) ** 0.5
                    s["threshold"][c] = max(float(s["threshold"][c]), mean - std)
            if joined[i]:
                nearest = torch.minimum(nearest, within[:, i])
            known = len(s["distances"]) + len(new_distances)
            if d != float("inf") and known > self.min_queries:
                distances = torch.cat([s["distances"], torch.tensor(new_distances)])
                if normality(distances) < self.delta:
                    s["detected_at"] = known  # the number of distances when it was caught
                    break
        s["growing"] = torch.cat([s["growing"], x[joined]])
        s["members"] = torch.cat([s["members"], classes[joined]])
        s["distances"] = torch.cat([s["distances"], torch.tensor(new_distances)])
        return i if s["detected_at"] >= 0 else len(x)
