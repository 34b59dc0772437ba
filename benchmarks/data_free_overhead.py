"""What a data-free attack costs outside the API and the training step: DFME run by the framework
(`configs/attacks/dfme.yaml` over the embedded surrogate: rounds asked from Lightning's hooks,
every query through `PredictionAPI.answer` with its ledger, answers and G's state stored per
round) against a bare PyTorch loop of the same algorithm (same G, student, victim, batch,
directions, student steps; the victim called directly), in the same run, medians of `--repeats`.

Per DFME iteration it prints the time in the strategy's `propose` (G's forward passes, the
probes, G's update: the attack's own work), in the API (`answer`: the victim, the defences, the
books), in everything else of the fit (the student's steps, storage, Lightning), and the bare
loop's whole iteration; the ratio framework / bare is what the framework adds.

    python main.py fit --config configs/victim/digits_cnn.yaml   # the victim, once
    python benchmarks/data_free_overhead.py --victim runs/victim/digits_cnn/checkpoints/best.ckpt
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from knockoff_lab.api.prediction import PredictionAPI
from knockoff_lab.attacks.dfme import DFME, victim_logits
from knockoff_lab.nets.generators import build_generator
from knockoff_lab.nets.networks import build_network
from knockoff_lab.nets.victim import load_victim
from knockoff_lab.pipeline.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
B, M, STUDENT_STEPS = 64, 1, 5


def timed(owner, name: str, spent: list[float]):
    """Wrap `owner.name` so the seconds of each call go to `spent`; returns the original."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(owner, name, wrapper)
    return original


def framework(victim: str, iterations: int) -> dict[str, float]:
    proposing, answering = [], []
    propose = timed(DFME, "propose", proposing)
    answer = timed(PredictionAPI, "answer", answering)
    try:
        with tempfile.TemporaryDirectory() as folder:
            args = ["fit", "--config", str(ROOT / "configs/surrogate/digits_natural_probs.yaml")]
            args += ["--config", str(ROOT / "configs/attacks/dfme.yaml"), "--test_after_fit"]
            args += ["false", "--trainer.logger", "false", "--trainer.default_root_dir", folder]
            args += ["--trainer.enable_progress_bar", "false"]
            args += ["--data.init_args.api.init_args.victim", victim]
            args += ["--data.init_args.cache_dir", folder, "--data.init_args.budget"]
            args += [str(iterations * (B * (M + 1) + STUDENT_STEPS * B))]
            args += ["--data.init_args.api.init_args.ledger", f"{folder}/ledger.sqlite"]
            start = time.perf_counter()
            cli = cli_main(args)
            fit = time.perf_counter() - start
    finally:
        DFME.propose, PredictionAPI.answer = propose, answer
    assert cli.datamodule.api.record(cli.datamodule.client).asked == cli.datamodule.budget
    attack, api = sum(proposing), sum(answering)
    return {"attack": attack, "api": api, "rest": fit - attack - api, "total": fit}


def bare(victim_path: str, iterations: int) -> float:
    """The same DFME loop in plain PyTorch: the victim called directly, nothing stored."""
    torch.manual_seed(0)
    victim = load_victim(victim_path).eval()
    student = build_network("digits_cnn", 10)
    net = build_generator("dfme_small", 64, 16, 3)
    g_opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    s_opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for _ in range(iterations):
        z = torch.randn(B, 64)
        with torch.no_grad():
            x = net(z)
            u = F.normalize(torch.randn(B, M, x[0].numel()), dim=-1).view(B, M, *x.shape[1:])
            probes = torch.cat([x, (x[:, None] + 1e-3 * u).flatten(0, 1)])
            targets = victim_logits(victim(probes).softmax(-1))
            student.eval()
            losses = (student(probes) - targets).abs().mean(-1)
            student.train()
        differences = (losses[B:].view(B, M) - losses[:B, None]) / 1e-3
        gradient = x[0].numel() / M * (differences.view(B, M, 1, 1, 1) * u).sum(1)
        g_opt.zero_grad()
        (-(net(z) * gradient).sum() / B).backward()
        g_opt.step()
        for _ in range(STUDENT_STEPS):
            with torch.no_grad():
                x = net(torch.randn(B, 64))
                targets = victim_logits(victim(x).softmax(-1))
            s_opt.zero_grad()
            F.l1_loss(student(x), targets).backward()
            s_opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", required=True)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs, bares = [], []
    for _ in range(args.repeats):  # alternating, so drift hits both alike
        runs.append(framework(args.victim, args.iterations))
        bares.append(bare(args.victim, args.iterations))
    per = {k: 1e3 * statistics.median(r[k] for r in runs) / args.iterations for k in runs[0]}
    bare_ms = 1e3 * statistics.median(bares) / args.iterations
    print(f"DFME, {args.iterations} iterations of {B * (M + 1) + STUDENT_STEPS * B} queries, ")
    print(f"medians of {args.repeats} (ms per iteration):")
    for key in ("attack", "api", "rest", "total"):
        print(f"  framework {key:<7} {per[key]:8.1f}")
    print(f"  bare loop total   {bare_ms:8.1f}")
    print(f"framework / bare: x{per['total'] / bare_ms:.2f} (the fit's startup included)")


if __name__ == "__main__":
    main()
