"""The transfer set {D_A, F_V(D_A)} of the Knockoff attack, and the DataModule that trains on it.

Querying (paper 3.1.2): a seeded random order of the query pool is sent to the prediction API
up to `budget` queries; the victim's full posterior of each query is stored once, as float16
(100,000 x 256 answers take 51 MB), and the API's granularity is applied offline, so A_p and A_c
of Table 6 come from one pass. The cache is keyed by what determines the answers (the victim
checkpoint's bytes, the pool's settings, the seed), not by the budget: the order is fixed, so a
budget of 10k reads a prefix of the 100k answers, and a larger budget only asks the missing
queries. Each API batch is written as its own file, atomically, so a killed run resumes at the
first unanswered query.

Under DDP every process queries: the unanswered positions are cut into API batches, and batch i
goes to rank i % world_size, so no query is answered twice or lost. The batches are the ones a
single process would send, so the transfer set is bitwise the same for any number of processes.

Behind a detector (`detector`, `threshold`: the API filter of paper 4.1), a flagged query is
stored as a NaN row, the refusal; the detector's bytes and the threshold join the cache key.
`on_flag` is applied offline like the granularity: refused rows are dropped, decoys become
uniform answers. `queries_flagged` counts the flagged queries of the budget.
"""

import hashlib
import json
import math
from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from core.atomic import atomic_save_npy
from core.errors import ConfigError
from datamodules.base import ImageDataModule
from lightning_modules.api import (
    Granularity,
    OnFlag,
    PredictionAPI,
    check_granularity,
    check_guard,
    degrade,
    flagged_answers,
    load_victim,
    victim_architecture,
)
from lightning_modules.guard import load_detector


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(datamodule: ImageDataModule) -> str:
    """The settings that determine a DataModule's images (not how they are batched), as JSON."""
    skip = {"batch_size", "num_workers"}
    settings = {k: v for k, v in datamodule.hparams.items() if k not in skip}
    return json.dumps({"class": type(datamodule).__qualname__, **settings}, sort_keys=True)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PosteriorCache:
    """Victim posteriors for a fixed query order, stored as contiguous chunk files
    `q<start>-<end>.npy` in one folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    def chunks(self) -> list[tuple[int, int, Path]]:
        found = []
        for path in self.folder.glob("q*-*.npy"):
            start, end = (int(part) for part in path.stem[1:].split("-"))
            found.append((start, end, path))
        return sorted(found)

    def missing(self, count: int, piece: int) -> list[tuple[int, int]]:
        """The unanswered positions of [0, count), as pieces of at most `piece` queries cut from
        the start of each gap: the units of work, in a fixed order."""
        pieces, done = [], 0
        for start, end, _ in [*self.chunks(), (count, count, None)]:
            gap_end = min(start, count)
            pieces += [(s, min(s + piece, gap_end)) for s in range(done, gap_end, piece)]
            done = max(done, end)
        return pieces

    def write(self, start: int, posteriors: np.ndarray) -> None:
        end = start + len(posteriors)
        atomic_save_npy(self.folder / f"q{start:09d}-{end:09d}.npy", posteriors)

    def read(self, count: int) -> np.ndarray:
        """The first `count` answers, (count, C) float16, read into one array (no copies)."""
        out, done = None, 0
        for start, end, path in self.chunks():
            if start == done and done < count:
                chunk = np.load(path, allow_pickle=False)
                if out is None:
                    out = np.empty((count, chunk.shape[1]), chunk.dtype)
                out[start : min(end, count)] = chunk[: count - start]
                done = end
        if done < count:
            raise ConfigError(f"transfer-set cache {self.folder} holds {done} of {count} answers")
        return out


def api_answers(
    posteriors: torch.Tensor, granularity: Granularity, top_k: int | None, decimals: int | None
) -> torch.Tensor:
    """The attacker's answers (N, C) float32 for stored posteriors: a refused row (NaN) that is
    served becomes the uniform decoy, then the API's granularity applies."""
    posteriors = posteriors.float()
    flagged = posteriors.isnan().any(dim=-1)
    return degrade(flagged_answers(posteriors, flagged, "decoy"), granularity, top_k, decimals)


