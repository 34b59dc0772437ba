"""The transfer set {D_A, F_V(D_A)} of a model-extraction attack: the DataModule that stores what
the prediction API answered, round by round, and serves it to the surrogate.

Rounds are asked by `lightning_modules.AttackRounds`, a callback, from Lightning's own hooks:
round 0 before training, then the next round at each boundary its strategy names (every
`epochs_per_round` epochs, or every optimiser step for a strategy whose `round_unit` is
"step"). Each round, the query strategy proposes queries from what the attacker has (its pool,
the answers so far, the current surrogate, handed in by the callback); they go through the
prediction API, the only door to the victim, as `client`; the answers are stored
(`datamodules.rounds`). This module never touches the trainer or the model: it serves what is
stored. Knockoff's random policy is one round of a seeded random order of the pool.

Storage holds only what the API returned, under `cache_dir/<key>/`. The key covers what decides
the answers and the queries: the API (victim bytes, defences), the pool, the attack, the seed,
the client; for an adaptive or several-round attack also the budget and the surrogate's
training settings (`begin`). A one-round non-adaptive attack's order does not depend on the
budget, so a smaller budget reads a prefix and a larger one asks only the new queries. Each API
batch is written as its own file, atomically: a killed run resumes at the first unanswered
query, and `state_dict` (saved in Lightning's checkpoints) says how many rounds it had.

Under DDP every process queries: rank 0 proposes (written before anything is asked), the
round's unanswered positions are cut into API batches, and batch i goes to rank i % world_size,
so no query is answered twice or lost and the set is bitwise the same for any world size.
Separate builders of one set (two sweep agents) take turns: rank 0 of each holds the cache
folder's lock (`datamodules.rounds.build_lock`) from a round's proposal to its last answer, so
the second finds the round stored and asks nothing.

Splits: `train` and `val` (a seeded `val_fraction` of each round, the attacker's only
model-selection data; refused queries are dropped from both), and `test`, the victim's test set
with its labels and the victim's own predictions (owner-side, for Acc(F_A), recovery and
fidelity; the surrogate also scores it every epoch for analysis, never for selection). While a
step-round strategy has rounds left, the train loader yields one placeholder per round and
`on_before_batch_transfer` turns it into that round's training rows: one optimiser step per
round, on the queries asked for it.
"""

import json
import math
from collections.abc import Callable, Collection, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, WeightedRandomSampler

from datamodules.base import ImageDataModule, describe
from datamodules.rounds import Round, build_lock
from datamodules.transfer_datasets import TransferDataset, VictimLabelled
from knockoff_lab.api.base import QueryAPI
from knockoff_lab.attacks.answers import AnswerReader, AsGiven, QuerySmoothing
from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen
from knockoff_lab.attacks.random_sampling import RandomSampling
from knockoff_lab.core.digests import digest
from knockoff_lab.core.errors import ConfigError


