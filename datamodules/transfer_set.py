"""The transfer set {D_A, F_V(D_A)} of a model-extraction attack, and the DataModule that grows
it round by round and trains the surrogate on it.

Before training (round 0), and then every `epochs_per_round` epochs, the attack's query
strategy proposes the round's queries from what the attacker has (its pool, the answers so far,
the current surrogate); they go through the prediction API, the only door to the victim, as
`client`; the answers are stored (`datamodules.rounds`) and the transfer set grows. Knockoff's
random policy is one round of a seeded random order of the pool.

Storage holds only what the API returned, under `cache_dir/<key>/`. The key covers what decides
the answers and the queries: the API (victim bytes, defences), the pool, the attack, the seed,
the client; for an adaptive or several-round attack also the budget and the surrogate's
training settings. A one-round non-adaptive attack's order does not depend on the budget, so a
smaller budget reads a prefix and a larger one asks only the new queries. Each API batch is
written as its own file, atomically: a killed run resumes at the first unanswered query.

Under DDP every process queries: rank 0 proposes (written before anything is asked), the
round's unanswered positions are cut into API batches, and batch i goes to rank i % world_size,
so no query is answered twice or lost and the set is bitwise the same for any world size.
Separate builders of one set (two sweep agents) take turns: rank 0 of each holds the cache
folder's lock (`datamodules.rounds.build_lock`) from a round's proposal to its last answer, so
the second finds the round stored and asks nothing.

Splits: `train` and `val` (a seeded `val_fraction` of each round, the attacker's only
model-selection data; refused queries are dropped from both), and `test`, the victim's test set
with its labels and the victim's own predictions (owner-side, for Acc(F_A), recovery and
fidelity; the surrogate also scores it every epoch for analysis, never for selection).
"""

import json
import math
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from datamodules.base import ImageDataModule, describe
from datamodules.rounds import Round, build_lock
from datamodules.transfer_datasets import TransferDataset, VictimLabelled
from knockoff_lab.api.base import QueryAPI
from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen
from knockoff_lab.attacks.random_sampling import RandomSampling
from knockoff_lab.core.digests import digest
from knockoff_lab.core.errors import ConfigError


