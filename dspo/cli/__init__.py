"""The ``dspo`` command: its sub-commands and how they are declared.

- `dspo.cli.registry`: the ``@command`` decorator and the one argument parser built from it;
- `dspo.cli.commands`: the workflow steps' sub-commands and ``main``;
- `dspo.cli.report`: the report stage's sub-commands and the tools;
- `dspo.cli.fetch`: the download step's sub-commands.

``main`` (the console script ``dspo``) is re-exported here.
"""

from dspo.cli.commands import main

__all__ = ["main"]
