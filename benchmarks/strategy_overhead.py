"""What planning a round costs: each strategy's `propose()` time (median over repeats) for one
adaptive round, against RandomSampling measured in the same run.

The setting of an attack's second round: a pool of `--pool` digits-size crops (3 x 32 x 32),
`--asked` queries already answered (random probability vectors stand in for the API), an
untrained digits_cnn surrogate in eval mode, and a round of `--count` queries. Strategies that
score the pool (ActiveThief) run the surrogate over every unasked image; KnockoffAdaptive's
k-means of the pool is done once and cached, reported apart as its first call; its repeats
include rewarding the `--asked` queries as the last round's (the surrogate run over them).

    python benchmarks/strategy_overhead.py [--pool 3000] [--asked 300] [--count 300] [--repeats 5]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from datamodules import CropsPoolDataModule
from knockoff_lab.attacks import (
    ActiveThief,
    JacobianAugmentation,
    KnockoffAdaptive,
    RandomSampling,
    Seen,
)
from knockoff_lab.nets.networks import build_network


def timed(strategy, seen: Seen, count: int) -> float:
    start = time.perf_counter()
    strategy.propose(seen, count)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=3000)
    parser.add_argument("--asked", type=int, default=300)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pool = CropsPoolDataModule(size=args.pool).split("pool")
    torch.manual_seed(0)
    surrogate = build_network("digits_cnn", 10).eval()
    asked = np.random.default_rng(0).permutation(args.pool)[: args.asked]
    answers = torch.distributions.Dirichlet(torch.ones(10)).sample((args.asked,))
    seen = Seen(pool, asked, None, answers, surrogate, torch.device("cpu"), 1, 0)
    strategies = {
        "RandomSampling": RandomSampling,
        "KnockoffAdaptive": KnockoffAdaptive,
        "KnockoffAdaptive(tree)": lambda: KnockoffAdaptive(groups=3),
        "ActiveThief(entropy)": lambda: ActiveThief(selection="entropy"),
        "ActiveThief(kcenter)": lambda: ActiveThief(selection="kcenter"),
        "ActiveThief(dfal)": lambda: ActiveThief(selection="dfal"),
        "JacobianAugmentation": JacobianAugmentation,
        "JacobianAugmentation(T-RND)": lambda: JacobianAugmentation(target="random"),
    }
    print(
        f"pool {args.pool}, asked {args.asked}, round of {args.count}, "
        f"median of {args.repeats}, {torch.get_num_threads()} threads"
    )
    baseline = None
    for name, build in strategies.items():
        strategy = build()
        first = timed(strategy, seen, args.count)  # KnockoffAdaptive: k-means on this call
        state = strategy.state_dict()
        if isinstance(strategy, KnockoffAdaptive):  # time the reward step too: the asked
            arms = strategy.clusters(seen)[asked]  # queries were the last round's
            levels = strategy.levels(np.ones(strategy.arms, bool))
            state |= {
                "last_indices": asked.tolist(),
                "last_arms": arms.tolist(),
                "last_levels": [level.tolist() for level in levels],
            }
        times = []
        for _ in range(args.repeats):
            strategy.load_state_dict(state)  # the same round each repeat
            times.append(timed(strategy, seen, args.count))
        median = statistics.median(times)
        baseline = baseline or median
        print(
            f"{name:28s} {1e3 * median:9.2f} ms/round  x{median / baseline:8.1f} of random"
            f"  (first call {1e3 * first:.1f} ms)"
        )


if __name__ == "__main__":
    main()
