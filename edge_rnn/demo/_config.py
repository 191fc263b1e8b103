"""The demo's configuration as ``edge-rnn diagnose --demo`` runs it (one place, so a test can make it small)."""

from __future__ import annotations

from edge_rnn.demo._run import DemoConfig

__all__ = ["demo_config"]


def demo_config() -> DemoConfig:
    """The configuration the docs' table and figure were measured with."""
    return DemoConfig()
