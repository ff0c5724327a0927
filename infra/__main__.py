"""Pulumi entry point: the whole program is tradeplane_infra.program.main."""

from tradeplane_infra.program import main

main()
