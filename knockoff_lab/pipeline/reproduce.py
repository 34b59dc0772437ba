"""`python main.py reproduce --config configs/reproduce/<preset>.yaml`: every experiment of the
paper, in order, cached stage by stage, then the report (results.csv, tables.md, figures),
optionally logged to W&B (`--wandb true`)."""

import csv
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from knockoff_lab.core.atomic import atomic_write_text
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.evaluation.figures import plot_accuracy_over_epochs
from knockoff_lab.evaluation.ood_metrics import TEST_SETS
from knockoff_lab.pipeline.findings import Results
from knockoff_lab.pipeline.grid import Grid
from knockoff_lab.pipeline.keys import check_keys
from knockoff_lab.pipeline.preflight import preflight
from knockoff_lab.pipeline.report import (
    Scored,
    log_to_wandb,
    plot_table_rocs,
    write_results,
    write_tables,
)
from knockoff_lab.pipeline.schedule import (
    Run,
    check_single_process,
    epochs,
    run_stages,
    side_by_side,
)
from knockoff_lab.pipeline.stages import Stage, StageRunner, Value, leaves, read_yaml


def curve_metrics(folder: Path) -> dict[str, float]:
    """From a surrogate's metrics.csv: the epoch of best victim-test accuracy (analysis only),
    the epoch selected by the transfer set's val/acc, and the epochs run."""
    path = folder / "metrics.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("analysis/test_acc")]
    if not rows:
        return {}
    epochs = [int(r["epoch"]) for r in rows]
    test = [float(r["analysis/test_acc"]) for r in rows]
    val = [float(r.get("val/acc") or "nan") for r in rows]
    best = max(range(len(rows)), key=test.__getitem__)
    selected = max(range(len(rows)), key=lambda i: (val[i] == val[i], val[i]))
    return {
        "curve/best_test_epoch": epochs[best],
        "curve/best_test_acc": test[best],
        "curve/selected_epoch": epochs[selected],
        "curve/epochs_run": epochs[-1] + 1,
    }


def is_attack(stage: Stage) -> bool:
    """An attack stage trains a surrogate on a transfer set: the stages repeated per seed."""
    data = read_yaml(stage).get("data") or {}
    return stage.command == "fit" and "TransferSet" in str(data.get("class_path", ""))


def seeded(stage: Stage, seed: int) -> Stage:
    """Seed `seed` of an attack stage: its own query order, validation split and initialisation.
    Seed 0 is the stage as written, so a one-seed run is the stage's own result."""
    if seed == 0:
        return stage
    settings = {"seed_everything": seed, "data.init_args.seed": seed}
    return dataclasses.replace(stage, name=f"{stage.name}.s{seed}", set={**stage.set, **settings})