class TransferDataset(Dataset):
    """(query image, API answer) pairs. Images are read from the pool by index; answers are
    made from the shared float16 posteriors when served, so the set costs no more memory than
    its cache (a float32 copy per split would be 2 x 4 GB for 1M queries x 1000 classes)."""

    def __init__(
        self,
        pool: Dataset,
        indices: np.ndarray,
        posteriors: torch.Tensor,
        rows: np.ndarray,
        answer: Callable[[torch.Tensor], torch.Tensor],
    ):
        self.pool, self.indices, self.posteriors = pool, indices, posteriors
        self.rows, self.answer = torch.from_numpy(rows), answer

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool[int(self.indices[i])], self.answer(self.posteriors[self.rows[i]][None])[0]

    @property
    def answers(self) -> torch.Tensor:
        """Every answer of the split, (N, C) float32: for analysis and class balancing."""
        return self.answer(self.posteriors[self.rows])


class VictimLabelled(Dataset):
    """The victim's test set with the victim's own prediction: (image, label, victim label)."""

    def __init__(self, test: Dataset, victim_labels: torch.Tensor):
        self.test, self.victim_labels = test, victim_labels

    def __len__(self) -> int:
        return len(self.test)

    def __getitem__(self, i: int):
        image, label = self.test[i]
        return image, label, self.victim_labels[i]


