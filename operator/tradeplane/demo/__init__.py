"""`tradeplane demo`: the bundled stack on the local control plane, a rollback and a promotion on screen."""

from tradeplane.demo.story import register

__all__ = ["register"]
