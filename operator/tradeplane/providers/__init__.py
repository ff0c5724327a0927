"""Metrics providers, one module each, chosen by `spec.rollout.analysis.provider`.

A provider implements `MetricsProvider` (measurement.py) and is built from the analysis settings by its
module's `from_analysis`. Adding one: a module here, its settings block in `api.Analysis` (a field named
after it) and its name in the `provider` field's choices, and one line in `FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tradeplane.api import Analysis
from tradeplane.measurement import MetricsProvider
from tradeplane.providers import prometheus, scrape

FACTORIES: dict[str, Callable[[Analysis], MetricsProvider]] = {
    "prometheus": prometheus.from_analysis,
    "scrape": scrape.from_analysis,
}


@dataclass
class Providers:
    """The providers of one operator process, one per provider and settings, kept for its life: the
    scrape provider remembers each pod's recent scrapes, the start of every window."""

    _instances: dict[tuple[str, str], MetricsProvider] = field(default_factory=dict)

    def for_analysis(self, analysis: Analysis) -> MetricsProvider:
        settings = getattr(analysis, analysis.provider)
        key = (analysis.provider, settings.model_dump_json() if settings is not None else "")
        if key not in self._instances:
            self._instances[key] = FACTORIES[analysis.provider](analysis)
        return self._instances[key]
