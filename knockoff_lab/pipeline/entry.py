"""`main.py`'s dispatcher: `reproduce`, `serve` and `verify` have their own parsers, every other
command goes to LightningCLI; a user's mistake is one line on stderr and exit status 2."""

import logging
import re
import sys

from jsonargparse import ArgumentError

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.loggers import LIGHTNING_LOGGERS
from knockoff_lab.pipeline.reproduce import reproduce_main


def user_error(err: BaseException) -> BaseException | None:
    """The user mistake behind `err`, if any: a `ConfigError` (jsonargparse wraps those raised
    in `__init__` in its own errors), else a parse error."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    if configs := [e for e in chain if isinstance(e, ConfigError)]:
        return configs[0]
    return next((e for e in chain if isinstance(e, ArgumentError)), None)


NOISE = (
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
)


def one_line(message: str) -> str:
    """jsonargparse's nested report as one line: the dotted key at fault, then what was expected
    and the value given; any other message with its whitespace collapsed."""
    keys, errors, given = [], [], ""
    for line in message.splitlines():
        line = line.strip().removeprefix("- ")
        if key := re.match(r'Parser key "([^"]+)":\s*(.*)', line):
            keys.append(key[1])
            errors += [key[2]] if key[2] else []
        elif line.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif line.startswith("Given value:"):
            given = line.removeprefix("Given value:").strip()
        elif line and not line.startswith(NOISE):
            errors.append(line)
    text = " ".join(" ".join(errors).split())
    if not keys or not text:
        return " ".join(message.split())
    if given and "Got value" not in text and not re.match(r"\w+\(", given):
        text += f". Got value: {given}"
    return f"{'.'.join(keys)}: {text}"


def info_to_stdout() -> None:
    """Lightning's progress messages ("Seed set", "GPU available") go to stdout, so stderr holds
    warnings and, after a user mistake, the one error line."""
    for name in LIGHTNING_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)


def main() -> None:
    info_to_stdout()
    try:
        if sys.argv[1:2] == ["reproduce"]:
            reproduce_main()
        elif sys.argv[1:2] == ["serve"]:
            from knockoff_lab.pipeline.serve import serve_main  # lazy: FastAPI only to serve

            serve_main(sys.argv[2:])
        elif sys.argv[1:2] == ["verify"]:
            from knockoff_lab.pipeline.verify import verify_main

            verify_main(sys.argv[2:])
        else:
            cli_main()
    except Exception as err:
        if (mistake := user_error(err)) is None:
            raise  # a bug: keep the traceback
        print(f"error: {one_line(str(mistake))}", file=sys.stderr)
        sys.exit(2)