class TransferSetDataModule(ImageDataModule):
    """Builds (in `prepare_data`) and serves the transfer set of a Knockoff attack.

    Splits: `train` and `val` (a seeded `val_fraction` of the transfer set, answered by the API
    like the rest: the attacker's only model-selection data), and `test`, the victim's test
    set with labels and the victim's predictions, for Acc(F_A), recovery and fidelity. The
    surrogate also sees `test` once per epoch for analysis (Figure 2), never for selection.
    """

    not_hparams = ("pool", "victim_data")

    def __init__(
        self,
        victim: str,
        pool: ImageDataModule,
        victim_data: ImageDataModule,
        budget: int,
        granularity: Granularity = "probs",
        top_k: int | None = None,
        decimals: int | None = None,
        val_fraction: float = 0.1,
        balance: bool = False,
        detector: str | None = None,
        threshold: float = 0.5,
        on_flag: OnFlag = "refuse",
        cache_dir: str = "runs/transfer_sets",
        query_batch_size: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.victim_path = Path(victim)
        self.pool, self.victim_data = pool, victim_data
        self.num_classes = victim_data.num_classes
        check_granularity(granularity, self.num_classes, top_k, decimals)
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if budget < 1:
            raise ConfigError(f"data.budget must be >= 1 query, got {budget}")
        self._check_victim()
        check_guard(threshold, on_flag)
        self.detector_path = None if detector is None else Path(detector)
        self.threshold, self.on_flag, self.queries_flagged = threshold, on_flag, 0
        if detector is not None:  # before any query: the detector must fit the victim's data
            image_shape = tuple(victim_data.split("test")[0][0].shape)
            load_detector(detector).check_data(type(victim_data).__name__, image_shape, detector)
        self.budget, self.granularity = budget, granularity
        self.top_k, self.decimals = top_k, decimals
        self.val_fraction, self.balance = val_fraction, balance
        self.cache_dir, self.query_batch_size = Path(cache_dir), query_batch_size
        self.prepare_data_per_node = False  # one process queries the API, for all nodes
        self.posteriors: torch.Tensor | None = None

    def _check_victim(self) -> None:
        """Fail before any query on a missing, corrupt or mismatched victim checkpoint."""
        _, classes = victim_architecture(self.victim_path)
        if classes != self.num_classes:
            raise ConfigError(
                f"victim checkpoint {self.victim_path} has num_classes={classes} but "
                f"data.victim_data has {self.num_classes}"
            )

    # -- querying -------------------------------------------------------------------------

    @cached_property  # hashes the victim's (and detector's) bytes: once per DataModule
    def folder(self) -> Path:
        key = [file_digest(self.victim_path), describe(self.pool), self.seed]
        if self.detector_path is not None:
            key += [file_digest(self.detector_path), self.threshold]
        key = json.dumps(key)
        return self.cache_dir / digest(key)

    def query_order(self) -> np.ndarray:
        """The seeded order in which pool images are sent; any budget takes a prefix of it."""
        size = len(self.pool.split("pool"))
        if self.budget > size:
            raise ConfigError(f"data.budget {self.budget} exceeds the pool's {size} images")
        return np.random.default_rng(self.seed).permutation(size)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def prepare_data(self) -> None:
        """One process: answer every missing query. Under DDP, `setup` shares the work out."""
        if self._rank_and_world()[1] == 1:
            self.answer(self.unanswered())
            self._finish()

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_and_world()
        if world > 1 and not self.splits:
            pieces = self.unanswered()
            self.trainer.strategy.barrier("transfer set planned")  # one plan, before any write
            self.answer(pieces[rank::world])
            self.trainer.strategy.barrier("transfer set answered")
            if rank == 0:
                self._finish()
            self.trainer.strategy.barrier("transfer set complete")
        super().setup(stage)

    def unanswered(self) -> list[tuple[int, int]]:
        """The API batches (start, end) still to send, in order: the units of work."""
        self.query_order()  # a budget beyond the pool fails before anything is written
        self.folder.mkdir(parents=True, exist_ok=True)
        return PosteriorCache(self.folder).missing(self.budget, self.query_batch_size)

    def answer(self, pieces: list[tuple[int, int]]) -> int:
        """Send these API batches of the query order and store the answers; return how many
        queries were answered."""
        if not pieces:
            return 0
        order = self.query_order()
        guard = None if self.detector_path is None else load_detector(self.detector_path)
        api = PredictionAPI.from_checkpoint(
            self.victim_path, batch_size=self.query_batch_size, device=self._device(),
            detector=guard, threshold=self.threshold,
        )  # fmt: skip
        batches = [order[start:end].tolist() for start, end in pieces]
        loader = DataLoader(
            self.pool.split("pool"), batch_sampler=batches, num_workers=self.num_workers
        )
        cache = PosteriorCache(self.folder)
        for (start, _), images in zip(pieces, loader, strict=True):
            cache.write(start, api.posteriors(images).numpy().astype(np.float16))
        return api.queries_answered

    def _finish(self) -> None:
        """After every query is answered: the cache's description and the victim's test labels."""
        meta = {"victim": str(self.victim_path), "pool": describe(self.pool), "seed": self.seed,
                "answered": self.budget}  # fmt: skip
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=1))
        self._victim_test_labels(self.folder)

    def _victim_test_labels(self, folder: Path) -> torch.Tensor:
        """F_V's predictions on its test set (evaluation only; not part of the attack)."""
        path = folder / f"victim_test_{digest(describe(self.victim_data))}.npy"
        if not path.exists():
            victim = load_victim(self.victim_path).to(self._device())
            preds = []
            loader = DataLoader(self.victim_data.split("test"), batch_size=self.query_batch_size)
            with torch.inference_mode():
                for images, _ in loader:
                    preds.append(victim(images.to(self._device())).argmax(-1).cpu())
            atomic_save_npy(path, torch.cat(preds).numpy())
        return torch.from_numpy(np.load(path, allow_pickle=False))

    # -- serving --------------------------------------------------------------------------

    def build_splits(self) -> dict[str, Dataset]:
        folder = self.folder
        order = self.query_order()[: self.budget]
        self.posteriors = torch.from_numpy(PosteriorCache(folder).read(self.budget))
        flagged = self.posteriors[:, 0].isnan()  # a refusal is a whole row of NaN
        self.queries_flagged = int(flagged.sum())
        shuffled = np.random.default_rng(self.seed + 1).permutation(self.budget)
        if self.on_flag == "refuse":  # the attacker got no answer: nothing to train on
            shuffled = shuffled[~flagged.numpy()[shuffled]]
        n_val = math.floor(self.val_fraction * len(shuffled))
        if len(shuffled) == n_val or (self.val_fraction > 0 and n_val == 0):
            raise ConfigError(
                f"the detector refused {self.queries_flagged} of {self.budget} queries: "
                f"{len(shuffled)} answers are too few to train and validate a surrogate on"
            )
        val, train = shuffled[:n_val], shuffled[n_val:]
        pool = self.pool.split("pool")
        answer = partial(api_answers, granularity=self.granularity, top_k=self.top_k,
                         decimals=self.decimals)  # fmt: skip
        splits = {
            "train": TransferDataset(pool, order[train], self.posteriors, train, answer),
            "test": VictimLabelled(
                self.victim_data.split("test"), self._victim_test_labels(folder)
            ),
        }
        if n_val:
            splits["val"] = TransferDataset(pool, order[val], self.posteriors, val, answer)
        return splits

    def class_histogram(self) -> torch.Tensor:
        """How many transfer-set queries the victim assigned to each class (Figure 1, left)."""
        self.setup()
        answered = self.posteriors[~self.posteriors.isnan().any(dim=-1)]
        return torch.bincount(answered.argmax(-1), minlength=self.num_classes)

    def train_dataloader(self) -> DataLoader:
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
