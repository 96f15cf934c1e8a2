"""Image grids and plots for people to look at."""

from typing import Sequence

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8."""
  x = np.clip((np.asarray(x, np.float32) + 1.0) * 127.5, 0, 255)
  return np.round(x).astype(np.uint8)


def image_grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """Stacks rows of NHWC [-1, 1] images into one uint8 HWC grid.

  Each element of `rows` is a batch `(n, h, w, c)`; all rows have the same n.
  Used for the "originals over reconstructions" figure of every eval.
  """
  rows = [to_uint8(r) for r in rows]
  n, h, w, c = rows[0].shape
  grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255,
                 np.uint8)
  for i, r in enumerate(rows):
    for j in range(n):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = r[j]
  return grid


# Panel titles of the spectra at eval (pcavae.evaluators.Spectra).
SPECTRUM_TITLES = {
    'z_e': 'encoder output z_e',
    'z_q': 'bottleneck output z_q',
    'codebook': 'codebook (all codes)',
    'codebook_used': 'codebook (used codes)',
    'pca_coef': 'PCA coefficient std',
}


def figure_to_array(fig) -> np.ndarray:
  """Renders a matplotlib Figure (Agg) to a uint8 `(H, W, 3)` array."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def spectrum_plot(history: Sequence[tuple], threshold: float = 0.99,
                  title: str = '') -> np.ndarray:
  """Singular value spectra over training, one panel per quantity.

  Each panel shows `log10(s_i / s_1)` against the index i (1-based) with one
  line per eval step (light to dark with the step); a dot on each line marks
  its `threshold`-variance dimension (`analysis.explained_variance_dim`),
  whose value for the latest step is in the panel title. Normalising by
  `s_1` keeps the shape, which is what collapse is about, comparable while
  the overall scale of the latents drifts.

  Args:
    history: `[(step, {name: singular values})]` in increasing step order;
      names as in `SPECTRUM_TITLES` (others are plotted under their name).
    threshold: variance share of the marked dimension.
    title: figure title.

  Returns:
    A uint8 `(H, W, 3)` image.
  """
  # Figure + Agg canvas, not pyplot: no global backend switch, safe in
  # notebooks and threads.
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import cm  # pylint: disable=g-import-not-at-top
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from pcavae import analysis  # pylint: disable=g-import-not-at-top

  names = []
  for _, spectra in history:
    for name in spectra:
      if name not in names:
        names.append(name)
  order = list(SPECTRUM_TITLES)
  names.sort(key=lambda n: order.index(n) if n in order else len(order))
  steps = [int(s) for s, _ in history]
  width = 3.4 * max(len(names), 1) + 0.8
  # Fixed margins: constrained layout costs more than the plotting itself.
  fig = Figure(figsize=(width, 3.4), dpi=100)
  fig.subplots_adjust(left=0.6 / width, right=1 - 1.1 / width, bottom=0.14,
                      top=0.78, wspace=0.25)
  norm = colors.Normalize(vmin=min(steps, default=0),
                          vmax=max(max(steps, default=1), min(steps,
                                                              default=0) + 1))
  cmap = matplotlib.colormaps['viridis']
  axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
  for ax, name in zip(axes, names):
    latest = None
    for step, spectra in history:
      s = np.asarray(spectra.get(name, []), np.float64)
      if s.size == 0 or s.max() <= 0:
        continue
      s = np.sort(s)[::-1]
      # Floor at 1e-6: exact zeros (rank-deficient sets) would stretch the
      # axis without showing anything more.
      y = np.log10(np.maximum(s / s[0], 1e-6))
      x = np.arange(1, s.size + 1)
      k = analysis.explained_variance_dim(s, threshold)
      color = cmap(norm(step))
      ax.plot(x, y, color=color, lw=1.2)
      ax.plot([k], [y[k - 1]], 'o', color=color, ms=4)
      latest = (step, k, s.size)
    label = SPECTRUM_TITLES.get(name, name)
    if latest is not None:
      label += f'\nstep {latest[0]}: dim{int(threshold * 100)} = ' \
               f'{latest[1]} of {latest[2]}'
    ax.set_title(label, fontsize=9)
    ax.set_xlabel('index i', fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
  axes[0].set_ylabel('log10(s_i / s_1)', fontsize=8)
  mappable = cm.ScalarMappable(norm=norm, cmap=cmap)
  bar = fig.colorbar(mappable, cax=fig.add_axes(
      [1 - 0.95 / width, 0.14, 0.12 / width, 0.64]))
  bar.set_label('eval step (dot: %d%% variance dim)' % int(threshold * 100),
                fontsize=8)
  bar.ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return figure_to_array(fig)
