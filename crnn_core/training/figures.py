"""Figures of a task's rollouts (matplotlib, imported on first use): the TensorBoard logger's
images and the PNGs of ``crnn sample``."""

from __future__ import annotations

from typing import Any

from ..base.env import install_command
from ..base.errors import ConfigError
from ..interfaces.task import Rollout


def import_pyplot_figure() -> Any:
    """matplotlib's ``Figure`` (Agg, no global backend change), or a one-line error naming the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            f"writing a PNG needs matplotlib, an optional extra: {install_command('plot')}, or write .json / .csv"
        ) from None
    return Figure


def rollout_figure(result: Rollout, title: str) -> Any:
    """The samples as thin lines and the true curve as a thick dashed one, one panel per feature (Figure 6)."""
    Figure = import_pyplot_figure()
    features = len(result.names)
    fig = Figure(figsize=(6.4, 3.6 * features), dpi=120, layout="constrained")
    axes = fig.subplots(features, 1, squeeze=False)[:, 0]
    t = list(range(result.samples.shape[1]))
    for d, (ax, name) in enumerate(zip(axes, result.names)):
        for i in range(result.samples.shape[0]):
            ax.plot(t, result.samples[i, :, d].tolist(), color="tab:blue", alpha=0.55, linewidth=1.0,
                    label="samples" if i == 0 else None)
        if result.reference is not None:
            ax.plot(t, result.reference[:, d].tolist(), color="black", linestyle="--", linewidth=2.0, label="true")
        ax.set_xlabel("t")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[0].set_title(title, fontsize="medium")
    return fig
