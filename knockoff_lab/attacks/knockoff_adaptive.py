"""Knockoff's adaptive policy (Orekondy et al., CVPR 2019, 4.2): a gradient bandit over arms.

The paper's arms are the pool's label hierarchy; an attacker's pool has no labels, so the arms
here are k-means clusters (seeded, `arms` of them) of frozen features that need no training and
no labels: the pool images average-pooled to `feature_size` x `feature_size` pixels. With
`groups` > 1 the hierarchy has two levels, as the paper's: the arms' centroids are clustered
again into `groups` coarse nodes, the policy picks a node, then an arm inside it,
pi(a) = pi_node(g(a)) * pi_arm(a | g(a)), each a softmax of its own preferences, and a reward
steps both (a node's preference learns from every arm under it, so a good region is found
with fewer queries than its arms one by one). Both levels are recomputed deterministically
from the pool and the seed, so only the policy is saved.

Each round (one `propose`, one batch to the API) draws `count` queries: an arm from the policy
pi = (1 - explore) * softmax(H) + explore / K over the arms with images left (an exploration
floor; an exhausted arm, and a node with none left, is masked), then an unasked image of that
arm, uniformly; the surrogate's log-softmax on each picked image is kept. At the next `propose`
the answers to the last round are in `seen`, and each of its queries is rewarded:
  certainty  top-1 minus top-2 of the answer (the victim is sure);
  diversity  sum_k max(0, y_k - mean of the `window` answers before it_k) (a class unlike those
             seen lately: the paper's sliding window);
  loss       cross-entropy of the surrogate's log-softmax, as it was when the query was picked
             (before it learnt from the answer), against the answer (it still errs);
  all        their sum, each divided by its own running mean (+ epsilon) so no scale dominates.
Then the gradient bandit (Sutton & Barto 2.8) steps once per query, in the order asked, as the
paper updates per query: H_b += lr * (R - baseline) * (1[b = a] - pi_b), the baseline being the
mean of every reward so far, this one included, pi_b the softmax that H parametrises now (per
level, among the arms of the node picked).
`state_dict()` holds H, the baseline, per-arm counts, the last round's queries and the policy
entropy of every round, so a resumed attack continues where it stopped. After each round the
run logs `attack/policy_entropy` and `attack/arm_queries/<arm>` (queries so far per arm).
"""

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen, register_attack
from knockoff_lab.attacks.pool_views import answered_rows, pool_chunks, pool_images
from knockoff_lab.core.errors import ConfigError

REWARDS = ("certainty", "diversity", "loss")


