"""Metric names in PromQL expressions, and in Prometheus text output, for dashboard tests."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min",
    "clamp_max", "abs", "ceil", "floor", "round", "label_values", "le", "inf", "nan", "bool",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (labels, ranges, functions and numbers removed)."""
    text = _STRING.sub("", expr)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENT.findall(text) if name.lower() not in PROMQL_WORDS}


def sample_names(exposition: str) -> set[str]:
    """Every sample name in a /metrics page (`x_total`, `x_bucket`, `x_count`, ...)."""
    return {
        sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples
    }
