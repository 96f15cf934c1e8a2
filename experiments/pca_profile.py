r"""Where the PCA layer's time goes: its parts jitted and timed alone.

  python experiments/pca_profile.py --out=out/pca_profile
  python experiments/pca_profile.py --quick --out=/tmp/pp     # seconds

At the shape of the reference's setting (`spatial16` at 64 px, batch 16:
L = 256 locations, n = 16 samples each, D = Q = 256; `--locations`,
`--samples`, `--dim`, `--components` change it) it builds one realistic
state, a random orthonormal basis and samples whose variance decays along
the dimensions, takes one rate-0.1 `sanger` step, and times each part of the
PCA's train step on its own (median of `--repeats` runs after a compile
run), in wall and process CPU milliseconds:

  products_with_basis   the four `(n, D) x (D, Q)`-shaped products of the
                        projection (coefficients and reconstruction, and
                        the two that carry the encoder's gradient back);
  sanger_step           `pca.normalized_sanger_delta` (the `sanger` tracker)
  sanger_step_raw       `pca.sanger_delta` (the `reference` rule), blocked
                        where that is cheaper;
  sanger_step_direct    the unblocked formula, for comparison;
  gram                  one `C^T C` (also the drift check's cost);
  cholesky_inverse      `pca.cholesky_inverse` of the Gram (L and L^-1, in
                        matrix products), the second part of Cholesky-QR;
                        its third is one `product`;
  lapack_cholesky, lapack_triangular_solve   the same two steps by XLA's
                        LAPACK kernels, for comparison (not used: they
                        deadlocked with several devices in one process);
  orthonormalize_qr     `pca.orthonormalize_qr` (the `sanger` default);
  orthonormalize        `pca.orthonormalize` (symmetric, Newton-Schulz);
  product               one `(D, Q) x (Q, Q)` product per location.

It also reports the Gram matrix's eigenvalue range after the step (how far a
rate-0.1 step moves the basis from orthonormal) and each orthonormalisation's
error. One JSON line per part goes to stdout and `<out>/pca_profile.jsonl`, a
markdown table to `<out>/pca_profile.md`.
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _timed(fn, args, repeats):
  """(median wall ms, median CPU ms) of `fn(*args)` after one compile run."""
  jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def parts(locations, samples, dim, components, seed=0):
  """`{name: (jitted fn, args, multiply-adds)}` and the stepped basis."""
  from pcavae.models import pca  # pylint: disable=g-import-not-at-top
  l, n, d, q = locations, samples, dim, components
  basis = pca.random_orthonormal(jax.random.PRNGKey(seed), (l, d, q))
  decay = jnp.exp(-jnp.arange(d, dtype=jnp.float32) / (d / 6))
  x = jax.random.normal(jax.random.PRNGKey(seed + 1), (l, n, d)) * decay
  xc = x - jnp.mean(x, axis=-2, keepdims=True)
  var = jnp.mean(jnp.square(xc @ basis), axis=-2)
  stepped = basis + 0.1 * pca.normalized_sanger_delta(basis, xc, var)
  gram = jnp.swapaxes(stepped, -1, -2) @ stepped
  chol = jnp.linalg.cholesky(gram)
  cot = jnp.ones((l, n, d), jnp.float32)

  def products(xc, c, cot):
    ct = jnp.swapaxes(c, -1, -2)
    h = (xc @ c) @ ct                      # coefficients, reconstruction
    return h, (cot @ c) @ ct               # the encoder's gradient through them

  def direct(c, xc):
    y = xc @ c
    g = jnp.swapaxes(y, -1, -2) @ y
    return (jnp.swapaxes(xc, -1, -2) @ y - c @ jnp.triu(g)) / n

  solve = lambda r, c: jax.lax.linalg.triangular_solve(  # noqa: E731
      r, c, left_side=False, lower=True, transpose_a=True)
  dq2 = l * d * q * q
  k = pca._sanger_block(n, q)  # pylint: disable=protected-access
  # y = xc C, then D Q (2n + k) in blocks of k columns, or the direct form.
  sanger_macs = l * (n * d * q + (d * q * (2 * n + k) if k
                                  else q * (n * d + n * q + d * q)))
  return {
      'products_with_basis': (jax.jit(products), (xc, stepped, cot),
                              4 * l * n * d * q),
      'sanger_step': (jax.jit(pca.normalized_sanger_delta),
                      (stepped, xc, var), sanger_macs),
      'sanger_step_raw': (jax.jit(pca.sanger_delta), (stepped, xc),
                          sanger_macs),
      'sanger_step_direct': (jax.jit(direct), (stepped, xc),
                             l * q * (2 * n * d + n * q + d * q)),
      'gram': (jax.jit(lambda c: jnp.swapaxes(c, -1, -2) @ c), (stepped,),
               dq2),
      'cholesky_inverse': (jax.jit(pca.cholesky_inverse), (gram,),
                           2 * l * q ** 3 // 3),
      'lapack_cholesky': (jax.jit(jnp.linalg.cholesky), (gram,),
                          l * q ** 3 // 3),
      'lapack_triangular_solve': (jax.jit(solve), (chol, stepped), dq2 // 2),
      'orthonormalize_qr': (jax.jit(pca.orthonormalize_qr), (stepped,), None),
      'orthonormalize': (jax.jit(pca.orthonormalize), (stepped,), None),
      'product': (jax.jit(lambda c, m: c @ m), (stepped, gram), dq2),
  }, stepped


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--locations', type=int, default=256)
  p.add_argument('--samples', type=int, default=16)
  p.add_argument('--dim', type=int, default=256)
  p.add_argument('--components', type=int, default=256)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--quick', action='store_true',
                 help='16 locations, D = Q = 64, 3 repeats (seconds).')
  p.add_argument('--out', default='out/pca_profile')
  args = p.parse_args(argv)
  if args.quick:
    args.locations, args.dim, args.components, args.repeats = 16, 64, 64, 3
  if args.components > args.dim:
    raise SystemExit(f'--components={args.components} exceeds '
                     f'--dim={args.dim} (Q <= D).')
  from pcavae import harness, sharding  # pylint: disable=g-import-not-at-top
  sharding.tune_host_allocator()  # as pcavae.main, before JAX allocates
  sharding.default_xla_flags()
  from pcavae.models import pca  # pylint: disable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'pca_profile.jsonl')
  if os.path.exists(path):
    os.remove(path)
  shape = dict(locations=args.locations, samples=args.samples, dim=args.dim,
               components=args.components)
  table, stepped = parts(**shape)
  eig = np.linalg.eigvalsh(np.asarray(
      jnp.swapaxes(stepped, -1, -2) @ stepped, np.float64))
  records = [dict(shape, measurement='gram_spectrum_after_step',
                  min=float(eig.min()), max=float(eig.max()))]
  for name, (fn, fn_args, macs) in table.items():
    wall, cpu = _timed(fn, fn_args, args.repeats)
    rec = dict(shape, measurement=name, wall_ms=wall, cpu_ms=cpu,
               load_avg_1min=round(os.getloadavg()[0], 2))
    if macs:
      rec['gmac'] = macs / 1e9
      rec['gmac_per_s_wall'] = macs / 1e9 / (wall / 1e3)
    if name.startswith('orthonormalize'):
      rec['orthonormality_error'] = float(
          pca.orthonormality_error(fn(*fn_args)))
    records.append(rec)
    print(f'{name}: {wall:.0f} ms wall, {cpu:.0f} ms CPU', flush=True)
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
  lines = [f"L = {args.locations}, n = {args.samples}, D = {args.dim}, "
           f"Q = {args.components}; Gram eigenvalues after one rate-0.1 "
           f"`sanger` step: [{eig.min():.2f}, {eig.max():.2f}]", '']
  lines += harness.markdown_table(
      ['part', 'GMAC', 'wall ms', 'CPU ms', 'GMAC/s (wall)',
       'orthonormality error'],
      [[r['measurement'], harness.fmt(r.get('gmac'), '.2f'),
        f"{r['wall_ms']:.0f}", f"{r['cpu_ms']:.0f}",
        harness.fmt(r.get('gmac_per_s_wall'), '.1f'),
        harness.fmt(r.get('orthonormality_error'), '.1e')]
       for r in records[1:]])
  with open(os.path.join(args.out, 'pca_profile.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
