"""Config files, one per bottleneck family: `configs/<family>.py:get_config`.

Each is loaded by path (`--config=configs/<family>.py:arg`, or
`pcavae.configlib.load`) and imports its shared defaults as
`from configs import common`. The package is installed beside `pcavae`
(setup.cfg), so that import works from any directory, in console scripts
and in grain's worker processes, and no config file touches `sys.path`.
"""
