"""DFME and MAZE: their generator climbs the student-victim disagreement through paid probes
alone, and their rounds cost what their formula says (bad inputs: tests/test_bad_inputs.py)."""

import numpy as np
import pytest
import torch
from torch import nn

from knockoff_lab.attacks import DFME, MAZE, HardLabelDataFree, Seen
from knockoff_lab.attacks.dfme import one_hot_rows
from knockoff_lab.core.errors import ConfigError


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 4))


def seen_before(r: int, images: torch.Tensor, answers: torch.Tensor, student: nn.Module) -> Seen:
    """What a data-free strategy sees before round `r`: its synthetic queries so far (no pool
    index), their answers and the student, on the CPU."""
    pool = [torch.zeros(3, 8, 8)]
    return Seen(pool, np.full(len(images), -1), images, answers, student, torch.device("cpu"), r, 0)


def generator_steps(attack: DFME, updates: int, victim: nn.Module, student: nn.Module):
    """Run `updates` DFME iterations against `victim` with a frozen `student`, answering each
    round as an API would (softmax of the victim); returns the disagreement after each update."""
    images, answers, curve = torch.empty(0, 3, 8, 8), torch.empty(0, 4), []
    sizes = attack.round_sizes(updates * attack.queries_per_iteration() + attack.probes + 1)
    for r in range(len(sizes)):
        seen = seen_before(r, images, answers, student)
        asked = attack.propose(seen, sizes[r]).images
        with torch.no_grad():
            answered = victim(asked).softmax(-1)
        images, answers = torch.cat([images, asked]), torch.cat([answers, answered])
        if attack.metrics() and (not curve or attack.metrics()["disagreement"] != curve[-1]):
            curve.append(attack.metrics()["disagreement"])
        if len(curve) > updates:
            break
    return curve


