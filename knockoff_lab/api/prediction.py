"""The prediction API: the only door an attacker has to the victim (paper 2.2, 5.1.2).

`answer(images, client)` returns exactly what that client receives: the victim's posteriors
(at float16 precision) passed through the API's ordered `defences`, each a small class chosen
by class path in YAML (output granularities, a detector filter, perturbations ...). A refused
query's answer is a row of NaN: no answer. The API keeps per-client books in a `Ledger`
(asked, answered, flagged, refused, the position of the first flagged query, budget left,
stateful defences' state) and refuses a batch that would exceed the client's `budget` before
any work is done.

On the owner's side, `posterior_cache` keeps the victim's posterior of every image it has seen,
keyed by the victim's bytes and the image's, so repeated experiments do not recompute the
victim; answers are always made afresh by the defences.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from knockoff_lab.api.base import QueryAPI
from knockoff_lab.api.ledger import ClientRecord, Ledger
from knockoff_lab.api.posterior_cache import PosteriorCache, image_keys
from knockoff_lab.core.digests import digest, module_digest
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch
from knockoff_lab.nets.victim import load_victim


class PredictionAPI(QueryAPI):
    """`victim`: a `VictimClassifier` checkpoint. `defences` run in order on every batch.
    `budget`: queries each client may ask (None: unlimited). The victim runs in eval mode
    under `torch.inference_mode` on `device`, in batches of `batch_size`.
    `posterior_cache`: the owner's cache folder (None: recompute every time). `ledger`: the
    SQLite file of the books (None: kept in memory, lost with the process)."""

    def __init__(
        self,
        victim: str,
        defences: list[Defence] | None = None,
        budget: int | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        posterior_cache: str | None = "runs/victim_posteriors",
        ledger: str | None = "runs/api/ledger.sqlite",
    ):
        network = load_victim(victim)
        self._start(
            network,
            str(victim),
            module_digest(network),
            defences,
            budget,
            batch_size,
            device,
            posterior_cache,
            ledger,
        )

    @property
    def answers_probabilities(self) -> bool:
        """Whether answers carry probabilities an attack can read logits from (no defence
        turns them into labels or a top-1 value); attacks check it before asking."""
        return all(defence.keeps_probabilities for defence in self.defences)

    @classmethod
    def around(
        cls,
        network: nn.Module,
        num_classes: int | None = None,
        defences: list[Defence] | None = None,
        budget: int | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        posterior_cache: str | None = None,
        ledger: str | None = None,
    ) -> "PredictionAPI":
        """An API in front of a network already in memory (tests, notebooks); `num_classes`
        defaults to the size of its `fc` head."""
        api = cls.__new__(cls)
        api._start(
            network,
            type(network).__name__,
            module_digest(network),
            defences,
            budget,
            batch_size,
            device,
            posterior_cache,
            ledger,
            num_classes,
        )
        return api

    def _start(
        self,
        network,
        name,
        victim_digest,
        defences,
        budget,
        batch_size,
        device,
        posterior_cache,
        ledger,
        num_classes=None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"api batch_size must be >= 1, got {batch_size}")
        self.victim, self.victim_name = network.eval(), name
        self.num_classes = num_classes or network.fc.out_features
        self.defences = list(defences or [])
        for defence in self.defences:
            defence.check(self.num_classes)
        self.victim_digest, self.batch_size = victim_digest, batch_size
        self.device = torch.device(device)
        self.victim.to(self.device)
        folder = None if posterior_cache is None else Path(posterior_cache) / victim_digest[:16]
        self.cache = None if folder is None else PosteriorCache(folder, self.num_classes)
        self.ledger = Ledger(ledger, digest(self.describe()), budget)

    def describe(self) -> str:
        """What determines the answers: the victim's bytes and the defences, in order."""
        return "\n".join([self.victim_digest, *(d.describe() for d in self.defences)])

    def to(self, device: torch.device | str) -> "PredictionAPI":
        self.device = torch.device(device)
        self.victim.to(self.device)
        return self

    def check_data(self, data_name: str) -> None:
        """Fail before any query when a defence was built for other data than the victim's."""
        for defence in self.defences:
            defence.check_data(data_name)

    def record(self, client: str = "default") -> ClientRecord:
        return self.ledger.record(client)

    # -- the door ---------------------------------------------------------------------------

    def answer(
        self,
        images: torch.Tensor,
        client: str = "default",
        request: str | None = None,
        client_budget: int | None = None,
    ) -> torch.Tensor:
        """What `client` receives for `images` (N, 3, H, W): answers (N, C) float32 on the CPU,
        a NaN row for a refused query. Counted against the client's budget and
        `client_budget` (its own cap, e.g. its API key's). `request`: a name the caller gives
        this call (e.g. its position in a transfer set): the same request with the same images
        again is answered from the books, charged nothing (a retry after a lost reply)."""
        check_images(images)
        digest = images_digest(images) if request is not None else None
        booked = self.ledger.reserve(client, len(images), client_budget, request, digest)
        if booked.reply is not None:
            return torch.from_numpy(np.frombuffer(booked.reply, np.float32).copy()).view(
                len(images), self.num_classes
            )
        try:
            states = self.ledger.states(client, len(self.defences))
            batches = [
                self._serve(chunk, client, states) for chunk in images.split(self.batch_size)
            ]
        except BaseException:
            self.ledger.release(booked)
            raise
        stateful = {i: s for i, s in states.items() if not self.defences[i].stateless}
        refused = sum(int(b.refused.sum()) for b in batches)
        flags = torch.cat([b.flagged.cpu() for b in batches])  # in query order
        hits = flags.nonzero()
        first = booked.before + int(hits[0]) + 1 if len(hits) else None  # 1-based, all its own
        answers = torch.cat([b.answers.cpu() for b in batches]).float()
        reply = answers.numpy().tobytes() if request is not None else None
        self.ledger.settle(
            booked, len(images) - refused, int(flags.sum()), refused, stateful, first, reply
        )
        return answers

    def evaluate(self, images: torch.Tensor) -> QueryBatch:
        """Owner-side evaluation: the batch a fresh client would get (answers, flags, refusals,
        the victim's posteriors), not counted and with no client state kept: what a defence
        costs benign users."""
        check_images(images)
        states = {i: {} for i in range(len(self.defences))}
        batches = [
            self._serve(chunk, "evaluation", states) for chunk in images.split(self.batch_size)
        ]
        fields = ("images", "posteriors", "answers", "flagged", "refused")
        return QueryBatch(
            **{f: torch.cat([getattr(b, f).cpu() for b in batches]) for f in fields},
            client="evaluation",
            state={},
        )

    def victim_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Owner-side: the victim's own predicted classes (N,), uncounted and undefended
        (evaluation, e.g. fidelity; never the attacker's door)."""
        with torch.inference_mode():
            return torch.cat(
                [
                    self.victim(chunk.to(self.device)).argmax(-1).cpu()
                    for chunk in images.split(self.batch_size)
                ]
            )

    def _serve(self, images: torch.Tensor, client: str, states: dict[int, dict]) -> QueryBatch:
        posteriors = self._posteriors(images)
        batch = QueryBatch.arriving(images.to(self.device), posteriors, client)
        for index, defence in enumerate(self.defences):
            batch.state = states[index]
            defence.apply(batch)
            batch.answers = batch.answers.masked_fill(batch.refused[:, None], float("nan"))
        return batch

    def _posteriors(self, images: torch.Tensor) -> torch.Tensor:
        """The victim's posteriors at float16 precision, as float32 on the API's device: from
        the owner's cache when it has the whole batch, else computed for the whole batch (and
        the new ones cached). A convolution's rounding can depend on the batch it runs in, so
        a batch is never a mix: answers are exactly those of an uncached run."""
        if self.cache is None:
            return self._run_victim(images).float()
        keys = image_keys(images)
        hits, cached = self.cache.lookup(keys)
        if hits.all():
            return torch.from_numpy(cached).to(self.device).float()
        computed = self._run_victim(images)
        misses = np.flatnonzero(~hits)
        self.cache.add([keys[i] for i in misses], computed.cpu().numpy()[misses])
        return computed.float()

    def _run_victim(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.victim(images.to(self.device, non_blocking=True)).float()
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits)).any(dim=-1).sum())
            raise ConfigError(
                f"victim {self.victim_name} gave non-finite outputs for {bad} of "
                f"{len(images)} queries"
            )
        return logits.softmax(dim=-1).half()


def images_digest(images: torch.Tensor) -> str:
    """SHA-256 of a query batch's shape and float32 bytes: what a request name is bound to."""
    array = images.detach().cpu().float().contiguous().numpy()
    sha = hashlib.sha256(str(array.shape).encode())
    sha.update(array.data)  # the buffer itself, not a copy
    return sha.hexdigest()


def check_images(images: torch.Tensor) -> None:
    """A one-line error for a query batch that is not (N, channels, H, W) finite floats."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"queries must be a float tensor (N, channels, H, W), got {shape}")
    if not torch.isfinite(images).all():
        raise ConfigError("queries hold non-finite values (NaN or inf)")
