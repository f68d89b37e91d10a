"""Generators of bundled tasks with checkable answers (``python -m alignkit.plugins.tasks.<name> --help``)."""
