"""Subprocess entry for the multi-device / multi-process tests.

  python tests/distributed_worker.py WORKDIR MESH STEPS [COORD NPROC PID]

MESH is the data-axis size, or `DATAxFSDP` (e.g. 4x2) for a parameter-sharded
mesh.

Trains the tiny test config for STEPS steps on a `data` mesh of MESH_DATA
devices (the devices a process sees are set by XLA_FLAGS in the parent), in
NPROC processes when COORD is given. The parent test restores the
checkpoint it leaves (in one process) and compares.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
  workdir, mesh, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  mesh_data, _, fsdp = mesh.partition('x')
  from absl import logging
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  from pcavae import sharding
  if len(sys.argv) > 4:
    sharding.initialize_distributed(sys.argv[4], int(sys.argv[5]),
                                    int(sys.argv[6]))
  import jax
  from conftest import tiny_config
  from pcavae import train
  config = tiny_config(num_train_steps=steps, checkpoint_every_steps=steps,
                       eval_every_steps=steps, log_every_steps=1)
  config.mesh.data = int(mesh_data)
  config.mesh.fsdp = int(fsdp or 1)
  # A schedule that does not depend on num_train_steps, so that 5 steps then
  # 3 more equal 8 in one go.
  config.optimizer.schedule = 'constant'
  config.eval.lpips = False
  final = train.train_and_evaluate(config, workdir)
  print('FINAL', jax.process_index(), jax.device_count(), final['eval/psnr'],
        flush=True)


if __name__ == '__main__':
  main()
