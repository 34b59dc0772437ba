"""ActiveThief: greedy k-center picks what a brute-force greedy farthest-point search picks (on a
tiny 2-D example and through `propose` on the surrogate's softmax); entropy picks the unasked
images the surrogate is least sure of; the schedule is a small random seed round, then rounds."""

import numpy as np
import pytest
import torch
from torch import nn

from knockoff_lab.attacks import ActiveThief, Seen
from knockoff_lab.attacks.active_thief import deepfool_distance, dfal_chunk, kcenter_greedy
from knockoff_lab.core.errors import ConfigError


def brute_force_greedy(points: np.ndarray, centers: list, count: int) -> list[int]:
    """The definition, in loops: each pick maximises the distance to its nearest center."""
    centers, picks = [np.asarray(c) for c in centers], []
    for _ in range(count):
        best, best_distance = None, -1.0
        for i, p in enumerate(points):
            if i in picks:
                continue
            near = min((np.linalg.norm(p - c) for c in centers), default=np.inf)
            if near > best_distance:
                best, best_distance = i, near
        picks.append(best)
        centers.append(points[best])
    return picks


def test_kcenter_matches_brute_force_greedy_in_2d():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    centers = rng.normal(size=(3, 2))
    got = kcenter_greedy(torch.tensor(points), torch.tensor(centers), 8, chunk=7)
    assert got.tolist() == brute_force_greedy(points, list(centers), 8)
    corners = np.array([[0, 0], [0.1, 0], [5, 5], [0, 0.2], [-4, 6]], float)
    picks = kcenter_greedy(torch.tensor(corners), torch.tensor([[0.0, 0.0]]), 2)
    assert picks.tolist() == [4, 2]  # the two far corners (farthest first), not the near ones


POOL = [torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(40)]


def surrogate() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()


def seen(asked, r: int) -> Seen:
    asked = np.asarray(asked, np.int64)
    return Seen(
        POOL, asked, None, torch.full((len(asked), 5), 0.2), surrogate(), torch.device("cpu"), r, 0
    )


def outputs(indices) -> torch.Tensor:
    with torch.no_grad():
        return surrogate()(torch.stack([POOL[i] for i in indices]))


def test_kcenter_proposal_is_greedy_farthest_on_softmax_outputs():
    asked, unasked = np.arange(0, 40, 3), np.setdiff1d(np.arange(40), np.arange(0, 40, 3))
    chosen = ActiveThief(selection="kcenter").propose(seen(asked, 1), 6).indices
    points = outputs(unasked).softmax(-1).numpy()
    expected = brute_force_greedy(points, list(outputs(asked).softmax(-1).numpy()), 6)
    assert chosen.tolist() == unasked[expected].tolist()


def test_entropy_picks_the_most_uncertain_unasked():
    asked = np.arange(0, 40, 2)
    chosen = ActiveThief(selection="entropy").propose(seen(asked, 1), 5).indices
    unasked = np.arange(1, 40, 2)
    p = outputs(unasked).softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    assert set(chosen.tolist()) == set(unasked[entropy.argsort(descending=True)[:5]].tolist())
    least = set(unasked[entropy.argsort()[:5]].tolist())
    assert not least & set(chosen.tolist())


def test_seed_round_is_random_and_the_schedule_sums_to_the_budget():
    strategy = ActiveThief(rounds=5, seed_fraction=0.1)
    assert strategy.round_sizes(1000) == [100, 225, 225, 225, 225]
    assert strategy.round_sizes(5) == [1, 1, 1, 1, 1]
    first = strategy.propose(seen([], 0), 10).indices
    assert np.array_equal(first, np.random.default_rng([0, 0]).permutation(40)[:10])
    with pytest.raises(ConfigError, match="selection"):
        ActiveThief(selection="deepfool")


def boundary_distance(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """For a linear net, the exact L2 distance to the nearest decision boundary."""
    weight, bias = net[1].weight, net[1].bias
    with torch.no_grad():
        f = images.flatten(1) @ weight.T + bias
        label = f.argmax(-1)
        w = weight[None] - weight[label][:, None]  # (n, C, D)
        gap = f[torch.arange(len(f)), label][:, None] - f
        ratio = gap / w.norm(dim=-1).clamp_min(1e-12)
        ratio[torch.arange(len(f)), label] = float("inf")
        return ratio.min(-1).values


def test_dfal_picks_the_unasked_images_nearest_the_surrogates_boundary():
    images = torch.stack(POOL)
    exact = boundary_distance(surrogate(), images)
    got = deepfool_distance(surrogate(), images, torch.device("cpu"), overshoot=0.02)
    assert torch.allclose(got, 1.02 * exact, rtol=1e-3, atol=2e-3)  # one exact step if linear
    asked = [0, 1, 2, 3]
    picks = ActiveThief(selection="dfal").propose(seen(asked, 1), 6).indices
    nearest = [i for i in exact.argsort().tolist() if i not in asked][:6]
    assert picks.tolist() == nearest


def test_deepfool_takes_gradients_only_of_images_still_to_move(monkeypatch):
    """On a linear surrogate one step flips every image: the next step finds that with a
    forward pass and takes no second Jacobian; each Jacobian has C - 1 rows per image."""
    from knockoff_lab.attacks import active_thief

    shapes, taken = [], active_thief.boundary_gradients

    def counted(net, x, *rest):
        gap, w = taken(net, x, *rest)
        shapes.append(tuple(w.shape[:2]))
        return gap, w

    monkeypatch.setattr(active_thief, "boundary_gradients", counted)
    deepfool_distance(surrogate(), torch.stack(POOL), torch.device("cpu"))
    assert shapes == [(len(POOL), 4)]  # 5 classes


def test_dfal_chunks_hold_the_jacobian_of_32_paper_scale_images():
    assert dfal_chunk(256, torch.Size([3, 224, 224])) == 32
    assert dfal_chunk(1000, torch.Size([3, 224, 224])) == 32  # never fewer
    assert dfal_chunk(10, torch.Size([3, 16, 16])) == 256  # never more
    assert dfal_chunk(200, torch.Size([3, 96, 96])) == 223  # the same memory in between
