"""The train state's layout: a plain dict (docs/design.md §4).

  params                trainable parameters (float32)
  opt_state             optax state
  collections           every non-trainable model collection (`pca`,
                        `vq_ema`, `simvq`, `warmup`, ...): what `model.apply`
                        takes beside `params`, under one key whatever the
                        bottleneck
  step                  int32, number of updates applied or skipped
  rng                   the run's base PRNG key
  num_nonfinite         int32, steps whose loss or gradient was NaN/Inf
  first_nonfinite_step  int32, -1 if none (and `first_nonfinite_what`)
  ...                   the trainer's own extras (the VQGAN discriminator's
                        state, the adaptive warm-up's history)
"""

from typing import Any, Dict

State = Dict[str, Any]
COLLECTIONS = 'collections'


def collections_of(state: State) -> Dict[str, Any]:
  """The non-trainable model collections held in a train state."""
  return state[COLLECTIONS]


def variables_of(state: State) -> Dict[str, Any]:
  """The model's Flax variables: `params` and every collection."""
  return {'params': state['params'], **state[COLLECTIONS]}


def with_variables(state: State, variables: Dict[str, Any]) -> State:
  """`state` holding the Flax `variables` (`params` and the collections)."""
  variables = dict(variables)
  params = variables.pop('params')
  return dict(state, params=params, **{COLLECTIONS: variables})


def to_legacy_layout(state: State) -> State:
  """The layout before the collections had their own key (each collection
  at the top level): what checkpoints written then hold."""
  out = {k: v for k, v in state.items() if k != COLLECTIONS}
  out.update(state[COLLECTIONS])
  return out


def from_legacy_layout(state: State, names) -> State:
  """Inverse of `to_legacy_layout`; `names` are the collections."""
  out = {k: v for k, v in state.items() if k not in names}
  out[COLLECTIONS] = {k: state[k] for k in names}
  return out
