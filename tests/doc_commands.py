"""The commands README.md and docs/*.md show, and a check of each one's
arguments against the program that takes them.

`documented_commands(root)` reads every code block (fenced or indented) and
every inline code span of the pages and returns the command lines that run
this project: `make <target>`, `python -m pcavae...`, `python
experiments/<script>.py` and the console scripts, each with the page that
shows it. Line continuations are joined, and a command inside another
(`srun ... python -m pcavae.main ...`, `--command="... && python ..."`)
is taken out of it.

Run as a script, `python tests/doc_commands.py PROGRAM` reads a JSON list
of argument lists on stdin and checks each one as PROGRAM parses it, in
this process, without running the program:

  - an absl program (`pcavae.main`, `pcavae.reconstruct`, `pcavae.codec`,
    the absl experiments) is imported (which defines its flags) and its
    flags parse the arguments; a `--config=` file is loaded with its
    `--config.<key>=` overrides by ml_collections' config_flags, as the
    program does, and `configlib.validate` checks it (a `dataset.path`
    that this machine lacks, the reader's data, is an empty folder here);
  - an argparse program runs as `__main__` until its parser has parsed the
    arguments (`ArgumentParser.parse_args` stops the program there).

A value that is a placeholder (`N`, `W`, `<dir>`, `ldm|none`) is not
parsed, but its flag must exist; in a command with `...` left out of it
every flag must exist and nothing is parsed; a program named with no
arguments (`python -m pcavae.main` in prose) must exist. Prints one JSON
object per argument list: `{"ok": bool, "error": str}`.
"""

import contextlib
import io
import json
import os
import re
import shlex
import sys
from typing import Dict, List, Tuple

# Programs of this project that a page may show, by how a user types them.
_PYTHON = ('python', 'python3')
_SEGMENT_END = re.compile(r'&&|;|\|\||(?<!\S)\|(?!\S)')


def _pages(root: str) -> List[str]:
  docs = os.path.join(root, 'docs')
  return [os.path.join(root, 'README.md')] + sorted(
      os.path.join(docs, f) for f in os.listdir(docs) if f.endswith('.md'))


def _code_texts(markdown: str) -> List[str]:
  """Code blocks (fenced, or indented by 4 spaces after a blank line) and
  inline code spans, each with continuation lines joined."""
  texts, fenced, prose = [], [], []
  lines = markdown.split('\n')
  in_fence = False
  prev_blank = True
  indented: List[str] = []
  for line in lines:
    if line.lstrip().startswith('```'):
      if in_fence:
        texts.append('\n'.join(fenced))
        fenced = []
      in_fence = not in_fence
      prev_blank = False
      continue
    if in_fence:
      fenced.append(line)
      continue
    if line.startswith('    ') and (prev_blank or indented):
      indented.append(line[4:])
      continue
    if indented:
      texts.append('\n'.join(indented))
      indented = []
    prose.append(line)
    prev_blank = not line.strip()
  if indented:
    texts.append('\n'.join(indented))
  # Inline spans may wrap over lines; markdown joins them with a space.
  for span in re.findall(r'`([^`]+)`', '\n'.join(prose)):
    texts.append(span.replace('\n', ' '))
  return texts


def _commands_in(text: str) -> List[str]:
  """The project's command lines in one code text."""
  out = []
  for line in text.replace('\\\n', ' ').split('\n'):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    for segment in _SEGMENT_END.split(line):
      segment = segment.strip().strip('"').strip()
      words = segment.split()
      for i, word in enumerate(words):
        if word in _PYTHON and i + 1 < len(words) and (
            words[i + 1] == '-m' and i + 2 < len(words) and
            words[i + 2].startswith('pcavae')
            or words[i + 1].startswith('experiments/')):
          out.append(' '.join(words[i:]))
          break
        if word.startswith('pcavae-') and i == 0:
          out.append(segment)
          break
        if word == 'make' and i == 0 and len(words) > 1:
          out.append(segment)
          break
  return out


def _strip_comment(command: str) -> str:
  """The command without a trailing `# comment` (outside quotes)."""
  lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
  lexer.whitespace_split = True
  lexer.commenters = '#'
  return shlex.join(list(lexer))


def documented_commands(root: str) -> List[Tuple[str, str]]:
  """`(page, command)` for every command of this project the pages show,
  each distinct command once (the first page that shows it)."""
  seen: Dict[str, str] = {}
  for page in _pages(root):
    with open(page) as f:
      text = f.read()
    for code in _code_texts(text):
      for command in _commands_in(code):
        command = _strip_comment(command)
        seen.setdefault(command, os.path.relpath(page, root))
  return [(page, command) for command, page in seen.items()]


def is_placeholder(value: str) -> bool:
  """A value the page leaves for the reader to fill in."""
  return bool(re.search(r'<|>|\.\.\.|\|', value) or
              re.fullmatch(r'[A-Z][A-Z_0-9]*|[a-z]', value))


# -- the check, in the process of one program --------------------------------