@pytest.mark.parametrize("kind", [DFME, MAZE])
def test_the_generator_raises_the_disagreement_it_cannot_see_the_gradient_of(kind):
    """A student that never learns: G, trained on forward differences of paid answers only,
    must find images where it and the victim disagree more (a flipped sign lowers it)."""
    attack = kind(
        batch=32,
        directions=4,
        student_steps=1,
        generator="dfme_small",
        latent=8,
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    curve = generator_steps(attack, 30, small_net(1), small_net(2))
    assert np.mean(curve[-5:]) > 1.3 * np.mean(curve[:5]), curve


def steps_trained_on(monkeypatch) -> list[torch.Tensor]:
    """The images of every training step the surrogate takes, as they come."""
    from lightning_modules import Surrogate

    trained, step = [], Surrogate.training_step
    monkeypatch.setattr(
        Surrogate,
        "training_step",
        lambda self, batch, i: (trained.append(batch[0].cpu().clone()), step(self, batch, i))[1],
    )
    return trained


def run_dfme(victim_ckpt, budget: int, *more: str, overlay: str = "dfme"):
    from knockoff_lab.pipeline.cli import cli_main
    from tests.attacks.test_attacks import CONFIGS

    args = ["fit", "--config", str(CONFIGS / "surrogate/digits_natural_probs.yaml")]
    args += ["--config", str(CONFIGS / f"attacks/{overlay}.yaml")]
    args += ["--data.init_args.api.init_args.victim", str(victim_ckpt)]
    args += ["--data.init_args.budget", str(budget), "--test_after_fit", "false"]
    args += ["--data.init_args.attack.init_args.batch", "8", *more]
    return cli_main(args)


def test_every_probe_is_a_paid_query_and_the_books_agree_with_the_formula(victim_ckpt):
    """From the YAML: 2 whole iterations of 8 x (1 + 1) probes + 5 x 8 student queries, then
    a probe round and 3 student rounds (the last of 4) for the remaining 44: the API's books
    hold the budget exactly, and the surrogate stepped on the student rounds alone."""
    cli = run_dfme(victim_ckpt, 2 * 56 + 44)
    data = cli.datamodule
    assert data.attack.queries_per_iteration() == 8 * 2 + 5 * 8 == 56
    assert data.sizes == ([16] + [8] * 5) * 2 + [16, 8, 8, 8, 4]
    record = data.api.record(data.client)
    assert (record.asked, record.answered) == (156, 156)
    assert cli.trainer.global_step == 14 == len(data.sizes) - 3  # no step on the 3 probe rounds
    assert data.rounds_done == len(data.sizes) == data.steps_served
    assert "g.project.weight" in data.round(1).proposal()[1]  # G as its update left it
    assert "g.project.weight" not in data.round(2).proposal()[1]  # unchanged: not stored again


def test_a_rerun_reads_every_round_back_and_asks_nothing(victim_ckpt):
    first = run_dfme(victim_ckpt, 56).datamodule
    again = run_dfme(victim_ckpt, 56).datamodule
    assert again.api.record(again.client).asked == 56  # the books: the first run's only
    assert torch.equal(again.answers, first.answers) and torch.equal(again.images, first.images)


def test_a_generator_that_diverged_fails_before_its_queries_are_asked():
    attack = DFME(batch=4, latent=8)
    attack.round_sizes(100)
    seen = Seen(
        [torch.zeros(3, 8, 8)],
        np.empty(0),
        None,
        torch.empty(0, 4),
        None,
        torch.device("cpu"),
        0,
        0,
    )
    attack.build(seen).project.weight.data.fill_(float("nan"))
    with pytest.raises(ConfigError, match="generator made non-finite images for round 0"):
        attack.propose(seen, 8)


def test_maze_replays_earlier_student_queries_unpaid_and_never_its_probes(victim_ckpt, monkeypatch):
    """Iterations of 8 x (10 + 1) probes + 5 x 8 student queries; every step trains on its own
    round and up to 12 earlier student queries (none from a probe round), paying nothing more."""
    trained_on = steps_trained_on(monkeypatch)
    more = ["--data.init_args.attack.init_args.replay", "12"]
    more += ["--data.init_args.attack.init_args.directions", "10"]
    cli = run_dfme(victim_ckpt, 2 * 128, *more, overlay="maze")
    data = cli.datamodule
    assert data.sizes == [88, 8, 8, 8, 8, 8] * 2
    assert data.api.record(data.client).asked == 256
    assert [len(x) for x in trained_on] == [8, 16] + [20] * 8
    starts = np.cumsum([0, *data.sizes])
    probes = torch.cat([data.images[starts[r] : starts[r + 1]] for r in (0, 6)])
    students = [data.images[starts[r] : starts[r + 1]] for r in range(12) if r not in (0, 6)]
    for images, own in zip(trained_on, students, strict=True):
        assert torch.equal(images[:8], own)  # its own round first, then the replayed
        replayed = images[8:]
        assert not (replayed[:, None] == probes[None]).flatten(2).all(-1).any()
        assert (replayed[:, None] == torch.cat(students)[None]).flatten(2).all(-1).any(-1).all()


def test_the_hard_label_generator_finds_images_the_student_gets_wrong():
    """A frozen student and a victim that answer labels only: G, stepped on the labels the
    victim gave its last images, must raise the student's cross-entropy to them (the class
    diversity off, so the curve is that term alone; a flipped sign lowers it)."""
    attack = HardLabelDataFree(
        batch=32,
        student_steps=1,
        diversity=0.0,
        latent=8,
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    victim, student = small_net(1), small_net(2)
    images, answers, curve = torch.empty(0, 3, 8, 8), torch.empty(0, 4), []
    for r in range(40):
        seen = seen_before(r, images, answers, student)
        asked = attack.propose(seen, 32).images
        with torch.no_grad():
            answered = torch.nn.functional.one_hot(victim(asked).argmax(-1), 4).float()
        images, answers = torch.cat([images, asked]), torch.cat([answers, answered])
        curve += list(attack.metrics().values())
    assert np.mean(curve[-5:]) > 1.3 * np.mean(curve[:5]), curve
    assert all(p.grad is None for p in student.parameters())  # G's steps leave it untouched


def test_the_hard_label_attack_runs_on_labels_every_round_a_paid_training_step(victim_ckpt):
    from tests.attacks.test_attacks import CONFIGS

    labels = ["--config", str(CONFIGS / "defences/label_only.yaml")]
    cli = run_dfme(victim_ckpt, 100, *labels, overlay="hard_label")
    data = cli.datamodule
    assert data.sizes == [8] * 12 + [4]
    assert data.api.record(data.client).asked == 100
    assert cli.trainer.global_step == 13 == data.rounds_done
    assert one_hot_rows(data.answers)  # the API gave labels, and that was enough
    stored = [r for r in range(13) if "g.project.weight" in data.round(r).proposal()[1]]
    assert stored == [5, 10]  # G stepped every student_steps rounds, saved with that round


def test_rounds_the_api_refuses_whole_are_paid_and_skipped(victim_ckpt, monkeypatch):
    """A defence that stops answering after 60 queries: every later round is paid for and
    refused, and the student's step on it has nothing to learn from (no loss, no gradient)."""
    trained = steps_trained_on(monkeypatch)
    defences = '[{"class_path": "tests.toy_defence.RefuseAfter", "init_args": {"limit": 60}}]'
    cli = run_dfme(victim_ckpt, 156, "--data.init_args.api.init_args.defences", defences)
    data = cli.datamodule
    record = data.api.record(data.client)
    assert (record.asked, record.answered, record.refused) == (156, 60, 96)
    assert [len(images) for images in trained] == [8] * 5 + [
        0
    ] * 9  # 16 probes + 5 x 8 answered, then 4 of 16 probes


@pytest.mark.parametrize("overlay, budget", [("dfme", 32), ("maze", 70), ("hard_label", 32)])
def test_the_paper_scale_overlays_run_an_iteration_on_a_cifar10_layout(tmp_path, overlay, budget):
    """configs/attacks/<attack>_cifar10.yaml over the paper-scale surrogate, on a tiny CIFAR-10
    in its real layout (python batches) and a ResNet-18 victim: one iteration and a step more,
    so a run of millions of queries cannot crash hours in."""
    from knockoff_lab.nets.networks import build_network
    from knockoff_lab.pipeline.cli import cli_main
    from tests.attacks.test_attacks import CONFIGS
    from tests.datamodules import layouts

    root = layouts.cifar10(tmp_path / "data")
    state = {f"net.{k}": v for k, v in build_network("resnet18", 10).state_dict().items()}
    hparams = {"arch": "resnet18", "num_classes": 10}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "victim.ckpt")
    args = ["fit", "--config", str(CONFIGS / "surrogate/rn34_imagenet.yaml")]
    args += ["--config", str(CONFIGS / f"attacks/{overlay}_cifar10.yaml")]
    args += ["--data.init_args.api.init_args.victim", str(tmp_path / "victim.ckpt")]
    for part in ("pool", "victim_data"):
        args += [f"--data.init_args.{part}.init_args.root", str(root)]
    args += ["--data.init_args.attack.init_args.batch", "4", "--data.init_args.budget", str(budget)]
    args += ["--data.init_args.num_workers", "0", "--trainer.limit_test_batches", "1"]
    cli = cli_main(args)
    data = cli.datamodule
    assert sum(data.sizes) == budget == data.api.record(data.client).asked
    assert data.rounds_done == len(data.sizes) and data.images.shape[1:] == (3, 32, 32)
    assert "test/acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize("kind", [DFME, HardLabelDataFree])
def test_a_resumed_attack_proposes_what_the_uninterrupted_one_does(kind, tmp_path):
    """Rounds read back in order (their stored state through the transfer set's files, G's
    tensors as .npy) leave a fresh strategy where the first one was: its next round is the same."""
    from datamodules.rounds import Round

    def make():
        attack = kind(batch=8, latent=8)
        return attack, attack.round_sizes(300)

    victim, student = small_net(1), small_net(2)
    first, sizes = make()
    images, answers, proposals = torch.empty(0, 3, 8, 8), torch.empty(0, 4), []
    for r in range(12):
        seen = seen_before(r, images, answers, student)
        queries = first.propose(seen, sizes[r])
        Round(tmp_path / f"round-{r}", 4).save_proposal(queries, first.state_dict())
        with torch.no_grad():
            answered = victim(queries.images).softmax(-1)
        images, answers = torch.cat([images, queries.images]), torch.cat([answers, answered])
        proposals.append(queries.images)
    resumed, _ = make()
    for r in range(11):  # a kill after round 10: rounds 0-10 read back, round 11 proposed
        resumed.load_state_dict(Round(tmp_path / f"round-{r}", 4).proposal()[1])
    cut = sum(sizes[:11])
    seen = seen_before(11, images[:cut], answers[:cut], student)
    assert torch.equal(resumed.propose(seen, sizes[11]).images, proposals[11])
