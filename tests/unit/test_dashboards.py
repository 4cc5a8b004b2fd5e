"""deploy/grafana/crewflow-dashboard.json and deploy/prometheus/{alerts,prometheus}.yml against what crewflow
really exports.

Every metric a dashboard query or an alert names must be one that ``PrometheusMetrics`` (the adapter over
the table ``crewflow.ports.metrics.METRICS``) registers, with the suffixes Prometheus gives it (counters
``_total``, histograms ``_bucket``/``_sum``/``_count``); every label a selector or a ``by`` names must be
one of that metric's labels (or a target label); and label values that crewflow emits from a closed set
(LLM call outcomes, run statuses, cache results, token directions) must be values it emits.

The PromQL is read by a small scanner in this file (metric names, matchers, ``by``/``without`` groups).
Where ``promtool`` is installed (Debian's ``prometheus`` package), the rules and every dashboard query are
also parsed by Prometheus itself, and the alert unit tests in deploy/prometheus/alerts.test.yml run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crewflow.adapters.metrics.events import _STATUS as RUN_STATUSES
from crewflow.adapters.metrics.prometheus import PrometheusMetrics
from crewflow.domain.failover import ErrorKind
from crewflow.ports.metrics import METRICS, MetricKind

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "crewflow-dashboard.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GATEWAY = ROOT / "src" / "crewflow" / "application" / "gateway.py"

TARGET_LABELS = {"job", "instance", "namespace", "pod"}  # added by the scrape (deploy/prometheus/prometheus.yml)
PROMETHEUS_OWN = {"up"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}  # fmt: skip
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile"}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": "crewflow-.*"}
REQUIRED_ON_DASHBOARD = {"http_requests_total", "http_request_duration_seconds", "flow_executions_total",
                         "llm_api_calls_total", "llm_tokens_total", "docker_containers_active",
                         "cache_hits_total"}  # fmt: skip


# --- what crewflow exports ---------------------------------------------------------------------------------------


def exported_series() -> dict[str, str]:
    """Each series name a scrape of crewflow shows → the METRICS entry it comes from, read from the
    registry ``PrometheusMetrics`` builds."""
    names: dict[str, str] = {}
    for family in PrometheusMetrics().registry.collect():
        if family.type == "counter":
            names[family.name + "_total"] = family.name + "_total"
        elif family.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[family.name + suffix] = family.name
        else:
            names[family.name] = family.name
    return names


EXPORTED = exported_series()


def _closed_label_values() -> dict[tuple[str, str], set[str]]:
    gateway = GATEWAY.read_text()
    llm_status = {kind.value for kind in ErrorKind} | set(re.findall(r'"status": "(\w+)"', gateway))
    directions = set(re.findall(r'"direction": "(\w+)"', gateway))
    assert "success" in llm_status and directions == {"input", "output"}
    assert '"hit" if cached else "miss"' in gateway
    return {
        ("llm_api_calls_total", "status"): llm_status,
        ("llm_tokens_total", "direction"): directions,
        ("cache_hits_total", "result"): {"hit", "miss"},
        ("flow_executions_total", "status"): set(RUN_STATUSES.values()),
        ("flow_execution_duration_seconds", "status"): set(RUN_STATUSES.values()),
    }


CLOSED_VALUES = _closed_label_values()


# --- a PromQL scanner --------------------------------------------------------------------------------------------


Selector = tuple[str, list[tuple[str, str, str]]]  # metric, [(label, op, value)]


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while expr[i] != quote:
        i += 2 if expr[i] == "\\" else 1
    return i + 1


def _skip_group(expr: str, i: int, open_: str, close: str) -> int:
    depth = 0
    while True:
        if expr[i] in "\"'":
            i = _skip_string(expr, i)
            continue
        if expr[i] == open_:
            depth += 1
        elif expr[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def scan(expr: str) -> tuple[list[Selector], list[str]]:
    """The metric selectors of ``expr`` and the label names of its by/without/on/ignoring groups."""
    selectors: list[Selector] = []
    grouped: list[str] = []
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'":
            i = _skip_string(expr, i)
        elif char == "[":
            i = _skip_group(expr, i, "[", "]")
        elif char == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        elif char.isdigit() or (char == "." and expr[i + 1 : i + 2].isdigit()):
            i += 1
            while i < len(expr) and (expr[i].isalnum() or (expr[i] in "._+-" and expr[i - 1] in "eE")):
                i += 1
        elif char.isalpha() or char in "_:":
            j = i
            while j < len(expr) and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            word = expr[i:j]
            k = j
            while k < len(expr) and expr[k].isspace():
                k += 1
            nxt = expr[k] if k < len(expr) else ""
            if word in GROUPING:
                if nxt == "(":
                    end = _skip_group(expr, k, "(", ")")
                    grouped += [g.strip() for g in expr[k + 1 : end - 1].split(",") if g.strip()]
                    i = end
                else:
                    i = j
            elif word.lower() in KEYWORDS or word in AGGREGATIONS or nxt == "(":
                i = j  # an operator, or a function or aggregation: its arguments are scanned next
            elif nxt == "{":
                end = _skip_group(expr, k, "{", "}")
                selectors.append((word, MATCHER.findall(expr[k + 1 : end - 1])))
                i = end
            else:
                selectors.append((word, []))
                i = j
        else:
            i += 1
    return selectors, grouped


def test_the_scanner_finds_metrics_matchers_and_groups_and_nothing_else():
    selectors, grouped = scan(
        'histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket{route!~".*/ws/.*",'
        ' job=~"a|b"}[5m]))) > 1 and on (route) sum without(method) (rate(http_requests_total[$__rate_interval]))'
        " > 1e-3 or vector(0) unless absent(up == 1)"
    )
    assert selectors == [
        ("http_request_duration_seconds_bucket", [("route", "!~", ".*/ws/.*"), ("job", "=~", "a|b")]),
        ("http_requests_total", []),
        ("up", []),
    ]
    assert grouped == ["le", "route", "route", "method"]
    assert scan('sum(rate(x_total{a="}{ [5m]"}[1h] offset 5m))') == ([("x_total", [("a", "=", "}{ [5m]")])], [])


# --- the checks shared by dashboards and alerts ------------------------------------------------------------------


def check_expr(expr: str, where: str) -> set[str]:
    """Fail unless ``expr`` names exported metrics, their labels and values crewflow emits; the METRICS
    entries it uses."""
    selectors, grouped = scan(expr)
    assert selectors, f"{where}: no metric in {expr!r}"
    used: set[str] = set()
    labels_in_expr = set(TARGET_LABELS)
    for name, matchers in selectors:
        if name in PROMETHEUS_OWN:
            assert {label for label, _, _ in matchers} <= TARGET_LABELS, f"{where}: {name}{matchers}"
            continue
        assert name in EXPORTED, f"{where}: {name} is not a metric crewflow exports"
        base = EXPORTED[name]
        used.add(base)
        spec = METRICS[base]
        allowed = set(spec.labels) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        labels_in_expr |= allowed
        for label, op, value in matchers:
            assert label in allowed, f"{where}: {name} has no label {label!r} (it has {sorted(spec.labels)})"
            domain = CLOSED_VALUES.get((base, label))
            if domain is None:
                continue
            if op in {"=", "!="}:
                assert value in domain, f"{where}: {name}{{{label}{op}{value!r}}}: crewflow emits {sorted(domain)}"
            else:
                assert any(re.fullmatch(value, v) for v in domain), f"{where}: {label}{op}{value!r} matches nothing"
        if spec.kind == MetricKind.COUNTER:
            calls = len(re.findall(rf"\b(?:rate|increase|irate)\(\s*{name}\b", expr))
            assert calls == len(re.findall(rf"\b{name}\b", expr)), f"{where}: {name} is a counter: rate() it"
        if name.endswith("_bucket"):
            assert "histogram_quantile(" in expr and "le" in grouped, f"{where}: {name} outside a quantile by le"
    for label in grouped:
        assert label in labels_in_expr, f"{where}: grouping by {label!r}, which no metric here has"
    return used


def test_check_expr_catches_wrong_names_labels_and_values():
    assert check_expr('sum by (provider) (rate(llm_api_calls_total{status!="success"}[5m]))', "ok") == {
        "llm_api_calls_total"
    }
    with pytest.raises(AssertionError, match="not a metric crewflow exports"):
        check_expr("rate(llm_calls_total[5m])", "x")
    with pytest.raises(AssertionError, match="has no label"):
        check_expr('rate(llm_api_calls_total{model="gpt"}[5m])', "x")
    with pytest.raises(AssertionError, match="crewflow emits"):
        check_expr('rate(llm_api_calls_total{status="ok"}[5m])', "x")
    with pytest.raises(AssertionError, match="rate"):
        check_expr("sum(http_requests_total)", "x")
    with pytest.raises(AssertionError, match="grouping by"):
        check_expr("sum by (tenant) (rate(http_requests_total[5m]))", "x")
    with pytest.raises(AssertionError, match="quantile"):
        check_expr("sum(rate(http_request_duration_seconds_bucket[5m]))", "x")


# --- the dashboard -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])  # collapsed rows hold their panels
    return panels


def _grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"panel {p['title']!r}", t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


def test_every_dashboard_query_uses_exported_metrics_labels_and_values(dashboard):
    used: set[str] = set()
    for where, expr in _dashboard_exprs(dashboard):
        used |= check_expr(_grafana_to_promql(expr), where)
    missing = {EXPORTED.get(n, n) for n in REQUIRED_ON_DASHBOARD} - used
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_the_dashboard_shows_the_failover_rate_tokens_and_cache_hit_ratio(dashboard):
    exprs = [expr for _, expr in _dashboard_exprs(dashboard)]
    assert any("llm_api_calls_total" in e and 'status!="success"' in e and "/" in e for e in exprs)
    assert any("llm_tokens_total" in e and "direction" in e for e in exprs)
    assert any("cache_hits_total" in e and 'result="hit"' in e and "/" in e for e in exprs)
    assert any("http_requests_total" in e and 'status=~"5.."' in e and "by (route)" in e for e in exprs)
    assert any("histogram_quantile(0.95" in e and "http_request_duration_seconds_bucket" in e for e in exprs)
    assert any("flow_executions_total" in e and "by (status)" in e for e in exprs)


def test_the_dashboard_is_a_well_formed_importable_grafana_dashboard(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for other in boxes:
            overlap_x = grid["x"] < other["x"] + other["w"] and other["x"] < grid["x"] + grid["w"]
            overlap_y = grid["y"] < other["y"] + other["h"] and other["y"] < grid["y"] + grid["h"]
            assert not (overlap_x and overlap_y), f"{panel['title']} overlaps another panel"
        boxes.append(grid)
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


# --- the alerts --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    assert set(data) == {"groups"}
    names = [g["name"] for g in data["groups"]]
    assert len(names) == len(set(names))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_every_alert_is_complete_and_uses_exported_metrics(rules):
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert re.fullmatch(r"Crewflow[A-Z][A-Za-z0-9]+", rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        check_expr(rule["expr"], f"alert {rule['alert']}")


def test_the_alerts_cover_errors_latency_failover_stuck_runs_and_dead_workers(rules):
    by_name = {r["alert"]: r["expr"] for r in rules}
    assert 'status=~"5.."' in by_name["CrewflowHighErrorRate"]
    assert "histogram_quantile(0.95" in by_name["CrewflowHighLatencyP95"]
    assert 'llm_api_calls_total{status!="success"}' in by_name["CrewflowLLMFailoverRateHigh"]
    assert "queue_jobs_in_progress" in by_name["CrewflowExecutionsStuck"]
    assert "flow_executions_total" in by_name["CrewflowExecutionsStuck"]
    jobs = set(re.findall(r'job="([\w-]+)"', "\n".join(by_name.values())))
    assert 'up{job="crewflow-worker"} == 0' in by_name["CrewflowWorkerDown"]
    assert jobs == {"crewflow-api", "crewflow-worker"}


def test_every_alert_has_a_unit_test_that_makes_it_fire(rules):
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {r["alert"] for r in rules} <= fired


def test_the_scrape_configuration_names_the_jobs_the_alerts_use_and_finds_the_pods(rules):
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"crewflow-api", "crewflow-worker"}
    for name, job in jobs.items():
        component = name.removeprefix("crewflow-")
        manifest = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / f"{component}.yaml").read_text())
        deployment = next(d for d in manifest if d["kind"] == "Deployment")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        (selector,) = job["kubernetes_sd_configs"][0]["selectors"]
        wanted = dict(pair.split("=") for pair in selector["label"].split(","))
        assert wanted.items() <= pod_labels.items(), name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        keep = job["relabel_configs"][0]
        assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
        assert keep["action"] == "keep" and re.fullmatch(keep["regex"], annotations["prometheus.io/scrape"])
        address = next(r for r in job["relabel_configs"] if r.get("target_label") == "__address__")
        joined = f"10.0.0.7:1234;{annotations['prometheus.io/port']}"
        assert re.fullmatch(address["regex"], joined)
        assert re.sub(address["regex"], address["replacement"].replace("$", "\\"), joined) == (
            f"10.0.0.7:{annotations['prometheus.io/port']}"
        )


# --- Prometheus's own checks -------------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    checked = _promtool("check", "rules", ALERTS.name, cwd=PROMETHEUS_DIR)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", ALERT_TESTS.name, cwd=PROMETHEUS_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_prometheus_parses_every_dashboard_query(dashboard, tmp_path):
    exprs = [_grafana_to_promql(expr) for _, expr in _dashboard_exprs(dashboard)]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"crewflow:dashboard_query_{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "broken.yml").write_text(yaml.safe_dump({"groups": [{"name": "b", "rules": [
        {"record": "crewflow:broken", "expr": "sum(rate(http_requests_total[5m])"}]}]}))  # fmt: skip
    assert _promtool("check", "rules", "broken.yml", cwd=tmp_path).returncode != 0
