"""How much of configs/ is copied: for each YAML, the most non-comment lines it shares, in order,
with one sibling (a file of the same folder; difflib's matching blocks), summed over all files
and divided by all non-comment lines. A variant written as a copy of its sibling counts almost
whole; an overlay that says one idea counts only the lines of structure it shares.

    python benchmarks/config_copies.py            # the share, and per folder
"""

import difflib
import sys
from collections import Counter
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def setting_lines(path: Path) -> list[str]:
    return [
        line.rstrip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def copied_lines(files: dict[Path, list[str]], path: Path) -> int:
    """The most lines `path` shares, in order, with one file of its folder."""
    best = 0
    for other, lines in files.items():
        if other != path and other.parent == path.parent:
            matcher = difflib.SequenceMatcher(None, files[path], lines, autojunk=False)
            best = max(best, sum(block.size for block in matcher.get_matching_blocks()))
    return best


def main(root: Path = CONFIGS) -> float:
    files = {path: setting_lines(path) for path in sorted(root.rglob("*.yaml"))}
    copied, total = Counter(), Counter()
    for path, lines in files.items():
        folder = path.parent.relative_to(root).as_posix()
        copied[folder] += copied_lines(files, path)
        total[folder] += len(lines)
    for folder in sorted(total):
        print(f"  {folder:<14} {copied[folder]:>4} of {total[folder]:>4} lines copied")
    share = sum(copied.values()) / sum(total.values())
    print(f"configs/: {sum(copied.values())} of {sum(total.values())} lines copied ({share:.0%})")
    return share


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIGS)
