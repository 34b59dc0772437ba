"""Before the first stage of a preset runs, everything every stage will need: the stages it
reads run before it, each on-disk dataset is where its config says, and each network's weights
are a file or in torchvision's cache (downloaded now where they can be). A paper-scale preset
trains for days; a missing folder must not surface in its 47th stage."""

from pathlib import Path

from datamodules.on_disk import OnDiskDataModule
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.networks import fetch_weights
from knockoff_lab.pipeline.rewrites import WEIGHTS_NAME, classes
from knockoff_lab.pipeline.stages import Stage, StageRunner, set_dotted
from knockoff_lab.pipeline.trust import check_trusted


def check_weights(arch: str, weights: str, fetched: set[tuple[str, str]]) -> None:
    """A local weights file exists; a torchvision weights name is in the cache or fetched."""
    path = Path(weights).expanduser()
    if path.exists():
        return
    if not WEIGHTS_NAME.fullmatch(weights):
        raise ConfigError(f"weights file {path} does not exist")
    if (arch, weights) not in fetched:
        fetch_weights(arch, weights)
        fetched.add((arch, weights))


def preflight(stages: list[Stage], runner: StageRunner) -> dict[str, dict]:
    """A one-line ConfigError naming the stage and what it lacks, before any stage runs. A
    stage's inputs (checkpoints of earlier stages) are checked when those stages have run.
    Returns each stage's config by name (its inputs None), for the scheduler to plan with."""
    configs: dict[str, dict] = {}
    fetched: set[tuple[str, str]] = set()
    earlier: set[str] = set(runner.done)
    for stage in stages:
        if missing := [name for name in stage.inputs.values() if name not in earlier]:
            raise ConfigError(
                f"stage {stage.name!r} reads {missing}, which run later or not at all"
            )
        earlier.add(stage.name)
        config = runner.stage_config(stage)
        try:
            check_trusted(config)  # a preset's `set` is a config too
        except ConfigError as err:
            raise ConfigError(f"stage {stage.name}: {err}") from None
        for key in stage.inputs:
            set_dotted(config, key, None)
        try:
            for cls, args, given in classes(config):
                if issubclass(cls, OnDiskDataModule):
                    cls(**args).check_present()
                arch, weights = args.get("arch", given.get("arch")), args.get("weights")
                if isinstance(arch, str) and isinstance(weights, str):
                    check_weights(arch, weights, fetched)
        except ConfigError as err:
            raise ConfigError(f"stage {stage.name}: {err}") from None
        configs[stage.name] = config
    return configs
