"""Executes every colab/ notebook top to bottom (nbclient, kernel python3).

The budget sweep and the traversal run once, at a size far below `--quick`
(15 steps, two PCA cells, one baseline, 32 eval images), into a temporary
directory that the notebooks read through `PCAVAE_BUDGET_SWEEP_DIR` /
`PCAVAE_TRAVERSAL_DIR`. One test runs all four notebooks so that pytest-xdist
does not repeat the sweep on every worker.
"""

import os
import subprocess
import sys
import time

import nbclient
import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = ('budget_curve', 'radar', 'traversal', 'spectra')
TINY_SWEEP = ('--quick', '--steps=15', '--grids=8x8,global', '--fractions=100',
              '--baselines=vq_8x8_k16', '--eval_images=32', '--bits=32,4',
              '--budgets=128')
TINY_TRAVERSAL = ('--quick', '--pca_cell=pca_global_q100',
                  '--vq_cell=vq_8x8_k16', '--components=0,1,2',
                  '--num_images=2')


def _run(args, cwd):
  proc = subprocess.run([sys.executable] + list(args), cwd=cwd,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, (args, proc.stdout[-3000:],
                                proc.stderr[-3000:])


@pytest.fixture(scope='module')
def experiment_dirs(tmp_path_factory):
  sweep = str(tmp_path_factory.mktemp('budget_sweep'))
  _run([os.path.join(ROOT, 'experiments', 'budget_sweep.py'),
        f'--out={sweep}', *TINY_SWEEP], ROOT)
  traversal = os.path.join(sweep, 'traversal')
  _run([os.path.join(ROOT, 'experiments', 'traversal.py'),
        f'--sweep_dir={sweep}', f'--out={traversal}', *TINY_TRAVERSAL], ROOT)
  return sweep, traversal


def test_experiment_outputs(experiment_dirs):
  sweep, traversal = experiment_dirs
  for name in ('results.json', 'results.csv', 'results.md',
               'budget_curve.png', 'radar.png'):
    assert os.path.getsize(os.path.join(sweep, name)) > 0, name
  for name in ('traversal.json', 'traversal_pca.png', 'traversal_vq.png'):
    assert os.path.getsize(os.path.join(traversal, name)) > 0, name
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(sweep, 'results.json')) as f:
    rows = json.load(f)['rows']
  settings = {(r['cell'], r['setting']) for r in rows}
  assert ('pca_8x8_q100', 'wf128') in settings
  assert ('pca_global_q100', 'b4') in settings
  assert ('vq_8x8_k16', 'native') in settings
  for r in rows:  # honest bits: what latent_bits says, what eval measured
    if r['setting'] == 'wf128':
      assert r['bits_per_image'] == 128
    if r['kind'] in ('pca_fixed', 'pca_waterfill', 'baseline'):
      assert 0 < r['entropy_bits_per_image'] <= r['bits_per_image'] + 1e-6


def test_notebooks_run_top_to_bottom(experiment_dirs, monkeypatch):
  sweep, traversal = experiment_dirs
  # The kernels inherit the environment: point them at the tiny outputs.
  monkeypatch.setenv('PCAVAE_QUICK', '1')
  monkeypatch.setenv('PCAVAE_BUDGET_SWEEP_DIR', sweep)
  monkeypatch.setenv('PCAVAE_TRAVERSAL_DIR', traversal)
  monkeypatch.setenv('PCAVAE_SPECTRA_CELLS', 'pca_8x8_q100,vq_8x8_k16')
  failures, times = [], {}
  for name in NOTEBOOKS:
    path = os.path.join(ROOT, 'colab', f'{name}.ipynb')
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name='python3',
        resources={'metadata': {'path': os.path.join(ROOT, 'colab')}})
    t0 = time.perf_counter()
    try:
      client.execute()
    except nbclient.exceptions.CellExecutionError as e:
      failures.append(f'{name}.ipynb: {str(e)[-2000:]}')
      continue
    times[name] = time.perf_counter() - t0
    images = sum(1 for c in nb.cells if c.cell_type == 'code'
                 for o in c.get('outputs', [])
                 if 'image/png' in o.get('data', {}))
    if not images:
      failures.append(f'{name}.ipynb drew no figure.')
  assert not failures, '\n\n'.join(failures)
  print('notebook seconds:', {k: round(v, 1) for k, v in times.items()})


