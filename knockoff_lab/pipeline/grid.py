"""Grids of a reproduce preset: one experiment crossed with variants along named axes (attack x
defence, strategy x budget), expanded into ordinary stages and reported as one table, one
figure and one paired comparison per cell against a reference variant.

A cell's stage is named `<grid>-<variant>-<variant>...`, its config is the grid's YAML with each
variant's overlays merged over it in axis order, and its `set` / `inputs` are the grid's with
the variants' on top. Its results go to results.csv as table `<grid>`, setting
`<variant>/<variant>...`. The comparison is decided by the spread over seeds, as the paper's
findings are (`pipeline.findings`): a cell "beats" its reference only when the whole paired 95%
interval of the difference lies above zero.
"""

import itertools
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.evaluation.figures import Points, plot_points
from knockoff_lab.pipeline.findings import Results, decide, paired_interval
from knockoff_lab.pipeline.stages import Row, Stage, Value

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")  # no '-': it joins a stage's variant names


@dataclass
class Variant:
    config: list[str] = field(default_factory=list)  # overlays, merged over the grid's YAML
    set: dict[str, Value] = field(default_factory=dict)  # dotted key -> value
    inputs: dict[str, str] = field(default_factory=dict)  # dotted key -> upstream stage


@dataclass
class Plot:
    """`x`: a metric (one point per cell) or an axis whose variant names are numbers (one line
    per series, in their order); `y`: a metric; `series`: the axis drawn as one colour each."""

    x: str
    y: str
    series: str


@dataclass
class Reference:
    """Each cell compared with the cell that has `variant` on `axis` (the rest equal), on
    `metrics`, paired across seeds; a variant named in `also` is compared with its own
    reference too (a strategy with the random policy in the same rounds: the same schedule,
    only the choice of queries differs)."""

    axis: str
    variant: str
    metrics: list[str]
    also: dict[str, str] = field(default_factory=dict)  # variant -> a second reference


@dataclass
class Multiplier:
    """Each cell's error (1 - `metric`) over the error of its cell with `variant` on `axis`,
    seed by seed: the clone-error multiplier of a defence (Orekondy et al.'s amplification)."""

    axis: str
    variant: str
    metric: str


