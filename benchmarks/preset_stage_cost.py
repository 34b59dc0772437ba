"""What a preset's stage costs now against the same stage as it ran before the fixed costs were
cut, both in one run (which goes first alternates by repeat), medians per stage.

The stages are grid cells of `configs/reproduce/matrix.yaml` (22 epochs on the embedded digits
victim, the defence report on: five of its attacks, and MAD) and DFAL's of `budgets.yaml` (the same
with 1,000 queries), their configs written as `reproduce` writes a cell's, run in process.
"Before" restores, in this process only, what each cut removed:
  - `self.log("train/loss")` on every step (now only on the steps the logger writes);
  - the parsers of all four subcommands (now the one asked for);
  - Figure 1 drawn and the victim's test set scored every epoch (now off in a cell, whose
    figures and curves the report never shows);
  - DFAL's DeepFool in chunks of 32 images (now as many as fit the memory of 32 at 224 px).
Printed: each stage's seconds before and now, and the ratio of the sums; a preset's time scales
by about that ratio, its model compute being the same.

    python main.py fit --config configs/victim/digits_cnn.yaml   # the victim, once
    python benchmarks/preset_stage_cost.py [--victim CKPT] [--repeats 1] [--only random dfal]
"""

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

import knockoff_lab.attacks.active_thief as active_thief
import lightning_modules.surrogate as surrogate
from knockoff_lab.pipeline.cli import KnockoffCLI, cli_main
from knockoff_lab.pipeline.stages import Stage, StageRunner

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = [CONFIGS / "surrogate/digits_natural_probs.yaml", CONFIGS / "callbacks/defence_report.yaml"]
STAGES = {  # name -> (overlays, settings): the matrix's attacks, a defence, and budgets' DFAL
    "random": ([], {}),
    "adaptive": (["attacks/knockoff_adaptive.yaml"], {}),
    "entropy": (["attacks/activethief.yaml"], {}),
    "kcenter": (
        ["attacks/activethief.yaml"],
        {"data.init_args.attack.init_args.selection": "kcenter"},
    ),
    "jbda": (["attacks/jbda.yaml"], {}),
    "random-mad": (["defences/mad.yaml"], {}),
    "dfal": (
        ["attacks/activethief.yaml"],
        {"data.init_args.attack.init_args.selection": "dfal", "data.init_args.budget": 1000},
    ),
}


def every_step(module, loss) -> None:
    module.log("train/loss", loss, prog_bar=True)


@contextmanager
def as_before():
    """The cut costs restored in this process (see the module docstring)."""
    saved = surrogate.log_loss, KnockoffCLI.subcommands, active_thief.dfal_chunk
    surrogate.log_loss = every_step
    KnockoffCLI.subcommands = lambda self: LightningCLI.subcommands()
    active_thief.dfal_chunk = lambda classes, image: active_thief.DFAL_CHUNK
    try:
        yield
    finally:
        surrogate.log_loss, KnockoffCLI.subcommands, active_thief.dfal_chunk = saved


def run(name: str, victim: str, before: bool, folder: Path) -> float:
    """Seconds of one cell, its config written as `reproduce` writes a cell's (before: as a
    stage whose figures the report shows, the cut costs restored)."""
    overlays, settings = STAGES[name]
    stage = Stage(
        name=name,
        config=[str(c) for c in [*BASE, *(CONFIGS / o for o in overlays)]],
        set={
            "data.init_args.api.init_args.victim": victim,
            "trainer.max_epochs": 22,
            "model.init_args.lr_scheduler.init_args.T_max": 22,
            **settings,
        },
    )
    config = StageRunner(folder, {}).effective_config(stage, folder, shown=before)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    with as_before() if before else nullcontext():
        cli_main(["fit", "--config", str(folder / "config.yaml")])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="runs/victim/digits_cnn/checkpoints/best.ckpt")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(STAGES), choices=list(STAGES))
    args = parser.parse_args()
    if not Path(args.victim).is_file():
        train = "python main.py fit --config configs/victim/digits_cnn.yaml"
        raise SystemExit(f"victim checkpoint {args.victim} does not exist: train it ({train})")
    times: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run("random", args.victim, False, Path(tmp, "warm"))  # imports, the pool's first build
        for repeat in range(args.repeats):
            for name in args.only:
                for before in (repeat % 2 == 0, repeat % 2 == 1):
                    folder = Path(tmp, f"{name}-{before}-{repeat}")
                    times.setdefault((name, before), []).append(
                        run(name, args.victim, before, folder)
                    )
    print(f"seconds per stage (median of {args.repeats}), 22 epochs, embedded digits victim:")
    total = {True: 0.0, False: 0.0}
    for name in args.only:
        was, now = (statistics.median(times[name, before]) for before in (True, False))
        total[True], total[False] = total[True] + was, total[False] + now
        print(f"  {name:12s} before {was:6.1f}   now {now:6.1f}   x{now / was:.2f}")
    print(
        f"  all          before {total[True]:6.1f}   now {total[False]:6.1f}   "
        f"x{total[False] / total[True]:.2f}"
    )


if __name__ == "__main__":
    main()
