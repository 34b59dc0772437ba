"""The prediction API: the only door. Eval mode and inference mode, float16 precision, defences
in order, per-client books and budgets, the owner's posterior cache, bad queries and victims."""

import pytest
import torch
from torch import nn

from knockoff_lab.api import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import DawnWatermark, LabelOnly, Rounded, TopK


class Recorder(nn.Module):
    """A 4-class 'victim' that records its mode, whether autograd was on, and batch sizes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_inference_mode_enabled(), len(x)))
        return self.fc(x.flatten(1)[:, :3])


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_answers_are_float16_posteriors_from_an_eval_victim_in_inference_mode():
    victim = Recorder().train()
    api = PredictionAPI.around(victim, batch_size=4)
    x = images(6)
    answers = api.answer(x)
    with torch.no_grad():
        expected = victim.fc(x.flatten(1)[:, :3]).softmax(-1).half().float()
    assert torch.equal(answers, expected)
    assert victim.calls == [(False, True, 4), (False, True, 2)]


def test_defences_run_in_order_and_compose():
    api = PredictionAPI.around(Recorder(), defences=[TopK(2), Rounded(1)])
    x = images(8)
    raw = PredictionAPI.around(api.victim).answer(x)
    answers = api.answer(x)
    assert ((answers > 0).sum(-1) <= 2).all()
    values, indices = raw.topk(2, dim=-1)
    expected = torch.zeros_like(raw).scatter_(-1, indices, values)
    assert torch.allclose(answers, torch.round(expected * 10) / 10)
    label_first = PredictionAPI.around(api.victim, defences=[LabelOnly(), TopK(2)])
    assert torch.equal(label_first.answer(x), nn.functional.one_hot(raw.argmax(-1), 4).float())


def test_books_per_client_and_the_budget_is_enforced_before_any_work():
    victim = Recorder()
    api = PredictionAPI.around(victim, budget=10)
    api.answer(images(6), client="alice")
    api.answer(images(4), client="alice")
    api.answer(images(3), client="bob")
    calls = len(victim.calls)
    with pytest.raises(ConfigError, match="budget exhausted for client 'alice': 10 asked, 1 more"):
        api.answer(images(1), client="alice")
    assert len(victim.calls) == calls  # refused before the victim ran
    alice, bob = api.record("alice"), api.record("bob")
    assert (alice.asked, alice.answered, alice.budget_left) == (10, 10, 0)
    assert (bob.asked, bob.answered, bob.budget_left) == (3, 3, 7)


def test_ledger_file_survives_a_new_api_object(tmp_path):
    victim = Recorder()
    PredictionAPI.around(victim, budget=5, ledger=tmp_path / "books.sqlite").answer(images(4))
    again = PredictionAPI.around(victim, budget=5, ledger=tmp_path / "books.sqlite")
    assert again.record().asked == 4
    with pytest.raises(ConfigError, match="budget exhausted"):
        again.answer(images(2))
    other_stack = PredictionAPI.around(
        victim, defences=[LabelOnly()], ledger=tmp_path / "books.sqlite"
    )
    assert other_stack.record().asked == 0  # another defence stack keeps books of its own


def test_a_failing_victim_charges_nothing():
    class Broken(Recorder):
        def forward(self, x):
            raise RuntimeError("victim crashed")

    api = PredictionAPI.around(Broken(), num_classes=4)
    with pytest.raises(RuntimeError):
        api.answer(images(3))
    assert api.record().asked == 0


def test_owner_cache_spares_cached_batches_and_answers_identically(tmp_path):
    victim = Recorder()
    api = PredictionAPI.around(victim, posterior_cache=tmp_path / "owner", batch_size=8)
    x = images(8)
    first = api.answer(x)
    assert sum(n for *_, n in victim.calls) == 8
    label = PredictionAPI.around(victim, defences=[LabelOnly()], posterior_cache=tmp_path / "owner")
    mixed = torch.cat([x[:5], images(3, seed=1)])
    answers = label.answer(mixed)  # 5 cached, 3 new images: the batch runs whole
    assert [n for *_, n in victim.calls] == [8, 8]
    assert torch.equal(answers[:5], nn.functional.one_hot(first[:5].argmax(-1), 4).float())
    label.answer(mixed)  # all cached now: the victim does not run
    assert [n for *_, n in victim.calls] == [8, 8]
    fresh = PredictionAPI.around(victim)  # no cache: recomputes
    assert torch.equal(
        fresh.answer(mixed),
        PredictionAPI.around(victim, posterior_cache=tmp_path / "owner").answer(mixed),
    )
    changed = Recorder()  # another victim: another cache folder, nothing reused
    PredictionAPI.around(changed, posterior_cache=tmp_path / "owner").answer(x)
    assert sum(n for *_, n in changed.calls) == 8


def test_a_corrupt_owner_cache_file_is_ignored_with_a_warning(tmp_path):
    victim = Recorder()
    api = PredictionAPI.around(victim, posterior_cache=tmp_path / "owner")
    expected = api.answer(images(4))
    for path in (tmp_path / "owner").rglob("*.npy"):
        path.write_bytes(b"\x93NUMPY garbage")
    again = PredictionAPI.around(victim, posterior_cache=tmp_path / "owner")
    with pytest.warns(UserWarning, match="ignoring unreadable victim-posterior cache file"):
        assert torch.equal(again.answer(images(4)), expected)


@pytest.mark.parametrize(
    "queries, message",
    [
        (
            torch.zeros(2, 12),
            r"queries must be a float tensor \(N, channels, H, W\), got \(2, 12\)",
        ),
        (torch.zeros(2, 3, 2, 2, dtype=torch.int64), "queries must be a float tensor"),
        (torch.full((2, 3, 2, 2), float("nan")), "queries hold non-finite values"),
    ],
)
def test_bad_queries_are_refused_uncounted(queries, message):
    api = PredictionAPI.around(Recorder())
    with pytest.raises(ConfigError, match=message):
        api.answer(queries)
    assert api.record().asked == 0


def test_non_finite_victim_output_is_an_error_naming_the_victim():
    victim = Recorder()
    with torch.no_grad():
        victim.fc.bias[0] = float("nan")
    with pytest.raises(ConfigError, match="victim Recorder gave non-finite outputs for 3 of 3"):
        PredictionAPI.around(victim).answer(images(3))


def test_from_a_checkpoint(victim_ckpt, tmp_path):
    api = PredictionAPI(str(victim_ckpt), ledger=None, posterior_cache=None)
    assert api.num_classes == 10
    assert torch.allclose(api.answer(torch.zeros(2, 3, 32, 32)).sum(-1), torch.ones(2), atol=1e-2)
    with pytest.raises(ConfigError, match="victim checkpoint .*none.ckpt does not exist"):
        PredictionAPI(str(tmp_path / "none.ckpt"))
    (tmp_path / "bad.ckpt").write_bytes(victim_ckpt.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="bad.ckpt is not a readable checkpoint"):
        PredictionAPI(str(tmp_path / "bad.ckpt"))


def test_the_victims_identity_is_its_weights_not_where_its_file_was_saved(victim_ckpt, tmp_path):
    """A checkpoint's bytes hold its run folder (Lightning's callback state): the same victim
    saved in another folder is the same deployment (so the same transfer-set keys, and clients,
    whom DAWN's watermark choice reads: a study's numbers must not depend on its output
    folder); other weights are another deployment."""
    checkpoint = torch.load(victim_ckpt, weights_only=False)
    checkpoint["callbacks"] = {"ModelCheckpoint": {"dirpath": str(tmp_path / "elsewhere")}}
    torch.save(checkpoint, moved := tmp_path / "moved.ckpt")
    assert moved.read_bytes() != victim_ckpt.read_bytes()
    dawn = [DawnWatermark()]
    described = [
        PredictionAPI(str(path), dawn, ledger=None, posterior_cache=None).describe()
        for path in (victim_ckpt, moved)
    ]
    assert described[0] == described[1]
    checkpoint["state_dict"] = {k: v + 1e-3 for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, other := tmp_path / "other.ckpt")
    api = PredictionAPI(str(other), dawn, ledger=None, posterior_cache=None)
    assert api.describe() != described[0]


def test_bad_api_options():
    with pytest.raises(ConfigError, match="budget must be >= 1"):
        PredictionAPI.around(Recorder(), budget=0)
    with pytest.raises(ConfigError, match="TopK: k must be in 1..4"):
        PredictionAPI.around(Recorder(), defences=[TopK(5)])