class TransferSetDataModule(ImageDataModule):
    """`api`: the prediction API (`knockoff_lab.api.PredictionAPI`); `attack`: the query
    strategy (default `knockoff_lab.attacks.RandomSampling`, one round); `budget`: the queries
    the attacker sends in all."""

    not_hparams = ("api", "pool", "victim_data", "attack")

    def __init__(
        self,
        api: QueryAPI,
        pool: ImageDataModule,
        victim_data: ImageDataModule,
        budget: int,
        attack: QueryStrategy | None = None,
        epochs_per_round: int | None = None,
        val_fraction: float = 0.1,
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
        api.check_data(type(victim_data).__name__)  # a detector for other data: fail now
        self.budget, self.sizes = budget, self.attack.round_sizes(budget)
        if 0 < val_fraction and math.floor(val_fraction * self.sizes[0]) == 0:
            raise ConfigError(  # else found only after the queries were paid for
                f"data.val_fraction {val_fraction} of data.budget {budget} leaves the first "
                f"round's {self.sizes[0]} queries no validation query: expected val_fraction "
                f">= 1/{self.sizes[0]}, or 0 for no validation split"
            )
        self.epochs_per_round, self.val_fraction = epochs_per_round, val_fraction
        self.balance = balance
        if sybils < 1:
            raise ConfigError(f"data.sybils must be >= 1 client, got {sybils}")
        self.client_name, self.sybils, self.cache_dir = client, sybils, Path(cache_dir)
        self.query_batch_size = query_batch_size
        self.rounds_done = 0
        self.indices = np.empty(0, np.int64)
        self.images: torch.Tensor | None = None
        self.answers: torch.Tensor | None = None

    # -- where the rounds live ---------------------------------------------------------------

    @property
    def shares_prefixes(self) -> bool:
        """A one-round attack that ignores answers and surrogate: its order does not depend on
        the budget, so every budget shares one cache."""
        return not self.attack.adaptive and len(self.sizes) == 1

    @cached_property  # hashes the victim once per DataModule
    def folder(self) -> Path:
        key = [self.api.describe(), describe(self.pool), self.attack.describe(), self.seed,
               self.client_name] + ([self.sybils] if self.sybils > 1 else [])  # fmt: skip
        if not self.shares_prefixes:
            key += [self.budget, self.training_settings()]
        return self.cache_dir / digest(json.dumps(key, default=str))

    def training_settings(self) -> str | None:
        """What shapes the surrogate between rounds (an adaptive attack's proposals depend on
        it): the model's hyperparameters, the schedule and the batch size."""
        trainer = getattr(self, "trainer", None)
        if not self.attack.adaptive or trainer is None or trainer.lightning_module is None:
            return None
        hparams = dict(trainer.lightning_module.hparams)
        return json.dumps([hparams, trainer.max_epochs, self.epochs_per_round, self.batch_size],
                          sort_keys=True, default=str)  # fmt: skip

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

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _barrier(self, name: str) -> None:
        if self._rank_and_world()[1] > 1:
            self.trainer.strategy.barrier(name)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if self.rounds_done == 0:
            self.attack.check_budget(self.budget, len(self.pool.split("pool")))
            trainer = getattr(self, "trainer", None)
            if trainer is not None and len(self.sizes) > 1:
                schedule = self.epochs_per_round or max(1, trainer.max_epochs // len(self.sizes))
                if trainer.max_epochs <= schedule * (len(self.sizes) - 1):
                    raise ConfigError(
                        f"trainer.max_epochs {trainer.max_epochs} leaves no training after the "
                        f"last of {len(self.sizes)} rounds of {schedule} epochs "
                        "(data.epochs_per_round)"
                    )
                self.epochs_per_round = schedule
                trainer.reload_dataloaders_every_n_epochs = 1  # each epoch asks for its round
            self._check_monitors(trainer)
            self.api.to(self._device())
            self.grow_to(0)

    def _check_monitors(self, trainer) -> None:
        """With `val_fraction: 0` there is no validation split: a callback selecting on it
        fails here, before any query, not after training."""
        for callback in getattr(trainer, "callbacks", []) if self.val_fraction == 0 else []:
            monitor = getattr(callback, "monitor", None) or ""
            if monitor.startswith("val/"):
                raise ConfigError(
                    f"{type(callback).__name__} monitors {monitor!r}, but data.val_fraction is "
                    "0 (no validation split): set val_fraction > 0 or the monitor to null"
                )

    def grow_to(self, last: int) -> None:
        """Run (or read back) rounds up to `last`, then rebuild the splits."""
        while self.rounds_done <= min(last, len(self.sizes) - 1):
            self._run_round(self.rounds_done)
            self._log_strategy(self.rounds_done)
            self.rounds_done += 1
            self.splits = {}
        if not self.splits:
            self.splits = self.build_splits()

    def _log_strategy(self, r: int) -> None:
        """The strategy's own metrics after round `r`, to the trainer's logger (rank 0)."""
        trainer = getattr(self, "trainer", None)
        metrics = self.attack.metrics()
        if not metrics or trainer is None or trainer.logger is None or not trainer.is_global_zero:
            return
        logged = {f"attack/{name}": value for name, value in metrics.items()}
        trainer.logger.log_metrics({**logged, "attack/round": float(r)}, step=trainer.global_step)

    def seen(self, r: int) -> Seen:
        trainer = getattr(self, "trainer", None)
        surrogate = trainer.lightning_module if trainer is not None else None
        answers = self.answers if self.answers is not None else torch.empty(0, self.num_classes)
        return Seen(self.pool.split("pool"), self.indices, self.images, answers, surrogate,
                    self._device(), r, self.seed)  # fmt: skip

    def _propose(self, r: int) -> Queries:
        """The round's queries: stored (a resumed or repeated attack), else from the strategy,
        saved before any is asked. A prefix-sharing attack checks the stored order agrees."""
        current = self.round(r)
        stored = current.proposal()
        size = self.sizes[r]
        if stored is not None and not self.shares_prefixes:
            queries, state = stored
            self.attack.load_state_dict(state)
            return queries
        surrogate = self.seen(r).surrogate
        was_training = surrogate.training if surrogate is not None else False
        if surrogate is not None:
            surrogate.eval()
        try:
            fresh = self.attack.propose(self.seen(r), size)
        finally:
            if surrogate is not None:
                surrogate.train(was_training)
        if len(fresh) != size:
            raise ConfigError(f"attack {type(self.attack).__name__} proposed {len(fresh)} "
                              f"queries for a round of {size}")  # fmt: skip
        if stored is not None:
            known = stored[0].indices
            common = min(len(known), size)
            if not np.array_equal(known[:common], fresh.indices[:common]):
                raise ConfigError(f"transfer-set cache {current.folder} holds another query order "
                                  "than this attack proposes; delete the folder")  # fmt: skip
            if len(known) >= size:
                return Queries(indices=known[:size])
        current.save_proposal(fresh, self.attack.state_dict())
        return fresh

    def _run_round(self, r: int) -> None:
        rank, world = self._rank_and_world()
        with build_lock(self.folder) if rank == 0 else nullcontext():  # the job's turn
            if rank == 0:
                self._propose(r)
            self._barrier(f"round {r} proposed")
            queries, state = self.round(r).proposal()
            size = self.sizes[r]
            queries = (
                Queries(indices=queries.indices[:size]) if queries.indices is not None else queries
            )
            self.attack.load_state_dict(state)
            pieces = self.round(r).missing(size, self.query_batch_size)
            self._barrier(f"round {r} planned")  # every rank plans from the same cache state
            self.ask(r, queries, pieces[rank::world])
            self._barrier(f"round {r} answered")
        answers = torch.from_numpy(self.round(r).read(size))
        indices = queries.indices if queries.indices is not None else np.full(size, -1)
        self.indices = np.concatenate([self.indices, indices])
        self.answers = answers if self.answers is None else torch.cat(
            [self.answers, answers.to(torch.promote_types(self.answers.dtype, answers.dtype))]
        )  # fmt: skip
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
            loader = DataLoader(self.pool.split("pool"), batch_sampler=batches,
                                num_workers=self.num_workers)  # fmt: skip
        else:
            loader = [queries.images[start:end] for start, end in pieces]
        current, offset = self.round(r), sum(self.sizes[:r])
        for (start, _), images in zip(pieces, loader, strict=True):
            current.write(start, self.answer(images, offset + start))
        return sum(end - start for start, end in pieces)

    def answer(self, images: torch.Tensor, position: int) -> np.ndarray:
        """The API's answers to consecutive queries starting at transfer-set `position`, each
        asked through its account of `clients`."""
        clients = self.clients
        if len(clients) == 1:
            return self.api.answer(images, clients[0]).numpy()
        answers = np.empty((len(images), self.num_classes), np.float32)
        for k, client in enumerate(clients):
            mine = np.flatnonzero((position + np.arange(len(images))) % len(clients) == k)
            if len(mine):
                answers[mine] = self.api.answer(images[mine], client).numpy()
        return answers

    # -- serving ---------------------------------------------------------------------------

    @cached_property
    def victim_labels(self) -> torch.Tensor:
        """F_V's predictions on its test set (owner-side evaluation, not part of the attack)."""
        loader = DataLoader(self.victim_data.split("test"), batch_size=self.query_batch_size)
        return torch.cat([self.api.victim_labels(images) for images, _ in loader])

    def build_splits(self) -> dict[str, Dataset]:
        generator = np.random.default_rng(self.seed + 1)  # one permutation per round, in order
        refused = self.answers.isnan().any(dim=-1).numpy()
        train, val, offset = [], [], 0
        for size in self.sizes[: self.rounds_done]:
            shuffled = offset + generator.permutation(size)
            shuffled = shuffled[~refused[shuffled]]  # the attacker got no answer: nothing to learn
            n_val = math.floor(self.val_fraction * len(shuffled))
            val.append(shuffled[:n_val])
            train.append(shuffled[n_val:])
            offset += size
        train, val = np.concatenate(train), np.concatenate(val)
        if len(train) == 0 or (self.val_fraction > 0 and len(val) == 0):
            raise ConfigError(
                f"the API refused {int(refused.sum())} of {len(refused)} queries: "
                f"{len(refused) - int(refused.sum())} answers are too few to train and validate "
                f"a surrogate on (data.val_fraction {self.val_fraction})"
            )
        pool = self.pool.split("pool")
        splits = {
            "train": TransferDataset(pool, self.indices, self.images, self.answers, train),
            "test": VictimLabelled(self.victim_data.split("test"), self.victim_labels),
        }
        if len(val):
            splits["val"] = TransferDataset(pool, self.indices, self.images, self.answers, val)
        return splits

    def class_histogram(self) -> torch.Tensor:
        """How many answered queries name each class as the most likely (Figure 1, left)."""
        self.setup()
        answered = self.answers[~self.answers.isnan().any(dim=-1)].float()
        return torch.bincount(answered.argmax(-1), minlength=self.num_classes)

    def current_round(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is None or len(self.sizes) == 1:
            return 0
        return min(trainer.current_epoch // self.epochs_per_round, len(self.sizes) - 1)

    def train_dataloader(self) -> DataLoader:
        self.grow_to(self.current_round())
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

    def val_dataloader(self) -> list[DataLoader]:
        """[transfer-set validation (selection), victim test set (analysis only, Figure 2)]."""
        loaders = [self.loader("val")] if "val" in self.splits else []
        return [*loaders, self.loader("test")]
