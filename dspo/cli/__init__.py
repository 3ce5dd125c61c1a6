"""The ``dspo`` command: its sub-commands and how they are declared."""
