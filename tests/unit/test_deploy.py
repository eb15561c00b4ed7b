"""deploy/ and docker-compose.yml: the alert rules pass promtool (check + unit tests), the
Prometheus config loads them, the Grafana dashboard and the alerts use only gpufleet's own
metrics, the KEDA ScaledObject watches the ingress lists that the key schema names, and the
compose file passes `docker compose config` where a compose client exists.

promtool (Debian package `prometheus`, installed by .ci/run) is optional here and required in
CI: without it these tests skip locally and fail when CI is set, as the redis-server ones do.
No Docker engine is needed: `docker compose config` only reads files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet.dispatcher.store.keys import Keys

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "gpufleet-dashboard.json"
SCALED_OBJECT = REPO / "deploy" / "keda" / "scaledobject.yaml"
WORKER_DEPLOYMENT = REPO / "deploy" / "kubernetes" / "worker-deployment.yaml"
COMPOSE = REPO / "docker-compose.yml"

# The metrics gpufleet exports (issue 5), and the series Prometheus derives from them.
COUNTERS = {"gpufleet_jobs_dispatched_total", "gpufleet_jobs_finished_total"}
GAUGES = {
    "gpufleet_ingress_jobs",
    "gpufleet_node_queue_jobs",
    "gpufleet_node_gpu_utilization_ratio",
    "gpufleet_node_memory_utilization_ratio",
    "gpufleet_nodes",
    "gpufleet_desired_nodes",
}
HISTOGRAMS = {"gpufleet_job_duration_seconds", "gpufleet_dispatch_seconds"}
SERIES = COUNTERS | GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
ALLOWED = SERIES | {"up"}

ALERTS = ("NodeDown", "NoLiveNodes", "BacklogGrowing", "HighFailureRate", "DispatcherDown", "GpuMemoryNearFull")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan"}  # fmt: skip


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs promtool (Debian package prometheus; .ci/run installs it)")
        pytest.skip("no promtool on PATH (apt-get install prometheus)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def uncommented(path: Path) -> str:
    """A YAML file's text without its comment lines."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana variables allowed in it)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?([smhdwy]|ms)?\b", "", e)  # numbers and durations
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group() in PROMQL_WORDS:
            continue  # a function, an aggregation or an operator word
        names.add(m.group())
    return names


