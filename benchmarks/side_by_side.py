"""A preset's stages one at a time on all cores against side by side on one thread each, same run.

The work: the budgets study's random-sampling cells (`configs/reproduce/budgets.yaml`, grid
`budgets`, strategy `random`, `--budgets` queries, 3 seeds each) and the victim they attack,
into a fresh output folder each time, so nothing is cached. "one at a time" is `reproduce` as it
ran before the embedded presets fixed their thread count (`--jobs 1`, torch's own threads);
"side by side" is how they run now (`--threads 1`: as many jobs as the cores). The two are
timed alternately, each going first in turn; every side-by-side run is checked to write the
same results.csv. Reported: median seconds and their ratio.

    python benchmarks/side_by_side.py [--budgets 500 1000 2000] [--repeats 2]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from knockoff_lab.pipeline.reproduce import reproduce_main

PRESETS = Path(__file__).resolve().parents[1] / "configs/reproduce"


def preset(folder: Path, budgets: list[str]) -> Path:
    """budgets.yaml cut to its random cells at `budgets`, its base preset found from `folder`."""
    config = yaml.safe_load((PRESETS / "budgets.yaml").read_text())
    config["config"] = str(PRESETS / config["config"])
    grid = next(grid for grid in config["grids"] if grid["name"] == "budgets")
    grid["axes"]["strategy"] = {"random": {}}
    grid["axes"]["budget"] = {b: grid["axes"]["budget"][b] for b in budgets}
    grid.pop("reference")
    config["grids"] = [grid]
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["500", "1000", "2000"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ways = {
        "one at a time": ["--jobs", "1", "--threads", "null"],
        "side by side": ["--threads", "1"],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    results: set[bytes] = set()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        config = preset(folder, args.budgets)
        for repeat in range(args.repeats):
            order = list(ways) if repeat % 2 == 0 else list(reversed(ways))
            for name in order:  # each goes first in turn
                out = folder / f"{repeat}-{name.replace(' ', '_')}"
                start = time.perf_counter()
                reproduce_main(["--config", str(config), "--output_dir", str(out), *ways[name]])
                times[name].append(time.perf_counter() - start)
                if name == "side by side":
                    results.add((out / "results.csv").read_bytes())
    assert len(results) == 1, "side by side wrote different results from one repeat to the next"
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name:>13}: median {medians[name]:.1f} s  ({', '.join(f'{v:.1f}' for v in values)})"
        )
    print(
        f"side by side / one at a time: x{medians['side by side'] / medians['one at a time']:.2f}"
    )


if __name__ == "__main__":
    main()
