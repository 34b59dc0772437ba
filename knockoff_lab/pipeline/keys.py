"""Every dotted key a reproduce preset's `set` or `inputs` (or its top-level `set`) names must be
a setting of the stage's YAML, or a parameter of the class (or Trainer) it sits under: a typo
such as `trainer.max_epoch` is refused when the preset is read, not hours later in the stage
that reads it."""

import difflib
import inspect
from typing import Any

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.stages import Stage, read_yaml, resolved, set_dotted
from knockoff_lab.pipeline.trust import class_of

# Top-level keys of an experiment YAML beside trainer/model/data (LightningCLI's own options).
CLI_KEYS = ("seed_everything", "trainer", "model", "data", "ckpt_path", "test_after_fit")
NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def init_parameters(cls: type) -> set[str] | None:
    """The keyword arguments `cls(...)` accepts, following `**kwargs` up the MRO as jsonargparse
    does; None if they are open-ended (a `**kwargs` that reaches no signature that ends it)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if (init := klass.__dict__.get("__init__")) is None or klass is object:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in NAMED}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def extensions(config: dict, path: list[str]) -> tuple[set[str] | None, str]:
    """(the keys a mapping at dotted `path` of an experiment YAML may gain, whose they are):
    LightningCLI's own at the top, the Trainer's under `trainer`, a class's under its
    `init_args`; None where any key goes (a `**kwargs` that ends nowhere)."""
    if not path:
        return set(CLI_KEYS), ""
    if path == ["trainer"]:
        from lightning.pytorch import Trainer

        return init_parameters(Trainer), "lightning.pytorch.Trainer"
    if path[-1] != "init_args":
        return set(), ""
    owner = config
    for part in path[:-1]:
        owner = owner[int(part)] if isinstance(owner, list) else owner[part]
    cls = class_of(owner.get("class_path"))
    return (set(), "") if cls is None else (init_parameters(cls), owner["class_path"])


def missing_setting(config: dict, key: str) -> str | None:
    """None if dotted `key` is a setting of `config` (an experiment YAML, parsed): a key it has,
    or one more parameter of the Trainer or of a class it names; else what is wrong and what
    was expected."""
    node, parts, depth = config, key.split("."), 0
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            break
        depth += 1
    else:
        return None
    path, rest = parts[:depth], parts[depth:]
    if not isinstance(node, dict):
        what = f"a list of {len(node)}" if isinstance(node, list) else f"{node!r}"
        return f"{'.'.join(path)} is {what}, not a mapping with {rest[0]!r}"
    if rest[0] == "init_args" and len(rest) == 2 and "class_path" in node:
        path, rest, node = [*path, "init_args"], rest[1:], {}  # a class given no init_args yet
    elif not path and rest[0] == "trainer" and len(rest) == 2:
        path, rest, node = ["trainer"], rest[1:], {}  # a YAML with no trainer settings yet
    params, owner = extensions(config, path)
    here = ".".join(path)
    if params is None or rest[0] in params:
        if len(rest) == 1:
            return None
        whole = f"{here}.{rest[0]}" if here else rest[0]
        return (
            f"{whole} is not in the YAML, so {'.'.join(rest[1:])!r} has nothing to go "
            f"under; set {whole!r} as a whole"
        )
    known = sorted({*node, *(params or ())} - {"class_path"})
    prefix = here + "." if here else ""
    if close := difflib.get_close_matches(rest[0], known, n=1):
        hint = f"did you mean {prefix + close[0]!r}?"
    elif 0 < len(known) <= 12:
        hint = f"expected one of {', '.join(prefix + k for k in known)}"
    else:
        hint = "expected a key the YAML has, or a parameter of the class it sits under"
    where = f"{here or 'the top level'}{f' (arguments of {owner})' if owner else ''}"
    return f"{where} has no {rest[0]!r}; {hint}"


def check_keys(stages: list[Stage], settings: dict[str, Any], source: str) -> None:
    """A one-line ConfigError for the first key of the top-level `settings` or of a stage's
    `set` or `inputs` that is no setting of the stage's YAML (`missing_setting`): a typo would
    otherwise add a key that fails, or is ignored, when the stage finally runs. Settings are
    checked in the order they apply (`stages.resolved`), each against the YAML with the ones
    before it applied: after `pool: configs/data/diabetic5.yaml`, `pool.init_args.as_pool`
    is a setting of the Diabetic5 pool."""
    for stage in stages:
        config = read_yaml(stage)
        where = {**dict.fromkeys(settings, "top-level set"), **dict.fromkeys(stage.set, "set")}
        named = [(key, where[key], value) for key, value in resolved({**settings, **stage.set})]
        named += [(key, "inputs", None) for key in stage.inputs]
        for key, place, value in named:
            if (problem := missing_setting(config, key)) is not None:
                raise ConfigError(
                    f"{source}: stage {stage.name}: {place} key {key!r} is not a "
                    f"setting of {stage.shown}: {problem}"
                )
            if place != "inputs":
                set_dotted(config, key, value)
