"""Pulumi entry point: read and check the stack config, then declare everything (tradeplane_infra)."""

import pulumi

from tradeplane_infra.program import deploy
from tradeplane_infra.settings import NAMESPACE, ConfigError, parse_settings, read_config

try:
    settings = parse_settings(read_config(pulumi.Config(NAMESPACE).get))
except ConfigError as error:
    raise pulumi.RunError(f"invalid stack configuration:\n{error}") from None

for name, value in deploy(settings).items():
    pulumi.export(name, value)
