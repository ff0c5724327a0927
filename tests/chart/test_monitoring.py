"""The chart's monitoring: alert rules run through Prometheus' own rule engine (promtool), the dashboard's
queries are valid PromQL, and every metric they read is one the operator or the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from chart.chartkit import MODES, Helm, Manifest, one

from tradeplane import measurement, metrics

OPERATOR = "tradeplane-system/tp-tradeplane"
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$namespace": ".*",
    "$service": ".*",
    "$metricsService": ".*",
}
# Sample names each metric type exposes, after the family name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(scope="module")
def manifests(helm: Helm) -> list[Manifest]:
    return helm.manifests(MODES["monitoring"])


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/bootstrap installs Debian's prometheus package"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60)


def dashboard_queries(manifests: list[Manifest]) -> list[str]:
    configmap = one(manifests, "ConfigMap", "tp-tradeplane-dashboard")
    dashboard = json.loads(configmap["data"]["tradeplane.json"])
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels, "the dashboard has no panels"
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_alert_rules_are_valid_prometheus_rules(manifests: list[Manifest], tmp_path: Path) -> None:
    rule = one(manifests, "PrometheusRule")
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts == {"TradeplaneRolloutRolledBack", "TradeplaneOperatorDown", "TradeplaneReconcileErrors"}
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    selector = ", ".join(
        f'{key}="{value}"' for key, value in {"tradeplane_operator": OPERATOR, **labels}.items()
    )
    return {"series": f"{name}{{{selector}}}", "values": values}


def firing(name: str, labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    """An expected alert, with the text the person on call reads."""
    annotations = {"summary": summary, "description": description}
    return {"alertname": name, "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]}


def test_alerts_fire_when_they_should(manifests: list[Manifest], tmp_path: Path) -> None:
    """Unit tests of the rules in Prometheus' rule engine, over minute-spaced synthetic series."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(manifests, "PrometheusRule")["spec"]))
    operator = {"tradeplane_operator": OPERATOR}
    order = {"namespace": "trading", "name": "order", "reason": "p99"}
    # The first rollback creates the counter series at 1: increase() alone would never see it.
    rolled_back = series("tradeplane_rollbacks_total", order, "_ _ _ 1x14")
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [rolled_back],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "TradeplaneRolloutRolledBack", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        **firing(
                            "TradeplaneRolloutRolledBack",
                            {"severity": "warning", **order, **operator},
                            "TradingService trading/order rolled back its canary",
                            "The canary failed the p99 gate and was scaled to zero; the revision is not "
                            "retried until its pod template changes or tradeplane retry asks for it. kubectl "
                            "describe tradingservice -n trading order shows the value, threshold and sample "
                            "count.",
                        ),
                    },
                    # Ten minutes on, with no new rollback, it resolves.
                    {"eval_time": "16m", "alertname": "TradeplaneRolloutRolledBack", "exp_alerts": []},
                ],
            },
            {
                "interval": "1m",
                "input_series": [series("up", {"instance": "a"}, "1 1 0 0 0 0 0 0 0 0 0 0")],
                "alert_rule_test": [
                    # Down at 2m; the alert waits operatorDownFor (5m) before it fires.
                    {"eval_time": "5m", "alertname": "TradeplaneOperatorDown", "exp_alerts": []},
                    {
                        "eval_time": "8m",
                        **firing(
                            "TradeplaneOperatorDown",
                            {"severity": "critical", **operator},
                            "No tradeplane operator pod is up",
                            "No pod of tp-tradeplane in tradeplane-system has answered a scrape for 5m: "
                            "TradingServices are not reconciled and canaries are not analysed or rolled "
                            "back.",
                        ),
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [series("up", {"instance": "a"}, "1x30")],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "TradeplaneOperatorDown", "exp_alerts": []}
                ],
            },
            {
                "interval": "1m",
                # 6 errors a minute (0.1/s, above the 0.05/s default) for 30 minutes; 1 a minute elsewhere.
                "input_series": [
                    series("tradeplane_reconcile_errors_total", {"reason": "Conflict"}, "0+6x30"),
                    series("tradeplane_reconcile_errors_total", {"reason": "Timeout"}, "0+1x30"),
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "TradeplaneReconcileErrors", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        **firing(
                            "TradeplaneReconcileErrors",
                            {"severity": "warning", "reason": "Conflict", **operator},
                            "tradeplane reconciles fail: Conflict",
                            "0.10 reconcile errors per second with reason Conflict over the last 10 minutes; "
                            "the operator logs and the TradingServices' Events say which objects.",
                        ),
                    },
                ],
            },
        ],
    }
    suite = tmp_path / "tests.yaml"
    suite.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", suite)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(manifests: list[Manifest], tmp_path: Path) -> None:
    queries = dashboard_queries(manifests)
    assert all(OPERATOR in q for q in queries if "reconcile" in q or "up{" in q)
    pattern = re.compile("|".join(re.escape(v) for v in sorted(GRAFANA_VARIABLES, key=len, reverse=True)))
    recorded = [
        {
            "record": f"dashboard:query_{index}",
            "expr": pattern.sub(lambda m: GRAFANA_VARIABLES[m.group(0)], q),
        }
        for index, q in enumerate(queries)
    ]
    rules = tmp_path / "dashboard.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_scrapes_the_metrics_port(manifests: list[Manifest]) -> None:
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["relabelings"] == [{"targetLabel": "tradeplane_operator", "replacement": OPERATOR}]


def exported_metrics() -> set[str]:
    """Sample names of the operator's metrics, and of those the services export for the canary gate."""
    operator = [
        value
        for module in (metrics,)
        for value in vars(module).values()
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase)
    ]
    names = {
        family.name + suffix
        for metric in operator
        for family in metric.describe()
        for suffix in SUFFIXES[family.type]
    }
    services = {f"{measurement.LATENCY_METRIC}{suffix}" for suffix in SUFFIXES["histogram"]}
    return names | services | {measurement.REQUESTS_METRIC}


def test_rules_and_dashboard_read_only_metrics_that_exist(manifests: list[Manifest]) -> None:
    rules = json.dumps(one(manifests, "PrometheusRule")["spec"])
    used = set(re.findall(r"\btradeplane_[a-z0-9_]+", rules + " ".join(dashboard_queries(manifests))))
    used -= {"tradeplane_operator"}  # the ServiceMonitor's label, not a metric
    assert used, "no tradeplane metric is read"
    assert used <= exported_metrics(), f"no such metric: {sorted(used - exported_metrics())}"
