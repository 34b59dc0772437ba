"""DAWN (Szyller et al. 2019, "DAWN: Dynamic adversarial watermarking of neural networks"): the
API answers a small keyed share of each client's queries wrongly, so a surrogate trained on the
answers learns those mistakes and the owner can later prove it was derived from the API.

Selection: HMAC-SHA256(key, client id + the query's float32 bytes). Its first 8 bytes, read as a
number in [0, 1), select the query when below `fraction`; the next 8 choose a shift s in
1..C-1, and the answer is rolled by s classes (the posterior's shape is kept, its top class
moves from c to (c + s) mod C, the watermark label). Keyed and deterministic: the same image
from the same client always gets the same answer, so re-asking does not average the watermark
out, and only the key holder can tell which queries were watermarked (`watermarks`).

Not stateless: it reads the images and the client. The key is a secret: `settings()` shows its
SHA-256, never the key (the default one is for tests only).
"""

import hashlib
import hmac
import math

import torch
from torch import nn

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence


@register_defence
class DawnWatermark(Defence):
    """`fraction`: the share of queries watermarked (DAWN uses 0.1% to 5%); `key`: the owner's
    secret."""

    stateless = False  # reads the images and the client

    def __init__(self, fraction: float = 0.02, key: str = "change-me"):
        self.fraction, self.key = fraction, key

    def check(self, num_classes: int) -> None:
        if not 0 <= self.fraction <= 1:
            raise ConfigError(f"DawnWatermark: fraction must be in [0, 1], got {self.fraction}")
        if num_classes < 2:
            raise ConfigError(f"DawnWatermark needs >= 2 classes, got {num_classes}")

    def settings(self) -> dict:
        return {"fraction": self.fraction, "key": hashlib.sha256(self.key.encode()).hexdigest()}

    def selection(
        self, images: torch.Tensor, client: str, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(selected (N,) bool, shift (N,) long in 1..C-1) for these queries of `client`."""
        flat = images.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
        selected, shift = [], []
        for row in flat:
            mac = hmac.new(self.key.encode(), client.encode() + b"\0" + row.tobytes(), "sha256")
            digest = mac.digest()
            selected.append(int.from_bytes(digest[:8], "big") / 2**64 < self.fraction)
            shift.append(1 + int.from_bytes(digest[8:16], "big") % (num_classes - 1))
        return torch.tensor(selected, dtype=torch.bool), torch.tensor(shift, dtype=torch.long)

    def watermarks(
        self, images: torch.Tensor, answers: torch.Tensor, client: str, applied: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Owner-side, from the logged queries: which of `client`'s answers (the ones it received,
        watermarked) carry a watermark, and their labels: (selected (N,) bool, labels (N,)).
        `applied` False: the answers came unwatermarked (an API without this defence), so the
        labels are the ones this key would have given, for the false-claim check of a model
        trained on them."""
        num_classes = answers.shape[-1]
        selected, shift = self.selection(images, client, num_classes)
        labels = answers.argmax(-1).cpu()
        return selected, labels if applied else (labels + shift) % num_classes

    def apply(self, batch: QueryBatch) -> None:
        num_classes = batch.answers.shape[-1]
        selected, shift = self.selection(batch.images, batch.client, num_classes)
        selected, shift = selected.to(batch.answers.device), shift.to(batch.answers.device)
        classes = torch.arange(num_classes, device=batch.answers.device)
        source = (classes[None, :] - shift[:, None]) % num_classes  # rolled by `shift`
        rolled = batch.answers.gather(-1, source)
        batch.answers = torch.where(selected[:, None], rolled, batch.answers)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p), summed in log space (no scipy needed)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def ownership_test(
    suspect: nn.Module, images: torch.Tensor, watermarked_labels: torch.Tensor, num_classes: int
) -> tuple[float, float]:
    """(agreement, p_value): the share of watermarked queries on which `suspect` predicts the
    watermark label, and the probability that a model built without the API's answers agrees
    at least as often. The null is exact whatever that model predicts: the shift is uniform
    on 1..C-1 and independent of it, so it hits the watermark label with probability at most
    1/(C-1) per query (0 when it predicts the victim's own class). A tiny p-value proves
    derivation; `watermarks` recovers the labels from a client's logged queries and answers."""
    if len(images) == 0:
        raise ConfigError("ownership_test needs at least one watermarked query")
    hits = watermark_hits(suspect, images, watermarked_labels)
    return hits / len(images), false_claim_p(hits, len(images), num_classes)


def watermark_hits(
    suspect: nn.Module, images: torch.Tensor, watermarked_labels: torch.Tensor
) -> int:
    """How many of `images` `suspect` labels with their watermark label."""
    with torch.inference_mode():
        predicted = suspect.eval()(images).argmax(-1).cpu()
    return int((predicted == watermarked_labels.cpu()).sum())


def false_claim_p(hits: int, queries: int, num_classes: int) -> float:
    """P(a model built without the API's answers hits `hits` or more of `queries` watermark
    labels): at most 1/(C-1) per query (see `ownership_test`)."""
    return binomial_tail(hits, queries, 1 / (num_classes - 1))
