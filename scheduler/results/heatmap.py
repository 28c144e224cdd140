"""Per-link utilisation over time: the series (:class:`LinkSeries`, ``link_utilisation.csv``)
and its heat map (``link_utilisation.png``)."""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap

from scheduler.results.plotting import FigureText, finish_figure, new_figure

#: Heat map: above this many links, only links whose peak utilisation exceeds 1 % are shown,
#: and at most this many of them (the busiest).
HEATMAP_MAX_LINKS = 48
HEATMAP_MIN_PEAK = 0.01
#: Heat map and ``link_utilisation.csv``: at most this many time columns (polls averaged in groups;
#: a full 12k-request trace has ~7,000 polls of 0.5 s).
MAX_HEATMAP_COLUMNS = 600


@dataclass
class LinkSeries:
    """Per-link utilisation (0..1) over time for the heat map: ``utilisation`` is
    ``[len(times_s), len(link_names)]``; ``source`` says where the samples come from."""

    times_s: np.ndarray
    link_names: list[str]
    utilisation: np.ndarray
    source: str = ""

    def binned(self, max_columns: int = MAX_HEATMAP_COLUMNS) -> LinkSeries:
        """At most ``max_columns`` time columns: consecutive samples averaged in equal groups
        (times averaged too), so a full-trace run stays a readable figure and a small CSV."""
        n = len(self.times_s)
        if n <= max_columns:
            return self
        k = math.ceil(n / max_columns)
        groups = math.ceil(n / k)
        pad = groups * k - n
        times = np.concatenate((np.asarray(self.times_s, dtype=float), np.full(pad, np.nan)))
        util = np.concatenate((np.asarray(self.utilisation, dtype=float),
                               np.full((pad, len(self.link_names)), np.nan)))
        with np.errstate(invalid="ignore"):
            t = np.nanmean(times.reshape(groups, k), axis=1)
            u = np.nanmean(util.reshape(groups, k, -1), axis=1)
        note = f"{self.source}; " if self.source else ""
        return LinkSeries(t, self.link_names, u, f"{note}mean of {k} samples per column")

    def csv_bytes(self) -> bytes:
        """``link_utilisation.csv``: a ``time_s`` column, then one column per link (4 decimals)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["time_s", *self.link_names])
        for t, row in zip(self.times_s, np.asarray(self.utilisation, dtype=float)):
            writer.writerow([f"{t:.6f}", *(_short(v) for v in row)])
        return buf.getvalue().encode()


def _short(value: float) -> str:
    """A utilisation with 4 decimals and no trailing zeros (``0``, ``1``, ``0.9987``)."""
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def heatmap_links(utilisation: np.ndarray) -> np.ndarray:
    """Sorted column indices of ``utilisation`` [time, link] that ``plot_link_heatmap`` shows.

    All links when there are at most ``HEATMAP_MAX_LINKS``; otherwise the links whose peak
    utilisation exceeds ``HEATMAP_MIN_PEAK`` (1 %), at most ``HEATMAP_MAX_LINKS`` of them, busiest
    first. NaN samples are ignored.
    """
    util = np.asarray(utilisation, dtype=float)
    n_links = util.shape[1]
    if n_links <= HEATMAP_MAX_LINKS:
        return np.arange(n_links)
    if util.shape[0] == 0:
        return np.arange(0)
    peak = np.max(np.where(np.isnan(util), -np.inf, util), axis=0)  # -inf: never sampled
    busy = np.flatnonzero(peak > HEATMAP_MIN_PEAK)
    busy = busy[np.argsort(-peak[busy], kind="stable")][:HEATMAP_MAX_LINKS]
    return np.sort(busy)


def plot_link_heatmap(path: Path, times_s: Sequence[float] | np.ndarray, link_names: list[str], utilisation: np.ndarray,
                      caption: str = "", source: str = "") -> FigureText:
    """Write a heat map of link utilisation (0..1) over time to ``path`` (format from its suffix:
    png, pdf or svg), atomically (a temporary name renamed at the end); returns its title.

    ``utilisation`` has shape ``[len(times_s), len(link_names)]``; NaN cells (no sample) are drawn
    grey. With more than ``HEATMAP_MAX_LINKS`` links only those whose peak exceeds 1 % are shown
    (at most ``HEATMAP_MAX_LINKS``, the busiest), and the title says how many were hidden.
    ``caption`` names the experiment, ``source`` where the samples come from.
    Raises ``ValueError`` on inconsistent shapes or unsorted times.
    """
    util = np.asarray(utilisation, dtype=float)
    times = np.asarray(times_s, dtype=float)
    if util.ndim != 2 or util.shape != (times.size, len(link_names)):
        raise ValueError(f"utilisation shape {util.shape} does not match "
                         f"{times.size} times x {len(link_names)} links")
    if times.size > 1 and np.any(np.diff(times) <= 0):
        raise ValueError("times_s must be strictly increasing")
    keep = heatmap_links(util)
    note = ""
    if keep.size < len(link_names):
        note = f" ({keep.size} of {len(link_names)} links; hidden: peak <= 1 % or not among the busiest)"
    names = [link_names[i] for i in keep]

    fig = new_figure(11.0, min(3.0 + 0.18 * max(len(names), 1), 14.0))
    ax = fig.add_subplot(1, 1, 1)
    if times.size == 0 or keep.size == 0:
        if times.size == 0:
            message = "no telemetry samples"
        else:
            message = "no link above 1 % utilisation" if link_names else "no links"
        ax.text(0.5, 0.5, message,
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    else:
        if times.size > 1:
            mid = (times[1:] + times[:-1]) / 2
            edges = np.concatenate(([times[0] - (mid[0] - times[0])], mid, [times[-1] + (times[-1] - mid[-1])]))
        else:
            edges = np.array([times[0] - 0.5, times[0] + 0.5])
        data = np.ma.masked_invalid(util[:, keep].T * 100.0)
        cmap = _heat_cmap()
        mesh = ax.pcolormesh(edges, np.arange(keep.size + 1), data, cmap=cmap, vmin=0.0, vmax=100.0,
                             shading="flat")
        ax.set_yticks(np.arange(keep.size) + 0.5, names, fontsize="x-small" if keep.size > 20 else "small")
        ax.invert_yaxis()
        cbar = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04, aspect=40)
        cbar.set_label("utilisation (%)")
    ax.set_xlabel("time (s)" + (f"; {source}" if source else ""))
    ax.set_ylabel("directed link (from->to)")
    ax.set_title("links shown" + note if note else "all links", fontsize="small")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        text = finish_figure(fig, tmp, FigureText("Link utilisation over time", caption))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return text


def _heat_cmap() -> Colormap:
    return colormaps["viridis"].with_extremes(bad="#bbbbbb")
