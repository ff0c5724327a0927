"""Pulumi components that provision trading clusters and install tradeplane."""