@pytest.mark.parametrize('cell', ['pca_8x8_q100', 'pca_global_q100'])
def test_pca_traversal_values(experiment_dirs, cell):
  """The strip at t = 0 is the plain eval reconstruction, and strip (j, t)
  decodes the eval latent moved along component j only, by t sigma_j at each
  location (computed here from the stored basis and coefficient variance;
  `spatial` mode, where a location mix-up in the shift would show)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pcavae import train  # pylint: disable=g-import-not-at-top
  from pcavae import traversal  # pylint: disable=g-import-not-at-top
  sweep, _ = experiment_dirs
  config, model, variables, _ = train.restore_model(
      os.path.join(sweep, 'runs', cell))
  r = config.resolution
  x = np.random.default_rng(0).uniform(-1, 1, (2, r, r, 3)).astype(
      np.float32)
  components, values = (0, 2), (-2.0, 0.0, 1.5)
  strips, info = traversal.pca_traversal(model, variables, x, components,
                                         values)
  assert strips.shape == (2, 3, 2, r, r, 3)
  plain, aux = jax.jit(lambda v, a: model.apply(v, a, train=False))(
      variables, x)
  for i in range(len(components)):
    np.testing.assert_allclose(strips[i, 1], plain, atol=1e-5)
  assert info['mean_abs_pixel_change'][0] > 0
  if config.model.bottleneck.mode != 'spatial':
    return
  p = variables['pca']['bottleneck']
  basis = np.asarray(p['basis'], np.float64)                    # (L, D, Q)
  sigma = np.sqrt(np.maximum(np.asarray(p['coef_var'], np.float64), 0))
  z_q = np.asarray(aux['z_q'], np.float64)
  b, hh, ww, d = z_q.shape
  decode = jax.jit(lambda v, z: model.apply(v, z,
                                            method=lambda m, z: m.decode(z)))
  for i, j in enumerate(components):
    for k, t in enumerate(values):
      # Location l = row * W + column moves by t sigma_lj along C_l[:, j].
      move = t * sigma[:, j, None] * basis[:, :, j]             # (L, D)
      moved = z_q + move.reshape(1, hh, ww, d)
      np.testing.assert_allclose(
          strips[i, k], decode(variables, moved.astype(np.float32)),
          atol=1e-5, err_msg=f'component {j}, t = {t}')


def test_vq_traversal_values(experiment_dirs):
  """Strip (j, t) of a VQ run decodes the eval quantization of the encoder
  output moved at every location by t sqrt(lambda_j) v_j, with (lambda_j,
  v_j) the j-th eigenpair of the reference set's encoder-output covariance
  (computed here, float64, divided by n, each vector's largest entry
  positive); info has sqrt(lambda_j) and the mean |change| from t = 0."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pcavae import train  # pylint: disable=g-import-not-at-top
  from pcavae import traversal  # pylint: disable=g-import-not-at-top
  sweep, _ = experiment_dirs
  config, model, variables, _ = train.restore_model(
      os.path.join(sweep, 'runs', 'vq_8x8_k16'))
  r = config.resolution
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, r, r, 3)).astype(np.float32)
  ref = rng.uniform(-1, 1, (6, r, r, 3)).astype(np.float32)
  components, values = (0, 2), (-1.5, 0.0, 2.0)
  strips, info = traversal.latent_traversal(model, variables, x, ref,
                                            components, values)
  assert strips.shape == (2, 3, 2, r, r, 3)

  z_ref = np.asarray(model.apply(variables, ref, method=model.encode),
                     np.float64)
  z_ref = z_ref.reshape(-1, z_ref.shape[-1])
  zc = z_ref - z_ref.mean(0)
  lam, vec = np.linalg.eigh(zc.T @ zc / len(zc))
  lam, vec = lam[::-1], vec[:, ::-1]
  vec *= np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(vec.shape[1])])
  np.testing.assert_allclose(info['sigma'], np.sqrt(lam[list(components)]),
                             rtol=1e-4)

  def moved(offset):
    def fn(m, a):
      z_hat, _ = m.quantize(m.encode(a).astype(np.float32) + offset, False)
      return m.decode(z_hat)
    return np.asarray(model.apply(variables, x, method=fn))

  for i, j in enumerate(components):
    for k, t in enumerate(values):
      offset = (t * np.sqrt(lam[j]) * vec[:, j]).astype(np.float32)
      np.testing.assert_allclose(strips[i, k], moved(offset), atol=1e-4,
                                 err_msg=f'direction {j}, t = {t}')
    change = np.mean(np.abs(strips[i] - strips[i, 1][None]))
    assert info['mean_abs_pixel_change'][i] == pytest.approx(change,
                                                             rel=1e-5)
  assert info['mean_abs_pixel_change'][0] > 0