class _Parsed(Exception):
  """Raised by the stopping `parse_args` once the arguments parsed."""


def _split(argv: List[str]) -> Tuple[List[str], List[str]]:
  """`(arguments to parse, flag names whose value is not to be parsed)`.

  With `...` in the command every flag's value is left unparsed."""
  elided = '...' in argv
  keep, names = [], []
  for arg in argv:
    if arg == '...':
      continue
    name, eq, value = arg.partition('=')
    if not arg.startswith('-'):
      if not is_placeholder(arg):
        keep.append(arg)  # a positional argument (`compress`)
    elif elided or (eq and is_placeholder(value)):
      names.append(name)
    else:
      keep.append(arg)
  return keep, names


def _check_absl(module: str, argv: List[str]) -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if not _check_absl.loaded:
    _run_until(module, app, 'run')  # defines the flags
    _check_absl.loaded = True
  values = flags.FLAGS
  if not argv:
    return
  keep, placeholders = _split(argv)
  for name in placeholders:
    key = name.lstrip('-')
    if key.startswith('config.'):
      continue  # checked against the config below
    if key not in values:
      raise ValueError(f'unknown flag {name}')
    if '...' not in argv and values[key].parser.flag_type() == 'string':
      # Any text is a string flag's value (a required `--workdir=<dir>`).
      keep.append(next(a for a in argv if a.startswith(name + '=')))
  if '...' in argv:
    return
  config_args = [a for a in keep if a.startswith('--config')]
  other = [a for a in keep if not a.startswith('--config.')]
  values.unparse_flags()
  values([module] + other)
  if 'config' in values and values['config'].value is not None:
    from pcavae import configlib  # pylint: disable=g-import-not-at-top
    fresh = flags.FlagValues()
    config_flags.DEFINE_config_file(
        'config', None, 'config', flag_values=fresh, lock_config=False,
        sys_argv=[module] + config_args)
    fresh([module] + config_args)
    config = fresh.config
    for name in placeholders:
      key = name.lstrip('-')
      if key.startswith('config.'):
        node = config
        for part in key.split('.')[1:]:
          node = node[part]  # KeyError names a key the config lacks
    path = config.dataset.get('path')
    if path and not os.path.exists(path):
      # The reader's own data (`/data/celeba_hq_256`): an empty folder
      # stands in for it, so that the rest of the config is validated.
      import tempfile  # pylint: disable=g-import-not-at-top
      config.dataset.path = tempfile.mkdtemp()
    configlib.validate(config)


_check_absl.loaded = False


def _run_until(module: str, owner, name: str, stop=None) -> None:
  """Runs `module` (a script path or a module name) as `__main__` until it
  calls `owner.<name>` (absl's `app.run`, argparse's `parse_args`), where
  `stop` (default: nothing) runs instead and the program ends."""
  import runpy  # pylint: disable=g-import-not-at-top
  original = getattr(owner, name)

  def stop_here(*args, **kwargs):
    if stop is not None:
      stop(original, *args, **kwargs)
    raise _Parsed()

  setattr(owner, name, stop_here)
  try:
    if module.endswith('.py'):
      # As `python script.py` does: the script's folder first on the path.
      sys.path.insert(0, os.path.dirname(os.path.abspath(module)))
      runpy.run_path(module, run_name='__main__')
    else:
      runpy.run_module(module, run_name='__main__', alter_sys=True)
  except _Parsed:
    return
  finally:
    setattr(owner, name, original)
  raise ValueError(f'{module} never reached {name}')


def _check_argparse(module: str, argv: List[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  keep, placeholders = _split(argv)

  def parse(original, parser, args=None, namespace=None):
    if not argv:
      return
    for name in placeholders:
      if name not in parser._option_string_actions:  # pylint: disable=protected-access
        parser.error(f'unrecognized arguments: {name}')
    if '...' not in argv:
      err = io.StringIO()
      try:
        with contextlib.redirect_stderr(err):
          original(parser, args, namespace)
      except SystemExit:
        raise ValueError(err.getvalue().strip().splitlines()[-1]) from None

  sys.argv = [module] + keep
  _run_until(module, argparse.ArgumentParser, 'parse_args', parse)


def _uses_argparse(module: str) -> bool:
  if module.endswith('.py'):
    path = module
  else:
    import importlib.util  # pylint: disable=g-import-not-at-top
    path = importlib.util.find_spec(module).origin
  with open(path) as f:
    return 'argparse.ArgumentParser' in f.read()


def main() -> None:
  module = sys.argv[1]
  check = _check_argparse if _uses_argparse(module) else _check_absl
  for argv in json.load(sys.stdin):
    try:
      check(module, argv)
      result = {'ok': True, 'error': ''}
    except SystemExit as e:
      result = {'ok': False, 'error': f'exit {e.code}'}
    except Exception as e:  # pylint: disable=broad-except
      result = {'ok': False, 'error': f'{type(e).__name__}: {e}'}
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
