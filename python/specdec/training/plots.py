"""The PNG of a run's curves (matplotlib, Agg backend), drawn from its CSV logs.

Panels: training loss (and its parts), draft top-1 accuracy, learning rate, and the validation
acceptance rates of draft steps 1..5 per epoch. Without matplotlib the plot is skipped with a warning.
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Optional

from ..files import atomic_path


def _read(path: str) -> list:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _floats(rows: list, key: str) -> list:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(key, "nan")))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out


def plot_curves(train_csv: str, val_csv: Optional[str], out_png: str) -> Optional[str]:
    """Draw the curves of `train_csv` (and `val_csv`) into `out_png`; returns its path, or None (with a
    warning) when matplotlib is not installed or there is nothing to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: skipping the plot of the training curves (pip install matplotlib)",
            stacklevel=2,
        )
        return None
    rows = _read(train_csv)
    if not rows:
        return None
    val = _read(val_csv) if val_csv else []
    x = _floats(rows, "global_step")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    loss_keys = [k for k in ("loss", "smooth_l1", "soft_ce", "top10_ce") if k in rows[0]]
    for k in loss_keys:
        ax.plot(x, _floats(rows, k), label=k, linewidth=1.0 if k == "loss" else 0.7)
    if val:
        ax.plot(_floats(val, "global_step"), _floats(val, "val_loss"), "o-", label="val_loss")
    ax.set_title("loss")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    if "acc" in rows[0]:
        ax.plot(x, _floats(rows, "acc"), linewidth=0.8, label="train top-1")
    if val and "acc_1" in val[0]:
        ax.plot(_floats(val, "global_step"), _floats(val, "acc_1"), "o-", label="val step 1")
    ax.set_title("draft top-1 accuracy")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    ax.plot(x, _floats(rows, "lr"))
    ax.set_title("learning rate")
    ax.set_xlabel("step")
    ax = axes[1][1]
    if val:
        steps = sorted(int(k.split("_")[1]) for k in val[0] if k.startswith("acc_") and k.split("_")[1].isdigit())
        vx = _floats(val, "global_step")
        for k in steps:
            ax.plot(vx, _floats(val, f"acc_{k}"), "o-", label=f"step {k}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    ax.set_title("validation acceptance rate per draft step")
    ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:  # savefig picks the format from the extension
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out_png
