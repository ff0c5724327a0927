"""Generate the TradingService CRD from the pydantic models: a structural OpenAPI v3 schema plus CEL.

`python -m tradeplane.crd` rewrites `crds/tradingservice.yaml` and the chart's copy, and first
`tradeplane/names.py`: the IANA timezones (the tzdata package's list) and exchange calendars
(exchange-calendars, aliases included) the models and the CRD's CEL rules accept. Tests fail when any of
the committed files is stale.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tradeplane import api, names

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMES_PATH = Path(__file__).with_name("names.py")
CRD_PATHS = (
    REPO_ROOT / "crds" / "tradingservice.yaml",
    REPO_ROOT / "charts" / "tradeplane" / "crds" / "tradingservice.yaml",
)
_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, fold Optional into the inner type, and keep only what Kubernetes accepts."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        variants = [variant for variant in node["anyOf"] if variant.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "absent") is None:
            del rest["default"]
        return _structural({**variants[0], **rest}, defs)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "additionalProperties" and isinstance(value, dict) and "type" in value:
            result[key] = _structural(value, defs)  # a typed map (labels), not extra=forbid's false
            continue
        if key in _DROPPED_KEYS:
            continue
        if key == "const":
            result["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema's numeric form (pydantic's gt/lt); Kubernetes takes the OpenAPI v3.0 one.
            result["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            result[key] = True
        elif key == "properties":
            result[key] = {name: _structural(child, defs) for name, child in value.items()}
        else:
            result[key] = _structural(value, defs)
    if result.get("type") == "object" and "properties" not in result and "additionalProperties" not in result:
        result["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in result and "type" not in result:
        result["type"] = "string"
    return result


def _with_object_defaults(schema: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Give nested objects built by default_factory a `default: {}` so the API server fills them in."""
    for name, field in model.model_fields.items():
        prop = schema.get("properties", {}).get(name)
        if prop is None or field.default_factory is None:
            continue
        produced = field.default_factory()  # type: ignore[call-arg]
        if isinstance(produced, BaseModel):
            prop["default"] = {}
        elif isinstance(produced, list) and produced and isinstance(produced[0], BaseModel):
            prop["default"] = [item.model_dump(exclude_none=True) for item in produced]
        elif isinstance(produced, list | dict):
            prop["default"] = produced
    for name, field in model.model_fields.items():
        annotation = field.annotation
        prop = schema.get("properties", {}).get(name)
        for candidate in getattr(annotation, "__args__", (annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and prop is not None:
                _with_object_defaults(prop, candidate)
            if getattr(candidate, "__origin__", None) is list and prop is not None:
                item = getattr(candidate, "__args__", (None,))[0]
                if isinstance(item, type) and issubclass(item, BaseModel):
                    _with_object_defaults(prop["items"], item)
    return schema


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation")
    return _with_object_defaults(_structural(raw, raw.get("$defs", {})), model)


def crd() -> dict[str, Any]:
    spec_schema = openapi_schema(api.TradingServiceSpec)
    status_schema = openapi_schema(api.TradingServiceStatus)
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    columns = [
        ("Component", "string", ".spec.component", 0),
        ("Phase", "string", ".status.phase", 0),
        ("Ready", "integer", ".status.readyReplicas", 0),
        ("Stable", "string", ".status.stableRevision", 0),
        ("Canary", "integer", ".status.weight", 0),
        ("P99us", "number", ".status.lastAnalysis.p99Micros", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Canary-Rev", "string", ".status.canaryRevision", 1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["tradeplane"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": name, "type": kind, "jsonPath": path, "priority": priority}
                        for name, kind, path, priority in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A latency-critical trading service placed on pinned cores.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "x-kubernetes-validations": [
                                rule.validation() for rule in api.TradingService.rules
                            ],
                        }
                    },
                }
            ],
        },
    }


def render_yaml() -> str:
    header = "# Generated by `python -m tradeplane.crd` from tradeplane/api.py; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def render_names() -> str:
    """tradeplane/names.py from the installed tzdata and exchange-calendars."""
    import importlib.metadata
    import importlib.resources

    import exchange_calendars

    timezones = sorted(importlib.resources.files("tzdata").joinpath("zones").read_text().split())
    calendars = sorted(exchange_calendars.get_calendar_names(include_aliases=True))
    tzdata, calendars_version = (importlib.metadata.version(p) for p in ("tzdata", "exchange-calendars"))
    lines = [
        f'"""Names a freeze window may use: tzdata {tzdata}, exchange-calendars {calendars_version}.',
        "",
        "Generated by `python -m tradeplane.crd`; do not edit. Kept as data so that the models and the CRD's",
        "CEL rules check them without importing either library (exchange-calendars costs 0.7 s to import).",
        '"""',
        "",
    ]
    for name, values in (("TIMEZONES", timezones), ("CALENDARS", calendars)):
        lines += [f"{name} = (", *(f'    "{value}",' for value in values), ")"]
    return "\n".join(lines) + "\n"


def main() -> int:
    NAMES_PATH.write_text(render_names())
    print(f"wrote {NAMES_PATH.relative_to(REPO_ROOT)}", file=sys.stderr)
    # The CRD embeds the names: render it from a fresh import of what was just written.
    importlib.reload(names)
    importlib.reload(api)
    text = render_yaml()
    for path in CRD_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
