"""Figures of the paper, drawn from measured tensors (matplotlib, headless)."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from knockoff_lab.evaluation.ood_metrics import roc, tpr_at_tnr  # noqa: E402

Curves = dict[str, tuple[torch.Tensor, torch.Tensor]]  # label -> (in scores, out scores)


def plot_roc(panels: dict[str, Curves], path: Path, title: str = "") -> Path:
    """ROC curves of detectors and OOD baselines (out-of-distribution = positive): one panel per
    in/out comparison, one curve per scorer. Each curve's dot is the operating point at TNR 95%
    (Table 4's fixed-TNR column), found exactly as the logged `tpr_at_tnr95` metric is, so the
    figure and the tables agree; the dotted line is FPR 5%."""
    columns = min(3, len(panels))  # a paper-scale table has a panel per victim: wrap
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 5.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, (name, curves) in zip(axes.flat, panels.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="lightgray", linestyle="--", linewidth=0.8)
        ax.axvline(0.05, color="gray", linestyle=":", linewidth=0.8)
        for label, (scores_in, scores_out) in curves.items():
            fpr, tpr, auroc = roc(scores_in, scores_out)
            at95, tnr, _ = tpr_at_tnr(scores_in, scores_out, 0.95)
            text = f"{label}: AUROC {auroc:.3f}, TPR {at95:.1%} at TNR 95%"
            (line,) = ax.plot(fpr, tpr, label=text)
            ax.scatter([1 - tnr], [at95], color=line.get_color(), zorder=3, s=18)
        ax.set(
            xlabel="FPR (in-distribution queries flagged)",
            xlim=(0, 1),
            ylim=(0, 1.02),
            ylabel="TPR (out-of-distribution queries flagged)",
            title=name,
        )
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # off the curves
    fig.suptitle(textwrap.fill(title, 55 * columns), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        "largest gap",
        (gap, float(acc_surrogate[gap])),
        xytext=(0, 12),
        ha="center",
        textcoords="offset points",
        arrowprops={"arrowstyle": "->"},
    )
    right.set(xlabel="class", ylabel="test accuracy", ylim=(0, 1.05), title="per-class accuracy")
    right.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_over_epochs(metrics_csv: Path, path: Path, title: str = "") -> Path:
    """Figure 2: the surrogate's accuracy on the victim's test set per epoch (analysis only), with
    the epoch of highest accuracy and the epoch selected on the transfer set's validation split."""
    import csv

    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("analysis/test_acc")]
    epochs = [int(r["epoch"]) + 1 for r in rows]
    accs = [float(r["analysis/test_acc"]) for r in rows]
    vals = [float(r["val/acc"]) if r.get("val/acc") else float("nan") for r in rows]
    best = max(range(len(accs)), key=accs.__getitem__)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, accs, marker=".", label="Acc(F_A) on the victim's test set")
    ax.plot(epochs, vals, linestyle="--", label="val/acc (transfer set, used for selection)")
    ax.scatter(
        [epochs[best]],
        [accs[best]],
        color="red",
        zorder=3,
        label=f"highest Acc(F_A): epoch {epochs[best]}",
    )
    if any(v == v for v in vals):
        chosen = max((i for i in range(len(vals)) if vals[i] == vals[i]), key=vals.__getitem__)
        ax.axvline(
            epochs[chosen],
            color="gray",
            linestyle=":",
            label=f"selected on val/acc: epoch {epochs[chosen]}",
        )
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


Points = dict[str, list[tuple[str, list[float], list[float]]]]  # series -> (label, xs, ys)


def plot_points(
    points: Points, path: Path, xlabel: str, ylabel: str, title: str = "", lines: bool = False
) -> Path:
    """One colour per series; each point at the mean over seeds of its x and y values, with bars
    from their min to max (the seed spread). `lines` joins a series' points in order (an axis of
    numbers, such as a query budget); otherwise each point is labelled (a defence, say)."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for series, entries in points.items():
        xs = [sum(x) / len(x) for _, x, _ in entries]
        ys = [sum(y) / len(y) for _, _, y in entries]
        xerr = [
            [m - min(x) for m, (_, x, _) in zip(xs, entries, strict=True)],
            [max(x) - m for m, (_, x, _) in zip(xs, entries, strict=True)],
        ]
        yerr = [
            [m - min(y) for m, (_, _, y) in zip(ys, entries, strict=True)],
            [max(y) - m for m, (_, _, y) in zip(ys, entries, strict=True)],
        ]
        ax.errorbar(
            xs,
            ys,
            yerr=yerr,
            xerr=xerr,
            marker="o",
            markersize=4,
            capsize=2,
            linestyle="-" if lines else "none",
            label=series,
        )
        if not lines:
            for (label, _, _), x, y in zip(entries, xs, ys, strict=True):
                ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=textwrap.fill(title, 70))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
