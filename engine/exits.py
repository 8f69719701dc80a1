"""The exit codes of every ``python -m engine`` command, defined once (the README and
docs/engine.md list them)."""

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments or spec
EXIT_BAD_FILE = EXIT_USAGE  # a file the user named (annotations, maps) is malformed: a usage error too
EXIT_SLIDE = 3
EXIT_MODEL = 4
EXIT_CANCELLED = 5
EXIT_WRITE = 6
EXIT_DIVERGED = 7
