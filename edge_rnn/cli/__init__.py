"""The ``edge-rnn`` command line. Thin: heavy imports happen inside the command that needs them.

One module per group of commands; importing them registers them on :data:`main`.
"""

from edge_rnn.cli import _deploy, _diagnose, _export, _lift, _run, _serve  # noqa: F401, E402 - registers the commands
from edge_rnn.cli._common import main

__all__ = ["main"]
