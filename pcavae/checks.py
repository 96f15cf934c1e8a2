"""Checks of config values whose errors name the key (a leaf: no imports).

Shared by `pcavae.configlib` and each bottleneck's own `validate`, so that
every message reads the same: `config.model.bottleneck.beta=-1 must be
positive.`
"""

from typing import Any, Sequence


def positive(value: Any, key: str, kind=int) -> None:
  """Raises unless `value` is a positive int (`kind=int`) or number."""
  if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
    raise ValueError(f'{key}={value!r} must be a positive integer.')
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      not value > 0):
    raise ValueError(f'{key}={value!r} must be positive.')


def non_negative(value: Any, key: str) -> None:
  """Raises unless `value` is a number >= 0."""
  if not (isinstance(value, (int, float)) and value >= 0):
    raise ValueError(f'{key}={value!r} must be >= 0.')


def one_of(value: Any, key: str, choices: Sequence[Any]) -> None:
  """Raises unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f'{key}={value!r}; choose one of {tuple(choices)}.')
