"""How much of configs/ is copied: for each YAML, the most lines it shares, in order, with one
sibling (a file of the same folder; difflib's matching blocks), summed over all files and divided
by all lines. A variant written as a copy of its sibling counts almost whole; an overlay that
says one idea counts only what it shares.

Two counts: every non-comment line, and the setting lines only (those that carry a value, not a
bare `key:` that opens a block). An overlay must spell the path to what it changes (`data:`,
`init_args:`, `api:` ...), so its siblings share those openers although no setting is repeated;
the second count is the one that says whether an idea is written twice.

    python benchmarks/config_copies.py            # both shares, and per folder
"""

import difflib
import re
import sys
from collections import Counter
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OPENER = re.compile(r"\s*-?\s*[\w.\"'-]+:\s*")  # `key:` alone: the start of a block


def setting_lines(path: Path, openers: bool = True) -> list[str]:
    return [
        line.rstrip()
        for line in path.read_text().splitlines()
        if line.strip()
        and not line.strip().startswith("#")
        and (openers or not OPENER.fullmatch(line))
    ]


def copied_lines(files: dict[Path, list[str]], path: Path) -> int:
    """The most lines `path` shares, in order, with one file of its folder."""
    best = 0
    for other, lines in files.items():
        if other != path and other.parent == path.parent:
            matcher = difflib.SequenceMatcher(None, files[path], lines, autojunk=False)
            best = max(best, sum(block.size for block in matcher.get_matching_blocks()))
    return best


def share(root: Path, openers: bool, label: str) -> float:
    files = {path: setting_lines(path, openers) for path in sorted(root.rglob("*.yaml"))}
    copied, total = Counter(), Counter()
    for path, lines in files.items():
        folder = path.parent.relative_to(root).as_posix()
        copied[folder] += copied_lines(files, path)
        total[folder] += len(lines)
    print(f"{label}:")
    for folder in sorted(total):
        print(f"  {folder:<14} {copied[folder]:>4} of {total[folder]:>4} copied")
    fraction = sum(copied.values()) / sum(total.values())
    print(f"  configs/: {sum(copied.values())} of {sum(total.values())} copied ({fraction:.0%})")
    return fraction


def main(root: Path = CONFIGS) -> tuple[float, float]:
    return share(root, True, "all lines"), share(root, False, "setting lines")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIGS)
