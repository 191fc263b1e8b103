"""``python -m edge_rnn.cli``."""

from edge_rnn.cli import main

main()