def test_metric_names_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, node) (rate(gpufleet_job_duration_seconds_bucket'
        '{node=~"$node"}[$__rate_interval]))) / on() group_left up{job="x"} > bool 1e3 or foo offset 5m'
    )
    assert metric_names(expr) == {"gpufleet_job_duration_seconds_bucket", "up", "foo"}


# --- Prometheus: alert rules and config ---------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    proc = run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")
    assert_ok(proc)
    assert f"{len(ALERTS)} rules found" in proc.stdout + proc.stderr


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    assert_ok(run(promtool, "test", "rules", "deploy/prometheus/alerts_test.yml"))


def test_alert_rules_name_the_issue_alerts_and_only_gpufleet_metrics() -> None:
    text = uncommented(PROMETHEUS / "alerts.yml")
    assert re.findall(r"^\s*- alert: (\w+)\s*$", text, re.M) == list(ALERTS)
    assert len(re.findall(r"^\s*severity: (critical|warning)\s*$", text, re.M)) == len(ALERTS)
    assert len(re.findall(r"^\s*summary:", text, re.M)) == len(ALERTS)
    assert len(re.findall(r"^\s*description:", text, re.M)) == len(ALERTS)
    used = set(re.findall(r"\bgpufleet_[a-z_]+", text))
    assert used <= SERIES, f"alerts.yml reads unknown metrics: {sorted(used - SERIES)}"
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    for alert in ("NodeDown", "BacklogGrowing"):
        assert re.search(rf"alertname: {alert}\s+exp_alerts: \[\]", tests), f"{alert}: no quiet case"
        assert re.search(rf"alertname: {alert}\s+exp_alerts:\s+- exp_labels", tests), f"{alert}: no firing case"


def test_prometheus_config_loads_the_rules(promtool: str) -> None:
    proc = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert_ok(proc)
    assert "alerts.yml" in proc.stdout + proc.stderr  # the rule file was found and checked


def test_prometheus_scrapes_the_compose_services() -> None:
    config = (PROMETHEUS / "prometheus.yml").read_text()
    compose = COMPOSE.read_text()
    for job, service, port in (("gpufleet-dispatcher", "dispatcher", 9120), ("gpufleet-worker", "worker", 9121)):
        assert re.search(rf"job_name: {job}\s+static_configs:\s+- targets: \[\"{service}:{port}\"\]", config)
        command = re.search(rf"^  {service}:\n(?:    .*\n|\n)*?    command: (.*)$", compose, re.M)
        assert command and f'"--metrics-port", "{port}"' in command.group(1), service


# --- docker-compose.yml --------------------------------------------------------------------


def compose_client() -> list[str] | None:
    """`docker compose` (the v2 plugin), else a standalone v2 `docker-compose`; None without."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        try:
            proc = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        if proc.returncode == 0 and re.search(r"\bv?2\.\d+", proc.stdout):
            return argv
    return None


def test_compose_file_passes_docker_compose_config() -> None:
    argv = compose_client()
    if argv is None:
        pytest.skip("no Docker Compose v2 client (docker compose / docker-compose)")
    assert_ok(run(*argv, "-f", str(COMPOSE), "config", "-q"))


def test_compose_file_has_the_fleet() -> None:
    """What the issue asks of the compose file, checked as text (no YAML parser is a dependency)."""
    text = COMPOSE.read_text()
    for service in ("redis", "dispatcher", "worker", "prometheus"):
        assert re.search(rf"^  {service}:$", text, re.M), service
    assert '"--appendonly", "yes"' in text
    assert 'test: ["CMD", "redis-cli", "ping"]' in text
    assert re.search(r"devices:\s+- driver: nvidia\s+count: 1\s+capabilities: \[gpu\]", text)
    assert text.count("GPUFLEET_REDIS_URL: redis://redis:6379/0") >= 2  # the shared block + the worker's
    assert "./deploy/prometheus:/etc/prometheus" in text
    assert (REPO / "deploy" / "docker" / "Dockerfile").read_text().startswith("# ")


# --- Grafana -------------------------------------------------------------------------------


def dashboard_targets(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    found = []
    stack = list(dashboard["panels"])  # type: ignore[call-overload]
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def test_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables.values())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys() and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"


def test_dashboard_reads_only_gpufleet_metrics_and_known_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    queries = dashboard_targets(dashboard) + [
        (f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    used: set[str] = set()
    for title, expr in queries:
        names = metric_names(expr.removeprefix("label_values(").rsplit(",", 1)[0] if expr.startswith("label_values(")
                             else expr)  # fmt: skip
        assert names, f"{title}: {expr!r} reads no metric"
        assert names <= ALLOWED, f"{title}: unknown metrics {sorted(names - ALLOWED)} in {expr!r}"
        unknown = set(re.findall(r"\$\{?(\w+)", expr)) - variables
        assert not unknown, f"{title}: undefined variables {sorted(unknown)}"
        used |= names
    missing = {m for m in COUNTERS | GAUGES if m not in used} | {h for h in HISTOGRAMS if f"{h}_bucket" not in used}
    assert not missing, f"no panel shows {sorted(missing)}"
    quantiles = [e for _, e in queries if "histogram_quantile" in e]
    assert any("gpufleet_job_duration_seconds_bucket" in e for e in quantiles)
    assert any(e.startswith("histogram_quantile(0.99, ") and "gpufleet_dispatch_seconds_bucket" in e for e in quantiles)


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, with Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_targets(dashboard)):
        filled = expr.replace("$__rate_interval", "1m").replace("$node", ".*")
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(filled)}"]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    assert_ok(run(promtool, "check", "rules", str(rules)))


# --- KEDA and Kubernetes -------------------------------------------------------------------


def documents(path: Path) -> list[str]:
    """The YAML documents of a file, comment lines dropped."""
    return [doc for doc in re.split(r"^---\s*$", uncommented(path), flags=re.M) if doc.strip()]


def field(doc: str, name: str) -> list[str]:
    """Every scalar value of `name:` in a YAML text, trailing comments and quotes dropped."""
    values = re.findall(rf"^\s*(?:- )?{name}:\s*(\S.*)$", doc, re.M)
    return [re.sub(r"\s+#.*$", "", v).strip().strip("\"'") for v in values]


def test_keda_scales_the_worker_deployment_on_the_ingress_lists() -> None:
    docs = {field(d, "kind")[0]: d for d in documents(SCALED_OBJECT)}
    assert set(docs) == {"ScaledObject", "TriggerAuthentication"}
    scaled = docs["ScaledObject"]
    assert field(scaled, "apiVersion")[0] == "keda.sh/v1alpha1"
    deployment = documents(WORKER_DEPLOYMENT)[0]
    assert field(deployment, "kind") == ["Deployment"]
    worker = field(deployment, "name")[0]
    assert worker == "gpufleet-worker"
    target = re.search(r"scaleTargetRef:\s+apiVersion: apps/v1\s+kind: Deployment\s+name: (\S+)", scaled)
    assert target and target.group(1) == worker
    low, high = int(field(scaled, "minReplicaCount")[0]), int(field(scaled, "maxReplicaCount")[0])
    assert 0 <= low <= high
    keys = Keys()  # the default namespace, as the ScaledObject assumes
    lists = set(field(scaled, "listName"))
    assert lists == {keys.rq_queue(keys.ingress_queue(p)) for p in ("high", "normal")}
    assert field(scaled.split("triggers:")[1], "type") == ["redis"] * len(lists)
    assert all(int(n) > 0 for n in field(scaled, "listLength"))
    auth = field(docs["TriggerAuthentication"], "name")[0]
    assert set(re.findall(r"authenticationRef:\s+name: (\S+)", scaled)) == {auth}
    assert re.search(r"limits:\s+nvidia\.com/gpu: 1\b", deployment)
    assert '"--metrics-port", "9121"' in deployment


def test_keda_and_kubernetes_files_parse_as_yaml() -> None:
    yaml = pytest.importorskip("yaml")  # not a dependency; the text checks above stand without it
    for path in (SCALED_OBJECT, WORKER_DEPLOYMENT, COMPOSE, PROMETHEUS / "alerts.yml", PROMETHEUS / "prometheus.yml"):
        assert [d for d in yaml.safe_load_all(path.read_text()) if d], path
