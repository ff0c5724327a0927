"""The five bundled trading services."""
