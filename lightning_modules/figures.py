"""Figures of the paper, drawn from measured tensors (matplotlib, headless)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_transfer_histogram(
    histogram: torch.Tensor,
    acc_victim: torch.Tensor,
    acc_surrogate: torch.Tensor,
    path: Path,
    title: str = "",
) -> Path:
    """Figure 1: queries per predicted class in the transfer set (left) beside the per-class
    test accuracy of victim and surrogate (right); the largest accuracy gap is marked."""
    classes = torch.arange(len(histogram))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.bar(classes, histogram, color="tab:gray")
    left.set(xlabel="class predicted by F_V", ylabel="queries", title="transfer set histogram")
    width = 0.4
    right.bar(classes - width / 2, acc_victim, width, label="F_V (victim)")
    right.bar(classes + width / 2, acc_surrogate, width, label="F_A (surrogate)")
    gap = int((acc_victim - acc_surrogate).argmax())
    right.annotate(
        "largest gap", (gap, float(acc_surrogate[gap])), xytext=(0, 12), ha="center",
        textcoords="offset points", arrowprops={"arrowstyle": "->"},
    )  # fmt: skip
    right.set(xlabel="class", ylabel="test accuracy", ylim=(0, 1.05), title="per-class accuracy")
    right.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
