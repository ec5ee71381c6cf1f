"""Write overlays/production/prometheusrule.yaml from deploy/prometheus/alerts.yml (the one
source of the alert rules); tests/test_deploy.py fails when the two differ.

    python deploy/kubernetes/sync_rules.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
TARGET = HERE / "overlays" / "production" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yml by deploy/kubernetes/sync_rules.py:\n"
    "# edit the rules there, then rerun it.\n"
)


def rule_object() -> dict[str, object]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "chronoq"},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the rules' expressions) as ``|`` blocks, as in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    return HEADER + yaml.dump(rule_object(), Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    TARGET.write_text(render())
