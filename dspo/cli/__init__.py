"""The ``dspo`` command: its sub-commands and how they are declared.

- `dspo.cli.registry`: the ``@command`` decorator and the one argument parser built from it;
- `dspo.cli.commands`: ``main``, which registers every module's commands and runs one, and
  ``console``, the console script, which runs it in a process of its own;
- `dspo.cli.fetch`: the download step's sub-commands;
- `dspo.cli.generated`: the generated pair source's sub-commands;
- `dspo.cli.data`: the data and cache stages' sub-commands (pair tables, prompt sets, cache);
- `dspo.cli.training`: the train stage's sub-commands;
- `dspo.cli.images`: ``generate`` and ``score``;
- `dspo.cli.quality`: ``quality`` (Inception Score and FID);
- `dspo.cli.report`: the report stage's sub-commands and the tools.

``main`` and ``console`` (the console script ``dspo``) are re-exported here.
"""

from dspo.cli.commands import console, main

__all__ = ["console", "main"]
