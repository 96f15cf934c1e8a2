"""A NaN/Inf that starts in a non-trainable collection is named, not blamed
on the loss it poisons."""

import numpy as np
import pytest

from conftest import tiny_config
from pcavae import train


def test_diverging_pca_state_is_named_in_one_line(tmp_path):
  # A Hebbian rate of 1e4 with no clip overflows the PCA state at once; the
  # old message said "Non-finite loss ... Lower config.optimizer.learning_rate".
  # The raw (`reference`) Sanger step: the default one is scale-free and
  # refuses rates above 1 (configlib).
  config = tiny_config(arg='runlocal,reference', num_train_steps=6,
                       log_every_steps=1)
  config.model.bottleneck.learning_rate = 1e4
  config.model.bottleneck.max_update_norm = None
  with pytest.raises(train.NonFiniteError) as info:
    train.train_and_evaluate(config, str(tmp_path / 'nan'))
  message = str(info.value)
  assert '\n' not in message
  assert message.startswith('Non-finite variable at step ')
  name = message.split(': ', 1)[1].split(' ', 1)[0]
  assert name.startswith('pca/bottleneck/'), message
  assert 'config.model.bottleneck.learning_rate' in message


def test_names_follow_the_state_leaves():
  config = tiny_config()
  import jax  # pylint: disable=g-import-not-at-top
  model = train.create_model(config)
  tx, _ = train.make_optimizer(config)
  state = jax.eval_shape(train.make_init_fn(model, tx, config),
                         jax.random.PRNGKey(0))
  names = train.nonfinite_names(state)
  leaves = jax.tree.leaves(train.collections_of(state))
  assert len(names) == len(leaves) + len(train.NONFINITE_ORDER)
  assert names[-len(train.NONFINITE_ORDER):] == train.NONFINITE_ORDER
  assert 'pca/bottleneck/basis' in names
  flags = train._nonfinite_leaves(  # pylint: disable=protected-access
      {'a': {'x': np.array([1.0, np.nan])}, 'b': np.array([1, 2]),
       'c': np.array([np.inf])})
  np.testing.assert_array_equal(flags, [True, False, True])
