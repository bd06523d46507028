"""matplotlib without a display: the Agg backend, one look for every figure, atomic saving."""

from __future__ import annotations

import io

import matplotlib

# Before pyplot is imported anywhere: training machines and CI have no display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from mrcnn.analysis.sources import write_file  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def figure(rows: int = 1, cols: int = 1, cell: tuple[float, float] = (4.2, 3.4), **kw):
    """(fig, axes 2-d array) with `cell` inches per subplot."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False, **kw
        )
    return fig, axes


def save(fig, path: str) -> str:
    """Writes `fig` as a PNG at `path` (atomically) and closes it; returns `path`."""
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    write_file(path, buf.getvalue())
    return path


def font_path() -> str | None:
    """matplotlib's own DejaVu Sans (always installed with it): box labels in the drawings
    at a readable size instead of PIL's 11-pixel bitmap font."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # a broken font cache: the bitmap font still works
        return None
