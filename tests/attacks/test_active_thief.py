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
    with pytest.raises(ConfigError, match="dfal_classes must be >= 2, got 1"):
        ActiveThief(selection="dfal", dfal_classes=1)


def boundary_distance(net: nn.Module, images: torch.Tensor, classes: int = 5) -> torch.Tensor:
    """For a linear net, the exact L2 distance to the nearest boundary between each image's
    label and one of its next `classes` - 1 likeliest classes (all of them by default)."""
    weight, bias = net[1].weight, net[1].bias
    with torch.no_grad():
        f = images.flatten(1) @ weight.T + bias
        label = f.argmax(-1)
        w = weight[None] - weight[label][:, None]  # (n, C, D)
        gap = f[torch.arange(len(f)), label][:, None] - f
        ratio = gap / w.norm(dim=-1).clamp_min(1e-12)
        unlikely = f.argsort(-1, descending=True)[:, classes:]
        ratio[torch.arange(len(f)), label] = float("inf")
        ratio.scatter_(1, unlikely, float("inf"))
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


def far_fetched_class() -> nn.Module:
    """The linear surrogate with class 4 made the least likely of every image (a constant logit
    below the rest) and its boundary the nearest of all (its weight a long vector orthogonal to
    every image of the pool)."""
    net, images = surrogate(), torch.stack(POOL)
    null = torch.linalg.svd(images.flatten(1)).Vh[-1]  # 40 images in 48 dimensions
    with torch.no_grad():
        net[1].weight[4] = 1000 * null
        net[1].bias[4] = net(images)[:, :4].min() - 1
    return net


def test_deepfool_steps_toward_the_likeliest_classes_only():
    """With `classes` 3 of 5, DeepFool reaches the nearest boundary of the label's two likeliest
    rivals, as ART's `nb_grads` does, not class 4's; with all 5 (and by default, 10), class 4's;
    DFAL picks by the one it is given."""
    net, images = far_fetched_class(), torch.stack(POOL)
    top3 = boundary_distance(net, images, classes=3)
    assert (top3 > 2 * boundary_distance(net, images)).all()
    got = deepfool_distance(net, images, torch.device("cpu"), classes=3)
    assert torch.allclose(got, 1.02 * top3, rtol=1e-3, atol=2e-3)
    every = deepfool_distance(net, images, torch.device("cpu"), classes=5)
    assert torch.allclose(every, 1.02 * boundary_distance(net, images), rtol=1e-3, atol=2e-3)
    assert torch.equal(every, deepfool_distance(net, images, torch.device("cpu")))
    state = Seen(POOL, np.array([0]), None, torch.full((1, 5), 0.2), net, torch.device("cpu"), 1, 0)
    picks = ActiveThief(selection="dfal", dfal_classes=3).propose(state, 6).indices
    assert picks.tolist() == [i for i in top3.argsort().tolist() if i][:6]


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