def cluster_pool(
    pool, arms: int, groups: int, feature_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(arm of every pool image, node of every arm): seeded k-means on average-pooled pixels,
    then on the arms' centroids."""
    from sklearn.cluster import KMeans

    features = np.concatenate(
        [
            F.adaptive_avg_pool2d(chunk.float(), feature_size).flatten(1).numpy()
            for chunk in pool_chunks(pool)
        ]
    )
    fine = KMeans(n_clusters=min(arms, len(features)), n_init=3, random_state=seed)
    labels = fine.fit_predict(features).astype(np.int64)
    if groups == 1:
        return labels, np.zeros(arms, np.int64)
    coarse = KMeans(n_clusters=min(groups, len(fine.cluster_centers_)), n_init=3, random_state=seed)
    nodes = np.zeros(arms, np.int64)  # an arm k-means left empty stays in node 0, never drawn
    nodes[: len(fine.cluster_centers_)] = coarse.fit_predict(fine.cluster_centers_)
    return labels, nodes


def softmax(h: np.ndarray, available: np.ndarray) -> np.ndarray:
    """softmax of `h` over the `available` entries, 0 elsewhere."""
    h = np.where(available, h, -np.inf)
    soft = np.exp(h - h[available].max())
    return soft / soft.sum()


@register_attack
class KnockoffAdaptive(QueryStrategy):
    """`arms`: k-means clusters of the pool; `groups`: coarse nodes above them (1: a flat
    bandit); `reward`: certainty, diversity, loss or all; `lr`: the bandit's step size;
    `explore`: the uniform share of the policy."""

    def __init__(
        self,
        rounds: int = 10,
        arms: int = 10,
        reward: Literal["certainty", "diversity", "loss", "all"] = "all",
        lr: float = 0.5,
        explore: float = 0.1,
        feature_size: int = 4,
        epsilon: float = 1e-6,
        groups: int = 1,
        window: int = 100,
    ):
        super().__init__(rounds)
        if reward not in (*REWARDS, "all"):
            raise ConfigError(
                f"KnockoffAdaptive reward must be one of {REWARDS} or 'all', got {reward!r}"
            )
        if arms < 1 or not 1 <= groups <= arms or not 0 <= explore <= 1 or lr <= 0 or window < 1:
            raise ConfigError(
                "KnockoffAdaptive needs arms >= 1, 1 <= groups <= arms, "
                "0 <= explore <= 1, lr > 0 and window >= 1"
            )
        self.arms, self.groups, self.reward, self.window = arms, groups, reward, window
        self.lr, self.explore = lr, explore
        self.feature_size, self.epsilon = feature_size, epsilon
        self._clusters: tuple[tuple[int, int], np.ndarray] | None = None
        self.nodes = np.zeros(arms, np.int64)  # node of every arm, set with the clusters
        self.load_state_dict({})

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments only (the cache key): the policy is state, not a setting."""
        names = ("rounds", "arms", "groups", "reward", "lr", "explore", "feature_size", "epsilon")
        names += ("window",)
        return {name: getattr(self, name) for name in names}

    # -- the policy ------------------------------------------------------------------------

    def levels(self, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pi over the nodes, pi of each arm within its node): the softmaxes of H."""
        open_nodes = np.bincount(self.nodes, available, self.groups) > 0
        node_pi = softmax(np.asarray(self.h_nodes), open_nodes)
        h, arm_pi = np.asarray(self.h), np.zeros(self.arms)
        for g in np.flatnonzero(open_nodes):
            arm_pi += softmax(h, (self.nodes == g) & available)
        return node_pi, arm_pi

    def policy(self, available: np.ndarray) -> np.ndarray:
        """pi over the arms: node then arm, with the exploration floor, 0 on exhausted arms."""
        node_pi, arm_pi = self.levels(available)
        pi = (1 - self.explore) * node_pi[self.nodes] * arm_pi
        pi += self.explore * available / available.sum()
        return pi / pi.sum()

    def normalised(self, answers: torch.Tensor) -> torch.Tensor:
        answers = answers.float()
        return answers / answers.sum(-1, keepdim=True).clamp_min(self.epsilon)

    def diversity(self, seen: Seen, rows: np.ndarray) -> torch.Tensor:
        """sum_k max(0, y_k - mean_k of the `window` answered queries asked just before)."""
        answered = answered_rows(seen)
        answers = self.normalised(seen.answers[answered])
        sums = torch.cat([torch.zeros(1, answers.shape[1]), answers.cumsum(0)])
        place = np.searchsorted(answered, rows)  # each row's place among the answered ones
        start = np.maximum(place - self.window, 0)
        count = torch.from_numpy(place - start).clamp_min(1).unsqueeze(1)
        mean = (sums[place] - sums[start]) / count
        mine = answers[place]
        mean = torch.where(torch.from_numpy(place == 0).unsqueeze(1), mine, mean)  # none before
        return (mine - mean).clamp_min(0).sum(-1)

    def rewards(self, seen: Seen, rows: np.ndarray, log_probs: torch.Tensor | None) -> np.ndarray:
        """The reward of every query at `rows` (answered ones only); `log_probs`: the
        surrogate's log-softmax on them when they were picked (None: no surrogate then)."""
        answers = self.normalised(seen.answers[rows])
        parts: dict[str, torch.Tensor] = {}
        top = answers.topk(min(2, answers.shape[1]), dim=-1).values
        parts["certainty"] = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0)
        parts["diversity"] = self.diversity(seen, rows)
        if log_probs is not None:
            parts["loss"] = -(answers * log_probs).sum(-1)
        else:
            parts["loss"] = torch.zeros(len(rows))
        if self.reward != "all":
            return parts[self.reward].numpy().astype(np.float64)
        total = np.zeros(len(rows))
        for name in REWARDS:
            values = parts[name].numpy().astype(np.float64)
            n = self.reward_counts[name]
            self.reward_means[name] = (self.reward_means[name] * n + values.sum()) / (n + len(rows))
            self.reward_counts[name] = n + len(rows)
            total += values / (self.reward_means[name] + self.epsilon)
        return total

    def update(self, seen: Seen) -> None:
        """Reward the last round's queries (their answers are in `seen` now) and step H once
        per query, in the order they were asked."""
        if not self.last_indices or not len(seen.indices):
            return
        row_of = {int(index): row for row, index in enumerate(seen.indices.tolist())}
        answered = set(answered_rows(seen).tolist())
        picked = [
            (row_of[index], arm, k)
            for k, (index, arm) in enumerate(zip(self.last_indices, self.last_arms, strict=True))
            if row_of.get(index) in answered
        ]
        log_probs = torch.tensor(self.last_log_probs) if self.last_log_probs else None
        available = np.asarray(self.last_available, bool)
        self.last_indices, self.last_arms, self.last_log_probs = [], [], []
        if not picked:
            return
        rows, arms, order = (np.asarray(x, np.int64) for x in zip(*picked, strict=True))
        rewards = self.rewards(seen, rows, None if log_probs is None else log_probs[order])
        for reward, arm in zip(rewards.tolist(), arms.tolist(), strict=True):
            self.step(arm, reward, available)

    def step(self, arm: int, reward: float, available: np.ndarray) -> None:
        """One gradient-bandit step for one query of `arm`: the baseline takes the reward in
        first (Sutton & Barto: the mean of every reward so far, this one included), then both
        levels move by lr * advantage * (1[picked] - pi), with pi the softmaxes of H now."""
        self.rewarded += 1
        self.baseline += (reward - self.baseline) / self.rewarded
        advantage = self.lr * (reward - self.baseline)
        node_pi, arm_pi = self.levels(available)
        node = self.nodes[arm]
        h_nodes = np.asarray(self.h_nodes) - advantage * node_pi
        h_nodes[node] += advantage
        inside = self.nodes == node  # the arm's level: the arms of its node, pi within it
        h = np.asarray(self.h) - advantage * arm_pi * inside
        h[arm] += advantage
        self.h, self.h_nodes = h.tolist(), h_nodes.tolist()

    # -- a round ---------------------------------------------------------------------------

    def clusters(self, seen: Seen) -> np.ndarray:
        key = (len(seen.pool), seen.seed)
        if self._clusters is None or self._clusters[0] != key:
            labels, self.nodes = cluster_pool(
                seen.pool, self.arms, self.groups, self.feature_size, seen.seed
            )
            self._clusters = (key, labels)
        return self._clusters[1]

    def metrics(self) -> dict[str, float]:
        """The last round's policy entropy (log K: uniform; 0: one arm) and each arm's queries
        so far."""
        if not self.entropy:
            return {}
        arms = {f"arm_queries/{a}": float(n) for a, n in enumerate(self.counts)}
        return {"policy_entropy": self.entropy[-1], **arms}

    def propose(self, seen: Seen, count: int) -> Queries:
        labels = self.clusters(seen)
        if len(self.h) != self.arms or len(self.h_nodes) != self.groups:
            self.h, self.counts = [0.0] * self.arms, [0] * self.arms
            self.h_nodes = [0.0] * self.groups
        self.update(seen)
        rng = np.random.default_rng([seen.seed, seen.round])
        left = np.ones(len(labels), bool)
        left[seen.indices[seen.indices >= 0]] = False
        members = [
            rng.permutation(np.flatnonzero((labels == a) & left)).tolist() for a in range(self.arms)
        ]
        available = np.array([len(m) > 0 for m in members])
        if not available.any():
            raise ConfigError("KnockoffAdaptive: the pool has no unasked image left")
        pi = self.policy(available)
        self.last_available = available.tolist()
        self.entropy.append(float(-(pi[pi > 0] * np.log(pi[pi > 0])).sum()))
        picks, arms = [], []
        for _ in range(count):
            arm = int(rng.choice(self.arms, p=self.policy(available)))
            picks.append(members[arm].pop())
            arms.append(arm)
            self.counts[arm] += 1
            available[arm] = len(members[arm]) > 0
        self.last_indices, self.last_arms = picks, arms
        if seen.surrogate is not None and self.reward in ("loss", "all"):
            images = pool_images(seen.pool, np.asarray(picks))  # as it is now: before it learns
            self.last_log_probs = seen.surrogate_outputs(images).log_softmax(-1).tolist()
        return Queries(indices=np.asarray(picks, np.int64))

    def state_dict(self) -> dict[str, Any]:
        keys = (
            "h",
            "h_nodes",
            "counts",
            "baseline",
            "rewarded",
            "reward_means",
            "reward_counts",
            "last_indices",
            "last_arms",
            "last_available",
            "last_log_probs",
            "entropy",
        )
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the policy; an empty state is a fresh one."""
        self.h = list(state.get("h", [0.0] * self.arms))
        self.h_nodes = list(state.get("h_nodes", [0.0] * self.groups))
        self.counts = list(state.get("counts", [0] * self.arms))
        self.baseline = float(state.get("baseline", 0.0))
        self.rewarded = int(state.get("rewarded", 0))
        self.reward_means = dict(state.get("reward_means", dict.fromkeys(REWARDS, 0.0)))
        self.reward_counts = dict(state.get("reward_counts", dict.fromkeys(REWARDS, 0)))
        self.last_indices = list(state.get("last_indices", []))
        self.last_arms = list(state.get("last_arms", []))
        self.last_available = list(state.get("last_available", [True] * self.arms))
        self.last_log_probs = list(state.get("last_log_probs", []))
        self.entropy = list(state.get("entropy", []))