@dataclass
class Dealer:
    """How a round's API batches are dealt among the processes of one job (DDP): batch i goes to
    `rank` i % `world`; `barrier(name)` waits for every process; the API runs the victim on
    `device`. One process on the CPU by default."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[str], None] = field(default=lambda name: None)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class StepTickets(IterableDataset):
    """`count` placeholders: one optimiser step each, resolved to a round's rows by
    `TransferSetDataModule.on_before_batch_transfer` just before the step (never prefetched
    stale: the placeholder carries nothing). Iterable, so DDP gives every process all of them."""

    def __init__(self, count: int):
        self.count = count

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (torch.tensor(-1) for _ in range(self.count))


class TransferSetDataModule(ImageDataModule):
    """`api`: the prediction API (`knockoff_lab.api.PredictionAPI`); `attack`: the query
    strategy (default `knockoff_lab.attacks.RandomSampling`, one round); `budget`: the queries
    the attacker sends in all. `reader`: what the surrogate trains on, made from the answers
    (default `AsGiven`; `TopOne` for top-1 relabelling); `smoothing`: each image asked several
    times under small transforms, the answers averaged (`attacks.answers`): a budget of B
    queries then buys B / queries_per_input images. `analysis`: also score the victim's test
    set every epoch (`analysis/test_acc`, Figure 2, never used for selection); off, validation
    is the transfer set's own split alone (`reproduce` turns it off where its report needs no
    curve)."""

    not_hparams = ("api", "pool", "victim_data", "attack", "reader", "smoothing")

    def __init__(
        self,
        api: QueryAPI,
        pool: ImageDataModule,
        victim_data: ImageDataModule,
        budget: int,
        attack: QueryStrategy | None = None,
        reader: AnswerReader | None = None,
        smoothing: QuerySmoothing | None = None,
        epochs_per_round: int | None = None,
        val_fraction: float = 0.1,
        analysis: bool = True,
        balance: bool = False,
        client: str | None = None,
        sybils: int = 1,
        cache_dir: str = "runs/transfer_sets",
        query_batch_size: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.api, self.pool, self.victim_data = api, pool, victim_data
        self.attack = attack or RandomSampling()
        self.num_classes = victim_data.num_classes
        if api.num_classes != self.num_classes:
            raise ConfigError(
                f"the API's victim {api.victim_name} has num_classes={api.num_classes} but "
                f"data.victim_data has {self.num_classes}"
            )
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if budget < 1:
            raise ConfigError(f"data.budget must be >= 1 query, got {budget}")
        if epochs_per_round is not None and epochs_per_round < 1:
            raise ConfigError(f"data.epochs_per_round must be >= 1, got {epochs_per_round}")
        if query_batch_size < 1:
            raise ConfigError(f"data.query_batch_size must be >= 1, got {query_batch_size}")
        api.check_data(type(victim_data).__name__)  # a detector for other data: fail now
        self.reader, self.smoothing = reader or AsGiven(), smoothing
        copies = smoothing.queries_per_input if smoothing is not None else 1
        if budget % copies:
            raise ConfigError(
                f"data.budget {budget} is not a multiple of data.smoothing.queries_per_input "
                f"{copies}: every image costs {copies} queries"
            )
        self.budget, self.inputs = budget, budget // copies  # queries paid, images asked
        self.sizes = self.attack.round_sizes(self.inputs)
        if 0 < val_fraction and math.floor(val_fraction * self.sizes[0]) == 0:
            raise ConfigError(  # else found only after the queries were paid for
                f"data.val_fraction {val_fraction} of data.budget {budget} leaves the first "
                f"round's {self.sizes[0]} queries no validation query: expected val_fraction "
                f">= 1/{self.sizes[0]}, or 0 for no validation split"
            )
        self.epochs_per_round, self.val_fraction = epochs_per_round, val_fraction
        self.analysis = analysis
        self.balance = balance
        if sybils < 1:
            raise ConfigError(f"data.sybils must be >= 1 client, got {sybils}")
        self.client_name, self.sybils, self.cache_dir = client, sybils, Path(cache_dir)
        self.query_batch_size = query_batch_size
        self.training: str | None = None  # the surrogate's settings, for an adaptive key
        self.dealer = Dealer()
        self.rounds_done = 0  # rounds stored and read into memory
        self.steps_served = 0  # step rounds passed: trained on, or probes passed over
        self.rounds_served = 0  # rounds in the loaders of the current epoch
        self.restored_rounds = 0  # rounds a checkpoint had (`load_state_dict`)
        self.read_rounds = 0  # rounds the reader learnt from (a reader that learns)
        self._round_splits: list[tuple[np.ndarray, np.ndarray]] = []  # `round_splits`
        self._split_generator: np.random.Generator | None = None
        self._split_offset = 0  # the first query of the first round not split yet
        self.indices = np.empty(0, np.int64)
        self.images: torch.Tensor | None = None
        self.answers: torch.Tensor | None = None

    # -- where the rounds live ---------------------------------------------------------------

    @property
    def shares_prefixes(self) -> bool:
        """A one-round attack that ignores answers and surrogate: its order does not depend on
        the budget, so every budget shares one cache."""
        return not self.attack.adaptive and len(self.sizes) == 1

    @property
    def complete(self) -> bool:
        """The current epoch's loaders hold every round: its validation scores compare with
        those of any other complete epoch (`lightning_modules.CompleteSetCheckpoint`)."""
        return self.rounds_served == len(self.sizes)

    @property
    def stepping(self) -> bool:
        """A step-round strategy with rounds left to train on: one optimiser step per round."""
        return self.attack.round_unit == "step" and self.steps_served < len(self.sizes)

    def begin(self, training: str | None = None, dealer: Dealer | None = None) -> None:
        """Before any round: `training` names the surrogate's training (model settings,
        schedule), part of an adaptive attack's key; `dealer` deals API batches among the
        job's processes and names the device the surrogate runs on."""
        if self.rounds_done:
            raise ConfigError("the transfer set was already begun: one fit per DataModule")
        self.training = training if self.attack.adaptive and not self.shares_prefixes else None
        self.dealer = dealer or Dealer()
        self.api.to(self.dealer.device)
        self.__dict__.pop("folder", None)  # the key may have changed

    @cached_property  # hashes the victim once per DataModule
    def folder(self) -> Path:
        key = [
            self.api.describe(),
            describe(self.pool),
            self.attack.describe(),
            self.seed,
            self.client_name,
        ] + ([self.sybils] if self.sybils > 1 else [])
        if self.smoothing is not None:  # other queries; a reader reads the same answers
            key.append(self.smoothing.describe())
        if not self.shares_prefixes:
            key += [self.budget, self.training]
        return self.cache_dir / digest(json.dumps(key, default=str))

    @property
    def client(self) -> str:
        return self.client_name or f"transfer-{self.folder.name}"

    @property
    def clients(self) -> list[str]:
        """The API clients the attack asks through: `client`, or with `sybils` N > 1 the N
        accounts `<client>/sybil-k`, query p of the transfer set going to account p % N (the
        Sybil split of the paper's 5.2.2, which defeats a defence's per-client state)."""
        if self.sybils == 1:
            return [self.client]
        return [f"{self.client}/sybil-{k}" for k in range(self.sybils)]

    def round(self, r: int) -> Round:
        return Round(self.folder / f"round-{r:03d}", self.num_classes)

    # -- the rounds ------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Checks that need no query; the rounds themselves are asked by `AttackRounds`, or
        read back from the cache by `read_stored` (evaluation outside a fit)."""
        if self.rounds_done == 0:
            pool = self.pool.split("pool")
            self.attack.check_budget(self.inputs, len(pool))
            self.attack.check_api(self.api)
            if self.smoothing is not None:
                self.smoothing.check(pool[0])

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning's checkpoints: how much of the attack the surrogate had seen."""
        return {"rounds_done": self.rounds_done, "steps_served": self.steps_served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed fit: `AttackRounds` reads those rounds back (they are stored) before the
        first loader is built."""
        self.restored_rounds = int(state.get("rounds_done", 0))
        self.steps_served = int(state.get("steps_served", 0))

    def next_round(self, surrogate: nn.Module | None = None) -> int:
        """Ask (or read back from the cache) the next round, with `surrogate` (in eval mode)
        as the strategy's view of what was learnt; returns its number."""
        r = self.rounds_done
        if r >= len(self.sizes):
            raise ConfigError(f"the attack's {len(self.sizes)} rounds are all asked")
        self._run_round(r, surrogate)
        self.rounds_done += 1
        # the splits now (a round all refused fails here), but not per step: built when served
        self.splits = {} if self.attack.round_unit == "step" else self.build_splits()
        return r

    def grow_to(self, last: int, surrogate: nn.Module | None = None) -> None:
        """Rounds up to `last` (capped at the attack's last) asked or read back."""
        while self.rounds_done <= min(last, len(self.sizes) - 1):
            self.next_round(surrogate)

    def read_stored(self) -> None:
        """Every round the cache holds complete, read back without asking (evaluating a
        surrogate outside its fit)."""
        while self.rounds_done < len(self.sizes):
            stored = self.round(self.rounds_done).proposal()
            if stored is None or self.round(self.rounds_done).missing(
                self.sizes[self.rounds_done], self.query_batch_size
            ):
                return
            self.next_round()

    def seen(self, r: int, surrogate: nn.Module | None = None) -> Seen:
        """What the strategy sees for round `r`; it runs the surrogate where the surrogate is
        (on the CPU when round 0 is asked, before Lightning moves the model)."""
        answers = self.answers if self.answers is not None else torch.empty(0, self.num_classes)
        device = next(surrogate.parameters()).device if surrogate is not None else None
        return Seen(
            self.pool.split("pool"),
            self.indices,
            self.images,
            answers,
            surrogate,
            device or self.dealer.device,
            r,
            self.seed,
        )

    def _propose(self, r: int, surrogate: nn.Module | None = None) -> Queries:
        """The round's queries: stored (a resumed or repeated attack), else from the strategy,
        saved before any is asked. A prefix-sharing attack checks the stored order agrees."""
        current = self.round(r)
        stored = current.proposal()
        size = self.sizes[r]
        if stored is not None and not self.shares_prefixes:
            queries, state = stored
            self.attack.load_state_dict(state)
            return queries
        fresh = self.attack.propose(self.seen(r, surrogate), size)
        if len(fresh) != size:
            raise ConfigError(
                f"attack {type(self.attack).__name__} proposed {len(fresh)} "
                f"queries for a round of {size}"
            )
        if stored is not None:
            known = stored[0].indices
            common = min(len(known), size)
            if not np.array_equal(known[:common], fresh.indices[:common]):
                raise ConfigError(
                    f"transfer-set cache {current.folder} holds another query order "
                    "than this attack proposes; delete the folder"
                )
            if len(known) >= size:
                return Queries(indices=known[:size])
        current.save_proposal(fresh, self.attack.state_dict())
        return fresh

    def _run_round(self, r: int, surrogate: nn.Module | None = None) -> None:
        rank, world, barrier = self.dealer.rank, self.dealer.world, self.dealer.barrier
        with build_lock(self.folder) if rank == 0 else nullcontext():  # the job's turn
            if rank == 0:
                self._propose(r, surrogate)
            barrier(f"round {r} proposed")
            queries, state = self.round(r).proposal()
            size = self.sizes[r]
            queries = (
                Queries(indices=queries.indices[:size]) if queries.indices is not None else queries
            )
            self.attack.load_state_dict(state)
            pieces = self.round(r).missing(size, self.query_batch_size)
            barrier(f"round {r} planned")  # every rank plans from the same cache state
            self.ask(r, queries, pieces[rank::world])
            barrier(f"round {r} answered")
        answers = torch.from_numpy(self.round(r).read(size))
        indices = queries.indices if queries.indices is not None else np.full(size, -1)
        self.indices = np.concatenate([self.indices, indices])
        self.answers = (
            answers
            if self.answers is None
            else torch.cat(
                [self.answers, answers.to(torch.promote_types(self.answers.dtype, answers.dtype))]
            )
        )
        if queries.images is not None:
            previous = [] if self.images is None else [self.images]
            self.images = torch.cat([*previous, queries.images.float()])

    def ask(self, r: int, queries: Queries, pieces: list[tuple[int, int]]) -> int:
        """Send these API batches of round `r` and store the answers; return how many queries
        were sent."""
        if not pieces:
            return 0
        if queries.indices is not None:
            batches = [queries.indices[start:end].tolist() for start, end in pieces]
            loader = DataLoader(
                self.pool.split("pool"), batch_sampler=batches, num_workers=self.num_workers
            )
        else:
            loader = [queries.images[start:end] for start, end in pieces]
        current, offset = self.round(r), sum(self.sizes[:r])
        for (start, _), images in zip(pieces, loader, strict=True):
            current.write(start, self.answer(images, offset + start))
        return sum(end - start for start, end in pieces)

    def answer(self, images: torch.Tensor, position: int) -> np.ndarray:
        """The API's answers to consecutive queries starting at transfer-set `position`, each
        asked through its account of `clients`, as a request named by the set and the
        position: a batch asked again after a kill is answered from the books, not paid twice."""
        clients, request = self.clients, f"{self.folder.name}:{position}"
        if len(clients) == 1:
            return self.ask_as(images, clients[0], request).numpy()
        answers = np.empty((len(images), self.num_classes), np.float32)
        for k, client in enumerate(clients):
            mine = np.flatnonzero((position + np.arange(len(images))) % len(clients) == k)
            if len(mine):
                answers[mine] = self.ask_as(images[mine], client, request).numpy()
        return answers

    def ask_as(self, images: torch.Tensor, client: str, request: str) -> torch.Tensor:
        """One API call as `client`; with smoothing, every image's copies, averaged."""
        if self.smoothing is None:
            return self.api.answer(images, client, request)
        copies = self.smoothing.expand(images, f"{self.seed}:{request}")
        return self.smoothing.combine(self.api.answer(copies, client, request))

    # -- serving ---------------------------------------------------------------------------

    @cached_property
    def victim_labels(self) -> torch.Tensor:
        """F_V's predictions on its test set (owner-side evaluation, not part of the attack),
        decoded by the transfer set's workers."""
        loader = DataLoader(
            self.victim_data.split("test"),
            batch_size=self.query_batch_size,
            num_workers=self.num_workers,
        )
        return torch.cat([self.api.victim_labels(images) for images, _ in loader])

    def build_splits(self) -> dict[str, Dataset]:
        splits: dict[str, Dataset] = {
            "test": VictimLabelled(self.victim_data.split("test"), self.victim_labels)
        }
        if self.rounds_done == 0:
            return splits  # nothing asked yet: the test split alone
        train, val = self.split_rows()
        if len(train) == 0 or (self.val_fraction > 0 and len(val) == 0):
            refused = int(self.answers.isnan().any(dim=-1).sum())
            raise ConfigError(
                f"the API refused {refused} of {len(self.answers)} queries: "
                f"{len(self.answers) - refused} answers are too few to train and validate "
                f"a surrogate on (data.val_fraction {self.val_fraction})"
            )
        pool = self.pool.split("pool")
        targets = self.targets()
        splits["train"] = TransferDataset(pool, self.indices, self.images, targets, train)
        if len(val):
            splits["val"] = TransferDataset(pool, self.indices, self.images, targets, val)
        return splits

    def targets(self) -> torch.Tensor:
        """What the surrogate trains on: the answers through the attacker's reader, which first
        learns from a seeded sample of the asked images when it needs to (once per round)."""
        if self.reader.max_images and self.read_rounds != self.rounds_done:
            answered = np.flatnonzero(~self.answers.isnan().any(dim=-1).numpy())
            rows = np.random.default_rng(self.seed + 2).permutation(answered)
            rows = np.sort(rows[: self.reader.max_images])
            data = TransferDataset(
                self.pool.split("pool"), self.indices, self.images, self.answers, rows
            )
            self.reader.fit(*next(iter(DataLoader(data, batch_size=len(data)))))
            self.read_rounds = self.rounds_done
        return self.reader.read(self.answers)

    def split_rows(self, rounds: Collection[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, val rows) of the rounds done (or of `rounds`, in order): a seeded
        `val_fraction` of each round to validation, refused queries to neither."""
        splits = self.round_splits()
        wanted = range(len(splits)) if rounds is None else [r for r in rounds if r < len(splits)]
        rows = [np.concatenate([splits[r][part] for r in wanted] or [[]]) for part in (0, 1)]
        return rows[0].astype(np.int64), rows[1].astype(np.int64)

    def round_splits(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each done round's (train rows, val rows), split once: one seeded permutation per
        round, drawn in round order, so a step-round attack's step costs its own round alone
        (a round's answers never change once stored)."""
        if not self._round_splits:
            self._split_generator, self._split_offset = np.random.default_rng(self.seed + 1), 0
        for r in range(len(self._round_splits), self.rounds_done):
            offset, size = self._split_offset, self.sizes[r]
            refused = self.answers[offset : offset + size].isnan().any(dim=-1).numpy()
            shuffled = self._split_generator.permutation(size)
            shuffled = offset + shuffled[~refused[shuffled]]  # no answer: nothing to learn
            n_val = math.floor(self.val_fraction * len(shuffled))
            self._round_splits.append((shuffled[n_val:], shuffled[:n_val]))
            self._split_offset += size
        return self._round_splits

    def class_histogram(self) -> torch.Tensor:
        """How many answered queries name each class as the most likely (Figure 1, left)."""
        if self.answers is None:
            return torch.zeros(self.num_classes, dtype=torch.long)
        answered = self.answers[~self.answers.isnan().any(dim=-1)].float()
        return torch.bincount(answered.argmax(-1), minlength=self.num_classes)

    def train_dataloader(self) -> DataLoader:
        if self.rounds_done == 0:
            raise ConfigError(
                "the transfer set holds no round: its rounds are asked by the callback "
                "lightning_modules.AttackRounds; add it to trainer.callbacks"
            )
        self.rounds_served = 0 if self.stepping else self.rounds_done
        if self.stepping:
            steps = sum(map(self.attack.trains_on, range(self.steps_served, len(self.sizes))))
            return DataLoader(StepTickets(steps), batch_size=None)
        if not self.balance:
            return super().train_dataloader()
        train = self.split("train")
        labels = train.answers.argmax(-1)
        weights = 1.0 / torch.bincount(labels, minlength=self.num_classes).clamp_min(1)[labels]
        generator = torch.Generator().manual_seed(self.seed)
        sampler = WeightedRandomSampler(weights.double(), len(train), generator=generator)
        return DataLoader(
            train, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A step placeholder becomes the training rows of the round it stands for (this
        process's share of them under DDP); every other batch passes unchanged."""
        if not (isinstance(batch, torch.Tensor) and batch.ndim == 0):
            return batch
        r = self.steps_served
        while r < self.rounds_done and not self.attack.trains_on(r):  # probes: not trained on
            r += 1
        if r >= self.rounds_done:
            raise ConfigError(
                f"step round {r} was not asked before its training step: "
                "lightning_modules.AttackRounds asks it"
            )
        self.steps_served = r + 1
        train, _ = self.split_rows(range(r, r + 1))
        rows = np.sort(train)  # in the order asked
        if self.attack.replay and r:  # experience replay: earlier training queries, no query
            earlier, _ = self.split_rows([q for q in range(r) if self.attack.trains_on(q)])
            generator = np.random.default_rng([self.seed, r])
            replayed = generator.permutation(earlier)[: self.attack.replay]
            rows = np.concatenate([rows, np.sort(replayed)])
        rows = rows[self.dealer.rank :: self.dealer.world]
        if not len(rows):  # the API refused the whole round: nothing to learn, no step
            shape = self.pool.split("pool")[0].shape if self.images is None else self.images.shape
            return torch.empty(0, *shape[-3:]), torch.empty(0, self.num_classes)
        data = TransferDataset(
            self.pool.split("pool"), self.indices, self.images, self.targets(), rows
        )
        return next(iter(DataLoader(data, batch_size=len(data))))

    def split(self, name: str) -> Dataset:
        """Splits are built on first use, from the rounds done so far."""
        if not self.splits:
            self.splits = self.build_splits()
        return super().split(name)

    def val_dataloader(self) -> list[DataLoader]:
        """[transfer-set validation (selection), victim test set (`analysis` only, Figure 2)]."""
        loaders = [self.loader("val")] if "val" in self.splits else []
        return [*loaders, self.loader("test")] if self.analysis else loaders
