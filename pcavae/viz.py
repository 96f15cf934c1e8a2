"""Image grids and plots for people to look at."""

from typing import Dict, Optional, Sequence

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


def sample_grid(images: np.ndarray, per_row: int = 8) -> np.ndarray:
  """`(n, H, W, 3)` [-1, 1] images as one uint8 grid, `per_row` to a row
  (the last row filled with white)."""
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  per_row = min(per_row, n)
  rows = -(-n // per_row)
  filled = np.ones((rows * per_row,) + images.shape[1:], np.float32)
  filled[:n] = images
  return image_grid(list(filled.reshape((rows, per_row) + images.shape[1:])))


def labeled_rows(rows: Dict[str, np.ndarray],
                 column_labels: Optional[Sequence[str]] = None,
                 title: str = '', min_height: int = 360) -> np.ndarray:
  """Rows of images with a label to the left of each.

  Args:
    rows: label -> `(n, h, w, 3)` images in [-1, 1], the same n and shape
      for every row (sample grids per bottleneck, interpolation paths).
    column_labels: n labels over the columns, or None.
    title: figure title.
    min_height: the grid is scaled up (nearest) to at least this many
      pixels, so small images stay visible.

  Returns:
    A uint8 `(H, W, 3)` image.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  labels = list(rows)
  grid = image_grid([rows[k] for k in labels])
  h_px, w_px = grid.shape[:2]
  scale = max(1.0, min_height / h_px)
  left, top, bottom = 200, 40 if title else 24, 8
  width, height = w_px * scale + left + 10, h_px * scale + top + bottom
  fig = Figure(figsize=(width / 100, height / 100), dpi=100)
  ax = fig.add_axes([left / width, bottom / height, w_px * scale / width,
                     h_px * scale / height])
  ax.imshow(grid, interpolation='nearest')
  n = next(iter(rows.values())).shape[0]
  if column_labels is not None:
    ax.set_xticks([(j + 0.5) * w_px / n for j in range(n)])
    ax.set_xticklabels(list(column_labels), fontsize=6)
    ax.xaxis.tick_top()
  else:
    ax.set_xticks([])
  ax.set_yticks([(i + 0.5) * h_px / len(labels) for i in range(len(labels))])
  ax.set_yticklabels(labels, fontsize=7)
  ax.tick_params(length=0)
  for s in ax.spines.values():
    s.set_visible(False)
  if title:
    fig.text(0.5, 1 - 6 / height, title, ha='center', va='top', fontsize=9)
  return figure_to_array(fig)


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


def fidelity_plot(history: dict, title: str = '') -> np.ndarray:
  """PCA fidelity over training (`pca_layer.fidelity_history`).

  Left: captured variance (mean and min over problems) and the alignment of
  the identifiable components with the exact eigenvectors, on [0, 1] with
  the 0.95 target dashed. Right: Spearman rho of component index vs running
  coefficient variance, on [-1, 1] with the -0.9 target dashed (-1: the
  components come in decreasing order of variance).

  Args:
    history: `{'step': (k,), 'captured_variance': (k,), ...}`.
    title: figure title.

  Returns:
    A uint8 `(H, W, 3)` image.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  steps = np.asarray(history['step'])
  fig = Figure(figsize=(8.4, 3.4), dpi=100)
  fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.8,
                      wspace=0.25)
  left, right = fig.subplots(1, 2)
  lines = (('captured_variance', 'captured variance (mean)', 'C0', '-'),
           ('captured_variance_min', 'captured variance (min)', 'C0', ':'),
           ('eigenvector_alignment', 'mean |cos(c_j, e_j)|, identifiable j',
            'C2', '-'))
  for key, label, color, style in lines:
    if key in history:
      v = np.asarray(history[key])
      left.plot(steps, v, style, color=color, marker='o', ms=3,
                label=f'{label}: {v[-1]:.3f}')
  left.axhline(0.95, color='gray', ls='--', lw=0.8)
  left.set_ylim(0, 1.02)
  left.set_title('subspace and vectors vs the exact PCA', fontsize=9)
  left.legend(fontsize=7, loc='lower right')
  if 'order_spearman' in history:
    v = np.asarray(history['order_spearman'])
    right.plot(steps, v, 'o-', color='C3', ms=3,
               label=f'Spearman rho(index, variance): {v[-1]:.3f}')
  right.axhline(-0.9, color='gray', ls='--', lw=0.8)
  right.set_ylim(-1.05, 1.05)
  right.set_title('ordering (-1: variance-ordered)', fontsize=9)
  right.legend(fontsize=7, loc='upper right')
  for ax in (left, right):
    ax.set_xlabel('step', fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return figure_to_array(fig)


# ---------------------------------------------------------------------------
# Rate-distortion figures (experiments/budget_sweep.py, colab/).
# ---------------------------------------------------------------------------

# Direction of each metric: +1 higher is better, -1 lower is better.
METRIC_DIRECTIONS = {'psnr': 1, 'ssim': 1, 'lpips': -1, 'rfid': -1,
                     'bits_per_image': -1, 'entropy_bits_per_image': -1}
METRIC_LABELS = {'psnr': 'PSNR (dB)', 'ssim': 'SSIM', 'lpips': 'LPIPS (alex)',
                 'rfid': 'rFID', 'bits_per_image': 'bits / image',
                 'entropy_bits_per_image': 'entropy-coded bits / image'}


def pareto_front(x: Sequence[float], y: Sequence[float], higher_is_better: bool
                 ) -> np.ndarray:
  """Indices of the points no other point beats at fewer or equal bits.

  Args:
    x: bits per image.
    y: a metric.
    higher_is_better: the metric's direction.

  Returns:
    Indices sorted by x: the operational rate-distortion curve of the set.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  sign = 1.0 if higher_is_better else -1.0
  order = np.lexsort((-sign * y, x))
  keep, best = [], -np.inf
  for i in order:
    if np.isfinite(y[i]) and sign * y[i] > best:
      keep.append(i)
      best = sign * y[i]
  return np.asarray(keep, np.int64)


def budget_curve(rows: Sequence[dict], metrics: Sequence[str] = ('psnr',
                                                                 'ssim',
                                                                 'lpips'),
                 x_key: str = 'bits_per_image', title: str = '') -> np.ndarray:
  """Metric against bits per image (log x), one panel per metric.

  Each row is one evaluated model: `group` (a curve: e.g. `PCA 8x8`; rows
  of a group are joined along their Pareto front), `kind` (`pca_float`,
  `pca_fixed`, `pca_waterfill` or `baseline`: the marker), `label` (printed
  next to baseline points), `x_key` and the metric keys. Missing or None
  metrics are skipped. PCA points with unquantized 32-bit coefficients are
  drawn hollow: they are where the paper would put them, not a code anyone
  could send at fewer bits.

  Returns:
    A uint8 `(H, W, 3)` image.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  metrics = [m for m in metrics
             if any(r.get(m) is not None for r in rows)]
  width = 5.2 * max(len(metrics), 1) + 2.6
  fig = Figure(figsize=(width, 5.2), dpi=100)
  fig.subplots_adjust(left=0.5 / width, right=1 - 2.5 / width, bottom=0.11,
                      top=0.88, wspace=0.25)
  axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
  groups = []
  for r in rows:
    if r['group'] not in groups:
      groups.append(r['group'])
  cmap = matplotlib.colormaps['tab10']
  colors = {g: cmap(i % 10) for i, g in enumerate(groups)}
  markers = {'pca_float': 'o', 'pca_fixed': 's', 'pca_waterfill': '*',
             'baseline': 'D'}
  for ax, metric in zip(axes, metrics):
    up = METRIC_DIRECTIONS.get(metric, 1) > 0
    for g in groups:
      pts = [r for r in rows if r['group'] == g and r.get(metric) is not None
             and r.get(x_key)]
      if not pts:
        continue
      x = [r[x_key] for r in pts]
      y = [r[metric] for r in pts]
      front = pareto_front(x, y, up)
      is_pca = any(r.get('kind', 'baseline') != 'baseline' for r in pts)
      ax.plot(np.asarray(x)[front], np.asarray(y)[front],
              '-' if is_pca else '--', lw=1.2, color=colors[g], alpha=0.8,
              label=g)
      for r, xi, yi in zip(pts, x, y):
        kind = r.get('kind', 'baseline')
        hollow = kind == 'pca_float'
        ax.plot([xi], [yi], markers.get(kind, 'o'),
                ms={'baseline': 8, 'pca_waterfill': 8}.get(kind, 4.5),
                mfc='none' if hollow else colors[g], mec=colors[g],
                alpha=0.9)
        if kind == 'baseline' and r.get('label'):
          # The colour names the family: print only what differs.
          text = r['label']
          if text.startswith(g + ' '):
            text = text[len(g) + 1:]
          ax.annotate(text, (xi, yi), fontsize=6, xytext=(4, -3),
                      textcoords='offset points', color=colors[g])
    ax.set_xscale('log')
    ax.set_xlabel(METRIC_LABELS.get(x_key, x_key) + ' (log)', fontsize=9)
    ax.set_title(METRIC_LABELS.get(metric, metric)
                 + (' (higher is better)' if up else ' (lower is better)'),
                 fontsize=9)
    ax.grid(alpha=0.3, which='both')
    ax.tick_params(labelsize=7)
  handles, labels = axes[0].get_legend_handles_labels()
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  for kind, text in (('pca_float', 'PCA, 32-bit float coefficients'),
                     ('pca_fixed', 'PCA, fixed b bits / coefficient'),
                     ('pca_waterfill', 'PCA, water-filled budget'),
                     ('baseline', 'baseline')):
    handles.append(Line2D([], [], ls='', marker=markers[kind], color='0.3',
                          mfc='none' if kind == 'pca_float' else '0.3'))
    labels.append(text)
  fig.legend(handles, labels, loc='center right', fontsize=7,
             frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  return figure_to_array(fig)


def radar_scores(rows: Sequence[dict], metrics: Sequence[str],
                 log_keys: Sequence[str] = ('bits_per_image',
                                            'entropy_bits_per_image')
                 ) -> np.ndarray:
  """Min-max normalised scores, `(len(rows), len(metrics))`, 1 = best.

  Each metric is scaled over the rows given, in its direction
  (`METRIC_DIRECTIONS`); bit counts are compared in log2 (they span
  decades). A metric equal across rows scores 1 for all; a missing value
  scores NaN.
  """
  out = np.full((len(rows), len(metrics)), np.nan)
  for j, m in enumerate(metrics):
    v = np.asarray([np.nan if r.get(m) is None else float(r[m])
                    for r in rows])
    if m in log_keys:
      v = np.log2(np.maximum(v, 1.0))
    ok = np.isfinite(v)
    if not ok.any():
      continue
    lo, hi = v[ok].min(), v[ok].max()
    s = np.ones_like(v) if hi == lo else (v - lo) / (hi - lo)
    if METRIC_DIRECTIONS.get(m, 1) < 0:
      s = 1.0 - s if hi != lo else s
    out[ok, j] = s[ok]
  return out


def radar_chart(rows: Sequence[dict], metrics: Sequence[str] = (
    'psnr', 'ssim', 'lpips', 'bits_per_image'), title: str = '') -> np.ndarray:
  """The normalised radar chart: one polygon per row (`label`), one axis per
  metric, min-max scaled over the rows shown, 1 = best (`radar_scores`).

  Returns:
    A uint8 `(H, W, 3)` image.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
  scores = radar_scores(rows, metrics)
  fig = Figure(figsize=(8.6, 5.6), dpi=100)
  ax = fig.add_axes([0.09, 0.1, 0.44, 0.72], projection='polar')
  angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
  closed = np.concatenate([angles, angles[:1]])
  cmap = matplotlib.colormaps['tab10']
  for i, (r, s) in enumerate(zip(rows, scores)):
    s = np.nan_to_num(s, nan=0.0)
    color = cmap(i % 10)
    ax.plot(closed, np.concatenate([s, s[:1]]), '-o', ms=3, lw=1.4,
            color=color, label=r.get('label', str(i)))
    ax.fill(closed, np.concatenate([s, s[:1]]), color=color, alpha=0.06)
  ax.set_xticks(angles)
  ax.set_xticklabels([METRIC_LABELS.get(m, m) for m in metrics], fontsize=8)
  ax.tick_params(axis='x', pad=14)  # labels clear of the outer ring
  ax.set_ylim(0, 1.05)
  ax.set_yticks([0.25, 0.5, 0.75, 1.0])
  ax.set_yticklabels(['.25', '.5', '.75', '1'], fontsize=6)
  fig.legend(*ax.get_legend_handles_labels(), loc='center left',
             bbox_to_anchor=(0.6, 0.5), fontsize=7, frameon=False)
  fig.text(0.6, 0.06, 'min-max per axis over the models shown, 1 = best;\n'
           'bits on a log scale (fewer = better)', fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return figure_to_array(fig)


def traversal_figure(strips: np.ndarray, values: Sequence[float],
                     row_labels: Sequence[str], title: str = ''
                     ) -> np.ndarray:
  """Latent traversals: one row (strip) per component.

  Args:
    strips: `(C, V, N, H, W, 3)` images in [-1, 1]: component, value, image.
      The N images of a row sit in N blocks of V columns.
    values: the V offsets, in units of sigma (column titles).
    row_labels: C labels.
    title: figure title.

  Returns:
    A uint8 `(H, W, 3)` image.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  c, v, n = strips.shape[:3]
  # One image_grid row per (component, image); a component's images side
  # by side, so each image's strip reads left to right.
  blocks = [np.concatenate([image_grid([strips[i, :, k]]) for k in range(n)],
                           axis=1) for i in range(c)]
  grid = np.concatenate(blocks, axis=0)
  h_px, w_px = grid.shape[:2]
  scale = max(1.0, 480.0 / h_px)
  fig = Figure(figsize=((w_px * scale + 140) / 100,
                        (h_px * scale + 70) / 100), dpi=100)
  ax = fig.add_axes([120 / (w_px * scale + 140), 20 / (h_px * scale + 70),
                     w_px * scale / (w_px * scale + 140),
                     h_px * scale / (h_px * scale + 70)])
  ax.imshow(grid, interpolation='nearest')
  block_w = w_px / n
  cell_w = block_w / v
  ax.set_xticks([k * block_w + (j + 0.5) * cell_w for k in range(n)
                 for j in range(v)])
  ax.set_xticklabels([f'{x:+g}' if x else '0' for _ in range(n)
                      for x in values],
                     fontsize=6)
  ax.xaxis.tick_top()
  row_h = h_px / c
  ax.set_yticks([(i + 0.5) * row_h for i in range(c)])
  ax.set_yticklabels(row_labels, fontsize=7)
  ax.tick_params(length=0)
  for s in ax.spines.values():
    s.set_visible(False)
  if title:
    fig.text(0.5, 1 - 8 / (h_px * scale + 70), title, ha='center', va='top',
             fontsize=8)
  return figure_to_array(fig)