@dataclass
class Grid:
    name: str  # the table in results.csv and the prefix of the stages' names
    title: str
    victim: str  # the results.csv victim column
    config: str | list[str]  # the experiment YAML every cell starts from (then overlays)
    axes: dict[str, dict[str, Variant]]  # axis -> variant name -> what it changes
    metrics: dict[str, str]  # results.csv metric -> logged metric
    set: dict[str, Value] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    seeds: int | None = None  # None: the preset's
    plot: Plot | None = None
    reference: Reference | list[Reference] | None = None  # several: each compared in turn
    multiplier: Multiplier | None = None

    @property
    def references(self) -> list[Reference]:
        if self.reference is None:
            return []
        return [self.reference] if isinstance(self.reference, Reference) else self.reference

    def __post_init__(self) -> None:
        """Checked when the preset is read, before any stage runs."""
        where = f"grid {self.name}"
        for name in [self.name, *self.axes, *(v for a in self.axes.values() for v in a)]:
            if not NAME.fullmatch(name):
                raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_' or '.'")
        if not self.axes or not all(self.axes.values()):
            raise ConfigError(f"{where}: axes must name at least one variant each")
        if (plot := self.plot) is not None:
            for axis in (plot.series, *([plot.x] if plot.x not in self.metrics else [])):
                if axis not in self.axes:
                    raise ConfigError(
                        f"{where}: plot names {axis!r}, neither an axis "
                        f"({', '.join(self.axes)}) nor a metric"
                    )
            if plot.y not in self.metrics:
                raise ConfigError(f"{where}: plot.y {plot.y!r} is not one of its metrics")
        for ref in self.references:
            variants = self.axes.get(ref.axis, {})
            for name in [ref.variant, *ref.also, *ref.also.values()]:
                if name not in variants:
                    raise ConfigError(
                        f"{where}: reference {ref.axis}={name} is no variant of its axes"
                    )
            if unknown := [m for m in ref.metrics if m not in self.metrics]:
                raise ConfigError(f"{where}: reference metrics {unknown} are not its metrics")
        if (m := self.multiplier) is not None:
            if m.variant not in self.axes.get(m.axis, {}):
                raise ConfigError(f"{where}: multiplier {m.axis}={m.variant} is no variant")
            if m.metric not in self.metrics:
                raise ConfigError(f"{where}: multiplier metric {m.metric!r} is not its metric")

    def cells(self) -> list[tuple[str, ...]]:
        """Every combination of variant names, in axis order."""
        return list(itertools.product(*(list(variants) for variants in self.axes.values())))

    def stages(self) -> list[Stage]:
        stages, base = [], [self.config] if isinstance(self.config, str) else self.config
        for cell in self.cells():
            variants = [self.axes[axis][name] for axis, name in zip(self.axes, cell, strict=True)]
            stages.append(
                Stage(
                    name="-".join([self.name, *cell]),
                    config=[*base, *(path for v in variants for path in v.config)],
                    set={**self.set, **{k: x for v in variants for k, x in v.set.items()}},
                    inputs={**self.inputs, **{k: x for v in variants for k, x in v.inputs.items()}},
                    rows=[Row(self.name, self.victim, "/".join(cell), self.metrics)],
                    seeds=self.seeds,
                )
            )
        return stages

    def get(self, results: Results, cell: tuple[str, ...], metric: str) -> list[float] | None:
        return results.get((self.name, self.victim, "/".join(cell), metric))

    def comparisons(self, results: Results) -> list[str]:
        """One line per cell and reference metric: its paired difference from the reference cell
        and what the seed spread allows one to say."""
        lines = []
        for ref in self.references:
            axis = list(self.axes).index(ref.axis)
            for cell in self.cells():
                also = [ref.also[cell[axis]]] if cell[axis] in ref.also else []
                for reference in [ref.variant, *also]:
                    if cell[axis] != reference:
                        other = (*cell[:axis], reference, *cell[axis + 1 :])
                        lines += self.compare(results, cell, other, ref.metrics)
        return lines

    def compare(
        self, results: Results, cell: tuple[str, ...], other: tuple[str, ...], metrics: list[str]
    ) -> list[str]:
        lines = []
        for metric in metrics:
            a, b = self.get(results, cell, metric), self.get(results, other, metric)
            if not a or not b:
                continue
            centre, half, n = paired_interval(a, b)
            verdict = {"reproduced": "higher", "NOT reproduced": "lower"}.get(
                decide(centre, half, n), "inconclusive"
            )
            spread = "1 seed: no spread to judge by" if n < 2 else f"+- {half:.3f}, {n} seeds"
            lines.append(
                f"- {'/'.join(cell)} vs {'/'.join(other)}: {metric} "
                f"{centre:+.3f} ({spread}): **{verdict}**"
            )
        return lines

    def multipliers(self, results: Results) -> list[str]:
        """A table row per measured cell: its multiplier's median [min, max] over seeds."""
        if (m := self.multiplier) is None:
            return []
        axis = list(self.axes).index(m.axis)
        rows = []
        for cell in self.cells():
            other = (*cell[:axis], m.variant, *cell[axis + 1 :])
            mine, base = self.get(results, cell, m.metric), self.get(results, other, m.metric)
            pairs = zip(mine or [], base or [], strict=False)  # seed by seed
            ratios = [(1 - a) / (1 - b) for a, b in pairs if b < 1]
            if cell[axis] != m.variant and ratios:
                low, mid, high = min(ratios), statistics.median(ratios), max(ratios)
                rows.append(f"| {' | '.join(cell)} | x{mid:.2f} [{low:.2f}, {high:.2f}] |")
        header = [
            "| " + " | ".join([*self.axes, "error x"]) + " |",
            "|" + "---|" * (len(self.axes) + 1),
        ]
        return header + rows if rows else []

    def figure(self, results: Results, path: Path) -> Path | None:
        """The grid's `plot` of this run's results (None without a plot or results)."""
        if (plot := self.plot) is None:
            return None
        names = list(self.axes)
        points: Points = {}
        for cell in self.cells():
            ys = self.get(results, cell, plot.y)
            if plot.x in self.metrics:
                xs = self.get(results, cell, plot.x)
            else:
                xs = [float(cell[names.index(plot.x)])] * len(ys or [])
            if ys and xs:
                label = "/".join(
                    n for a, n in zip(names, cell, strict=True) if a not in (plot.series, plot.x)
                )
                points.setdefault(cell[names.index(plot.series)], []).append((label, xs, ys))
        if not points:
            return None
        return plot_points(
            points, path, plot.x, plot.y, self.title, lines=plot.x not in self.metrics
        )