def reproduce(
    stages: list[Stage],
    grids: Sequence[Grid] = (),
    output_dir: str = "runs/reproduce",
    set: dict[str, Value] | None = None,
    seeds: int = 1,
    data_root: str | None = None,
    smoke: bool = False,
    preset: Literal["embedded", "paper"] = "embedded",
    force: bool = False,
    verbose: bool = False,
    wandb: bool = False,
    wandb_project: str = "knockoff-lab",
    jobs: int | None = None,
    threads: int | None = None,
    source: str = "reproduce",
) -> Path:
    """Run `stages` in order, then the stages of `grids` (`pipeline.grid`), into `output_dir`
    and write the report there.

    `set` applies dotted-key settings to every stage (e.g. `trainer.accelerator: gpu`);
    `seeds` repeats every attack stage with that many seeds, unless the stage sets its own
    (tables show the mean and range, the findings are decided by the spread:
    `pipeline.findings`);
    `data_root` points every on-disk dataset of every stage at that data root (each dataset
    in its own folder under it, README); `smoke` runs every stage for a step or two, small and
    on CPU with no downloads (`pipeline.rewrites.smoke`), into `output_dir/smoke`: a paper-scale
    preset checked end to end in minutes, its report written, before anyone books a GPU.
    Before any stage runs, every stage's data and weights are checked (`pipeline.preflight`).
    `force` redoes every stage instead of reusing finished ones; `verbose` shows Lightning's
    output of each stage on the console (it always goes to the stage's `stdout.log`); `wandb`
    logs the report to one W&B run in `wandb_project` (offline under `output_dir/wandb` unless
    logged in to W&B: `wandb sync` uploads it later). `jobs` runs that many stages at once, each
    in its own process, and `threads` gives each stage that many torch threads (part of its key);
    given `threads` alone, jobs fill the cores (`pipeline.schedule`). `source` names the preset in
    errors (its file, from the command line).
    """
    set = leaves(set or {})
    cells = [stage for grid in grids for stage in grid.stages()]
    stages = every_stage(stages, grids)
    names = [stage.name for stage in stages]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"{source}: stage names {repeated} are given twice")
    for stage in stages:  # before any stage runs
        if missing := [path for path in stage.configs if not Path(path).is_file()]:
            raise ConfigError(f"stage {stage.name}: config {missing[0]} does not exist")
    check_keys(stages, set, source)  # a typo fails now, not hours into a run
    output = Path(output_dir) / "smoke" if smoke else Path(output_dir)
    jobs, threads = side_by_side(jobs, threads)
    runner = StageRunner(output, set, force, verbose, data_root, smoke, threads)
    configs = preflight(stages, runner)  # so does missing data
    if jobs > 1:
        check_single_process(configs)
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    runs = [
        (stage, seed)
        for stage in stages
        for seed in range((stage.seeds or seeds) if is_attack(stage) else 1)
    ]
    results: Results = {}
    scored: list[Scored] = []
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    start = time.time()
    width = len(str(len(runs)))
    shows = [seed == 0 and stage not in cells for stage, seed in runs]  # figures of these alone
    finished = run_stages(
        runner,
        [
            Run(
                seeded(stage, seed),
                f"[{number:>{width}}/{len(runs)}]",
                shown,
                epochs(configs[stage.name]),
            )
            for number, ((stage, seed), shown) in enumerate(zip(runs, shows, strict=True), 1)
        ],
        jobs,
    )
    for (stage, _), shown, result in zip(runs, shows, finished, strict=True):
        folder = Path(result["folder"])
        result["metrics"].update(curve_metrics(folder))
        for row in stage.rows:
            for name, logged in row.metrics.items():
                if logged in result["metrics"]:
                    key = (row.table, row.victim, row.setting, name)
                    results.setdefault(key, []).append(result["metrics"][logged])
            if (folder / "scores.csv").exists():  # a detector's or an OOD baseline's
                ood_sets = {logged.rsplit("/", 1)[-1] for logged in row.metrics.values()}
                scored += [
                    (row.table, row.victim, row.setting, ood_set, folder / "scores.csv")
                    for ood_set in TEST_SETS[1:]
                    if ood_set in ood_sets
                ]
        if not shown:
            continue
        for png in [*folder.glob("figure*.png"), *folder.glob("roc.png")]:
            shutil.copy(png, figures / f"{stage.name}_{png.name}")
        if "curve/epochs_run" in result["metrics"]:
            plot_accuracy_over_epochs(
                folder / "metrics.csv", figures / f"{stage.name}_figure2.png", title=stage.name
            )
    write_results(output / ".results.csv", results)
    (output / ".results.csv").replace(output / "results.csv")
    drawn = plot_table_rocs(scored, figures)
    for grid in grids:
        if png := grid.figure(results, figures / f"grid_{grid.name}.png"):
            drawn[grid.name] = png
    shown = {table: f"figures/{png.name}" for table, png in drawn.items()}
    write_tables(output / ".tables.md", results, preset == "paper", shown, grids)
    (output / ".tables.md").replace(output / "tables.md")
    atomic_write_text(output / "elapsed.txt", f"{time.time() - start:.1f} s\n")
    print(
        f"report: {output / 'tables.md'}, {output / 'results.csv'}, {figures}/ "
        f"({time.time() - start:.0f} s)",
        flush=True,
    )
    if wandb:
        print(f"W&B: {log_to_wandb(output, wandb_project)}", flush=True)
    return output


def every_stage(stages: Sequence[Stage], grids: Sequence[Grid] = ()) -> list[Stage]:
    """The stages a preset runs, in order: its stages, each family expanded, then its grids'."""
    return [
        *(one for stage in stages for one in stage.expand()),
        *(stage for grid in grids for stage in grid.stages()),
    ]


def preset_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="main.py reproduce", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(reproduce, skip={"source"})
    return parser


def read_preset(path: str | Path) -> dict[str, Any]:
    """A preset YAML as `reproduce`'s arguments (stages and grids built, families not yet
    expanded: `every_stage`)."""
    parser = preset_parser()
    config = parser.instantiate(parser.parse_args(["--config", str(path)]))
    config.pop("config", None)
    return dict(config)


def split_settings(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(the other arguments, the command line's settings): `--set.trainer.max_epochs 1` (or
    `--set.trainer.max_epochs=1`) sets that one leaf, its value read as YAML (`1` a number); `--set
    '{trainer.max_epochs: 1, data.init_args.budget: 500}'` sets several. Both add to the preset's
    `set` (`reproduce_main`) instead of replacing it, as jsonargparse's own reading of a `dict`
    argument would."""
    rest, settings, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        if not (arg == "--set" or arg.startswith(("--set.", "--set="))):
            rest.append(arg)
            i += 1
            continue
        name, given, value = arg.partition("=")
        if not given:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value")
            value, i = args[i + 1], i + 1
        i += 1
        parsed = yaml.safe_load(value)
        if name == "--set":
            if not isinstance(parsed, dict):
                raise ConfigError(f"--set takes a mapping of dotted keys, got {value!r}")
            settings.update(leaves(parsed))
        else:
            settings.update(leaves({name.removeprefix("--set."): parsed}))
    return rest, settings


def reproduce_main(args: list[str] | None = None) -> Path:
    """`main.py reproduce`: the preset's arguments, the command line's settings added to its
    `set` (`split_settings`)."""
    args, settings = split_settings(sys.argv[2:] if args is None else args)
    parser = preset_parser()
    config = dict(parser.instantiate(parser.parse_args(args)))
    config["set"] = {**leaves(config.get("set") or {}), **settings}
    files = [str(path) for path in config.pop("config", None) or [] if path is not None]
    return reproduce(**config, source=" + ".join(files) or "main.py reproduce")
