"""The deployment for real: the images built from the Dockerfile and run with podman, the
shipped docker-compose.yml up with Prometheus scraping Vigil, the Grafana dashboard's
queries evaluated against that Prometheus, `stop` draining, `down` cleaning up.

Needs root, podman with runc, debootstrap and podman-compose (the dev extra); `./vigil.sh
test` installs the Debian packages. Without them these tests skip, and fail under
VIGIL_REQUIRE_DEPLOY_TOOLS=1. No image can be pulled here: deploy/base-image.sh makes local
stand-ins for python:3.11-slim and prom/prometheus (cached in podman's storage), and
deploy/test/compose.override.yml swaps them in. podman reads deploy/test/containers.conf
(runc, rlimits no higher than the host's) through CONTAINERS_CONF. Grafana has no image
here, so its dashboard is checked through the queries its panels would send.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_deploy import ALERTS, COMPOSE, ROOT, _missing, _tool

OVERRIDE = ROOT / "deploy" / "test" / "compose.override.yml"
CONTAINERS_CONF = ROOT / "deploy" / "test" / "containers.conf"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vigil.json"
ADAPTER = ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml"
SAMPLES = sorted((ROOT / "tests" / "data").glob("*.png"))
CPU_IMAGE = "localhost/vigil-test:cpu"
GPU_IMAGE = "localhost/vigil-test:gpu"
CPU_IMAGE_MAX_BYTES = 450e6  # 374 MB measured on the stand-in base
TOKEN = "test-admin-token"

# Building the base images and the GPU image cold takes minutes on 2 busy cores; every
# command has its own timeout (sh), this is the outer bound per test (fixtures included).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


# --------------------------------------------------------------------------- helpers


def sh(
    cmd: list[str], env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # In a process group of its own, so that a timeout (or pytest-timeout) ends the command
    # and what it started (debootstrap, podman build), not only its first process.
    with subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)  # podman cleans up on SIGTERM
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd)} exited {result.returncode}\n{out[-4000:]}\n{err[-4000:]}"
        )
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client(port: int) -> httpx.Client:
    # trust_env=False: no proxy for 127.0.0.1, whatever the environment says.
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)


def wait_for(what: str, check: Callable[[], bool], seconds: float) -> float:
    """Poll `check` until it holds; returns the seconds it took, fails after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if check():
                return time.monotonic() - start
        except (httpx.HTTPError, OSError):
            pass  # not listening yet
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {seconds} s")


def ready(port: int) -> bool:
    with client(port) as c:
        return c.get("/readyz").status_code == 200


def score_samples(c: httpx.Client, **params: float) -> dict[str, Any]:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in SAMPLES]
    response = c.post("/score", files=files, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert [r["filename"] for r in body["results"]] == [p.name for p in SAMPLES]
    return body


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """The environment podman and podman-compose run in; skips (or fails) without them."""
    if os.geteuid() != 0:
        _missing("root", "the container tests run rootful podman; run them as root")
    for tool, how in (
        ("podman", "apt-get install podman"),
        ("runc", "apt-get install runc"),
        ("debootstrap", "apt-get install debootstrap"),
    ):
        if shutil.which(tool) is None:
            _missing(tool, how)
    if _tool("podman-compose") is None:
        _missing("podman-compose", "pip install podman-compose (the dev extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "COMPOSE_"))}
    # BUILDAH_FORMAT=docker keeps the Dockerfile's HEALTHCHECK (the OCI format drops it).
    env.update(CONTAINERS_CONF=str(CONTAINERS_CONF), BUILDAH_FORMAT="docker")
    return env


@pytest.fixture(scope="session")
def base_images(podman_env: dict[str, str]) -> dict[str, str]:
    """Stand-ins for python:3.11-slim and prom/prometheus (built once, then cached)."""
    script = str(ROOT / "deploy" / "base-image.sh")
    return {
        kind: sh([script, kind], podman_env, timeout=900).stdout.strip()
        for kind in ("python", "prometheus")
    }


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, podman_env: dict[str, str]) -> Path:
    """A models folder as a user makes it: `vigil train` into models/default, usual umask.

    The container's user (uid 10001) reads it through a read-only bind mount, so the
    bundle folder must be readable by others: `vigil train` leaves it with the umask's mode.
    """
    models = tmp_path_factory.mktemp("containers") / "models"
    models.mkdir(mode=0o755)
    models.chmod(0o755)  # whatever the umask of this test process
    vigil = _tool("vigil")
    assert vigil, "the vigil console script is not installed"
    cmd = [vigil, "train", "--data", "fashion-mnist", "--normal-class", "0"]
    cmd += ["--max-images", "600", "--epochs", "3", "--head-steps", "20", "--no-report"]
    cmd += ["--out", str(models / "default")]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300, umask=0o022)
    for path in [models / "default", *(models / "default").iterdir()]:
        assert path.stat().st_mode & 0o004, f"{path} is not readable by the container's user"
    return models


def build(env: dict[str, str], base: str, tag: str, runtime: str, timeout: float) -> None:
    """Build the repository's Dockerfile on `base`; drop the image `tag` named before.

    Unchanged sources reuse every cached layer (seconds). Changed ones leave the previous
    image untagged: it is removed, so that repeated CI runs do not pile up GPU images.
    """
    before = sh(["podman", "image", "ls", "-q", "--no-trunc", tag], env).stdout.split()
    cmd = ["podman", "build", "--build-arg", f"BASE_IMAGE={base}"]
    cmd += ["--build-arg", f"RUNTIME={runtime}", "-t", tag, "-f", "Dockerfile", "."]
    sh(cmd, env, timeout=timeout)
    after = sh(["podman", "image", "ls", "-q", "--no-trunc", tag], env).stdout.split()
    for old in set(before) - set(after):
        sh(["podman", "rmi", old], env, check=False)  # kept if a container or tag uses it


@pytest.fixture(scope="session")
def cpu_image(podman_env: dict[str, str], base_images: dict[str, str]) -> str:
    build(podman_env, base_images["python"], CPU_IMAGE, "cpu", timeout=900)
    return CPU_IMAGE


@pytest.fixture(scope="session")
def gpu_image(podman_env: dict[str, str], base_images: dict[str, str]) -> str:
    """The GPU image: onnxruntime-gpu with CUDA/cuDNN wheels, on the same slim base."""
    build(podman_env, base_images["python"], GPU_IMAGE, "gpu", timeout=1800)
    return GPU_IMAGE


def inspect(env: dict[str, str], kind: str, name: str) -> Any:
    return json.loads(sh(["podman", kind, "inspect", name], env).stdout)[0]


@pytest.fixture
def run_container(
    podman_env: dict[str, str], models_dir: Path
) -> Iterator[Callable[..., tuple[str, int]]]:
    """Start a container as the README does (read-only root, tmpfs /tmp, models read-only)."""
    names: list[str] = []

    def start(image: str, *extra: str) -> tuple[str, int]:
        name, port = f"vigil-test-{os.getpid()}-{len(names)}", free_port()
        names.append(name)
        cmd = ["podman", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"]
        cmd += ["-p", f"127.0.0.1:{port}:8000", "-v", f"{models_dir}:/models:ro", *extra, image]
        sh(cmd, podman_env)
        return name, port

    yield start
    for name in names:
        sh(["podman", "rm", "-f", "-t", "0", name], podman_env, check=False)


# --------------------------------------------------------------------------- the CPU image


def test_cpu_image_is_small_non_root_and_holds_no_torch(
    cpu_image: str, podman_env: dict[str, str]
) -> None:
    image = inspect(podman_env, "image", cpu_image)
    print(f"{cpu_image}: {image['Size'] / 1e6:.0f} MB")
    assert image["Size"] < CPU_IMAGE_MAX_BYTES, f"{image['Size'] / 1e6:.0f} MB"
    assert image["Config"]["User"] == "10001:10001"
    assert "/readyz" in " ".join(image["Healthcheck"]["Test"])  # kept: docker format
    probe = "import importlib.util as u; print(bool(u.find_spec('torch')), bool(u.find_spec('onnxruntime')))"
    out = sh(["podman", "run", "--rm", cpu_image, "python", "-c", probe], podman_env).stdout
    assert out.split() == ["False", "True"]


def test_cpu_container_serves_as_non_root_on_a_read_only_root(
    cpu_image: str, run_container: Callable[..., tuple[str, int]], podman_env: dict[str, str]
) -> None:
    name, port = run_container(cpu_image)
    seconds = wait_for("/readyz 200", lambda: ready(port), 60)
    print(f"ready {seconds:.1f} s after start")
    with client(port) as c:
        body = score_samples(c)
        assert all(isinstance(r["is_anomaly"], bool) for r in body["results"])
        assert c.get("/model").json()["provider"] == "CPUExecutionProvider"
    assert sh(["podman", "exec", name, "id", "-u"], podman_env).stdout.strip() == "10001"
    assert inspect(podman_env, "container", name)["HostConfig"]["ReadonlyRootfs"] is True
    write = sh(["podman", "exec", name, "touch", "/app/x"], podman_env, check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


# --------------------------------------------------------------------------- the GPU image


def test_gpu_image_has_cuda_provider_with_its_libraries(
    gpu_image: str, podman_env: dict[str, str], models_dir: Path
) -> None:
    image = inspect(podman_env, "image", gpu_image)
    print(f"{gpu_image}: {image['Size'] / 1e9:.2f} GB")
    code = (
        "import onnxruntime as ort, os, sys; "
        "print(' '.join(ort.get_available_providers())); "
        "print(os.path.join(os.path.dirname(ort.__file__), 'capi', 'libonnxruntime_providers_cuda.so'))"
    )
    providers, library = sh(
        ["podman", "run", "--rm", gpu_image, "python", "-c", code], podman_env
    ).stdout.split("\n")[:2]
    assert "CUDAExecutionProvider" in providers.split()
    # The CUDA provider loads only if the loader finds CUDA, cuBLAS, cuFFT, cuRAND and
    # cuDNN (from the NVIDIA wheels); the driver's libcuda comes from the host at run time.
    ldd = sh(["podman", "run", "--rm", gpu_image, "ldd", library], podman_env).stdout
    assert "not found" not in ldd, ldd
    for lib in ("libcudart.so", "libcublas.so", "libcufft.so", "libcurand.so", "libcudnn.so"):
        assert re.search(rf"{lib}\.\d+ => /\S+/site-packages/nvidia/", ldd), f"{lib}:\n{ldd}"
    # A CUDA session gets as far as asking the CUDA runtime for the device: the provider
    # and every library it needs loaded; only the driver (and a GPU) is missing here.
    session = (
        "import onnxruntime as ort; s = ort.InferenceSession('/models/default/model.onnx', "
        "providers=['CUDAExecutionProvider', 'CPUExecutionProvider']); print(s.get_providers())"
    )
    cmd = ["podman", "run", "--rm", "-v", f"{models_dir}:/models:ro", gpu_image]
    tried = sh([*cmd, "python", "-c", session], podman_env)
    said = tried.stdout + tried.stderr  # ONNX Runtime prints its fallback to stdout
    assert "cannot open shared object file" not in said, said
    assert "cudaSetDevice" in said and "CUDA driver version is insufficient" in said, said
    assert tried.stdout.strip().splitlines()[-1] == "['CPUExecutionProvider']"
    torch = sh(
        ["podman", "run", "--rm", gpu_image, "python", "-c", "import torch"],
        podman_env,
        check=False,
    )
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr


def test_gpu_image_without_a_gpu(
    gpu_image: str, run_container: Callable[..., tuple[str, int]]
) -> None:
    """No GPU here: not ready when a GPU is required, serving on the CPU otherwise."""
    _, strict = run_container(gpu_image, "-e", "VIGIL_REQUIRE_GPU=true")
    _, lenient = run_container(gpu_image)
    wait_for("/readyz 200 without VIGIL_REQUIRE_GPU", lambda: ready(lenient), 120)
    with client(lenient) as c:
        assert c.get("/model").json()["provider"] == "CPUExecutionProvider"
        score_samples(c)
    with client(strict) as c:

        def refused() -> bool:
            message = c.get("/readyz").json()["error"]["message"]
            return "CUDAExecutionProvider is required" in message

        wait_for("/readyz naming the missing CUDA provider", refused, 60)
        assert c.get("/readyz").status_code == 503
        assert (
            c.post("/score", files=[("files", ("a.png", SAMPLES[0].read_bytes()))]).status_code
            == 503
        )


def test_gpu_image_not_ready_code_is_provider_unavailable(
    gpu_image: str, run_container: Callable[..., tuple[str, int]]
) -> None:
    _, port = run_container(gpu_image, "-e", "VIGIL_REQUIRE_GPU=true")
    with client(port) as c:
        wait_for("the start-up load to fail", lambda: "required" in c.get("/readyz").text, 60)
        assert c.get("/readyz").json()["error"]["code"] == "provider_unavailable"


# --------------------------------------------------------------------------- compose


class Stack:
    """The compose project under test: the shipped file plus the test override."""

    def __init__(self, env: dict[str, str], base_images: dict[str, str], models: Path) -> None:
        self.project = f"vigil-test-{os.getpid()}"
        self.vigil_port, self.prometheus_port = free_port(), free_port()
        # The shipped file's own variables choose ports and the models folder; the
        # override's choose the stand-in base images.
        self.env = {
            **env,
            "VIGIL_BASE_IMAGE": base_images["python"],
            "PROMETHEUS_IMAGE": base_images["prometheus"],
            "VIGIL_PUBLISH": f"127.0.0.1:{self.vigil_port}",
            "PROMETHEUS_PUBLISH": f"127.0.0.1:{self.prometheus_port}",
            "VIGIL_MODELS_HOST_DIR": str(models),
            "VIGIL_ADMIN_TOKEN": TOKEN,
        }
        compose = _tool("podman-compose")
        assert compose
        self.compose = [compose, "-p", self.project, "-f", str(COMPOSE), "-f", str(OVERRIDE)]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return sh([*self.compose, *args], self.env, timeout=timeout)

    def containers(self, service: str | None = None) -> list[str]:
        cmd = ["podman", "ps", "-a", "--format", "{{.Names}}"]
        cmd += ["--filter", f"label=io.podman.compose.project={self.project}"]
        if service:
            cmd += ["--filter", f"label=com.docker.compose.service={service}"]
        return sh(cmd, self.env).stdout.split()

    def query(self, expr: str) -> list[dict[str, Any]]:
        with client(self.prometheus_port) as c:
            answer = c.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


@pytest.fixture(scope="module")
def stack(
    podman_env: dict[str, str], base_images: dict[str, str], models_dir: Path
) -> Iterator[Stack]:
    stack = Stack(podman_env, base_images, models_dir)
    try:
        # Grafana is left out (no image here); everything else is the shipped file.
        stack("up", "-d", "--build", "vigil", "prometheus", timeout=900)
        yield stack
    finally:
        stack("down", "-v", timeout=120)


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> dict[str, Any]:
    """Two waves of requests (one scrape apart, so rates are not zero) and one reload."""
    sent: dict[str, Any] = {"images": 0, "flagged": Counter(), "score_status": Counter()}
    with client(stack.vigil_port) as c:

        def wave() -> None:
            # The last request at a loose target FPR, so that some images are flagged
            # even by the small test model.
            for params in ({}, {}, {}, {"target_fpr": 0.3}):
                for result in score_samples(c, **params)["results"]:
                    sent["images"] += 1
                    sent["flagged"].update(result["flagged_by"])
                sent["score_status"]["200"] += 1
            raw = c.post(
                "/score", content=SAMPLES[0].read_bytes(), headers={"content-type": "image/png"}
            )
            assert raw.status_code == 200
            sent["images"] += 1
            sent["flagged"].update(raw.json()["results"][0]["flagged_by"])
            sent["score_status"]["200"] += 1
            bad = c.post("/score", content=b"not an image", headers={"content-type": "image/png"})
            assert 400 <= bad.status_code < 500
            sent["score_status"][str(bad.status_code)] += 1

        def scraped() -> bool:
            seen = stack.values('vigil_images_scored_total{job="vigil"}', "job")
            return seen.get("vigil") == sent["images"]

        wave()
        wait_for("Prometheus to scrape the first wave", scraped, 60)
        reload = c.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert reload.status_code == 200, reload.text
        wave()
        wait_for("Prometheus to scrape the second wave", scraped, 60)
    return sent


def test_compose_up_brings_vigil_and_prometheus_up(stack: Stack) -> None:
    seconds = wait_for("vigil /readyz 200", lambda: ready(stack.vigil_port), 60)
    print(f"vigil ready {seconds:.1f} s after `up` returned")
    with client(stack.prometheus_port) as c:
        wait_for("Prometheus ready", lambda: c.get("/-/ready").status_code == 200, 60)

        def vigil_target_up() -> bool:
            targets = c.get("/api/v1/targets").json()["data"]["activeTargets"]
            return any(t["labels"]["job"] == "vigil" and t["health"] == "up" for t in targets)

        wait_for("Prometheus scraping vigil:8000", vigil_target_up, 60)
    (vigil,) = stack.containers("vigil")
    container = inspect(stack.env, "container", vigil)
    assert container["HostConfig"]["ReadonlyRootfs"] is True
    assert container["Config"]["User"] == "10001:10001"


def test_prometheus_returns_what_was_sent(stack: Stack, traffic: dict[str, Any]) -> None:
    assert stack.values('vigil_images_scored_total{job="vigil"}', "job") == {
        "vigil": traffic["images"]
    }
    by_status = stack.values(
        'sum by (status) (vigil_requests_total{job="vigil", route="/score", method="POST"})',
        "status",
    )
    assert by_status == traffic["score_status"]
    flagged = stack.values('vigil_anomalies_total{job="vigil"}', "score")
    assert {k: v for k, v in flagged.items() if v} == traffic["flagged"]
    assert traffic["flagged"], "some images were flagged"
    reloads = stack.values('vigil_reloads_total{job="vigil"}', "outcome")
    assert reloads == {"success": 1, "failure": 0}


def _dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def _substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables as it would fill them for a 1 h view of every instance."""
    names = set(re.findall(r"\$(\w+)", expr))
    assert names <= set(values), f"unknown variables {names - set(values)} in {expr}"
    for name in sorted(names, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    return expr


def test_dashboard_panels_return_data(stack: Stack, traffic: dict[str, Any]) -> None:
    # The `score` variable's values, from its own label_values() query.
    scores = sorted(stack.values("count by (score) (vigil_score_count)", "score"))
    assert scores
    grafana = {"__rate_interval": "1m", "__range": "1h", "instance": ".*"}
    empty = []
    for title, template in _dashboard_targets():
        for score in scores if "$score" in template else [""]:
            expr = _substitute(template, {**grafana, "score": score})
            result = stack.query(expr)
            values = [float(r["value"][1]) for r in result]
            if not values or not all(math.isfinite(v) for v in values):
                empty.append(f"{title}: {expr} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # A few that should say something precise after this traffic.
    assert stack.values('vigil_ready{job="vigil"}', "job") == {"vigil": 1}
    (info,) = stack.query('vigil_model_info{job="vigil"}')
    assert (
        info["metric"]["provider"] == "CPUExecutionProvider" and info["metric"]["name"] == "default"
    )


def test_dashboard_and_autoscaler_use_only_exported_metrics(stack: Stack) -> None:
    with client(stack.vigil_port) as c:
        exposition = c.get("/metrics").text
    exported = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}
    adapter = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    exprs = [e for _, e in _dashboard_targets()] + [
        r[k] for r in adapter for k in ("seriesQuery", "metricsQuery")
    ]
    used = {name for e in exprs for name in re.findall(r"\bvigil_\w+", e)}
    assert used and used <= exported, f"not exported: {used - exported}"


def test_autoscaler_metric_query_answers(stack: Stack, traffic: dict[str, Any]) -> None:
    """prometheus-adapter's query, with its template filled as it would fill it per pod."""
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    expr = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'job="vigil"')
    expr = expr.replace("<<.GroupBy>>", "instance")
    ((instance, value),) = stack.values(expr, "instance").items()
    assert instance == "vigil:8000" and 0 <= value < 1


def test_alert_rules_are_loaded_and_evaluate(stack: Stack) -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    expected = {g["name"]: [r.get("alert", r.get("record")) for r in g["rules"]] for g in groups}
    with client(stack.prometheus_port) as c:

        def loaded() -> dict[str, list[dict[str, Any]]]:
            data = c.get("/api/v1/rules").json()["data"]["groups"]
            return {g["name"]: g["rules"] for g in data}

        assert {name: [r["name"] for r in rules] for name, rules in loaded().items()} == expected

        def all_evaluated() -> bool:
            return all(r["health"] == "ok" for rules in loaded().values() for r in rules)

        wait_for("every rule evaluated without error", all_evaluated, 60)


def test_compose_stop_drains_a_request_in_flight(stack: Stack) -> None:
    """SIGTERM while a request's body is still arriving: the request still gets its answer."""
    boundary = "vigil-drain-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="bag.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + SAMPLES[0].read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        "POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    (vigil,) = stack.containers("vigil")
    with socket.create_connection(("127.0.0.1", stack.vigil_port), timeout=60) as conn:
        conn.sendall(head + body[:64])  # the request has started; its body has not arrived
        stop = subprocess.Popen(
            [*stack.compose, "stop", "vigil"],
            cwd=ROOT,
            env=stack.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:

            def got_sigterm() -> bool:
                logs = sh(["podman", "logs", vigil], stack.env)
                return "Shutting down" in logs.stdout + logs.stderr

            wait_for("uvicorn to receive SIGTERM", got_sigterm, 30)
            assert stop.poll() is None, "stop returned while a request was in flight"
            conn.sendall(body[64:])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        finally:
            output, _ = stop.communicate(timeout=60)
    assert stop.returncode == 0, output
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK", answer[:500]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["results"][0]["filename"] == "bag.png"
    state = inspect(stack.env, "container", vigil)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] != 137, state  # not SIGKILLed
    logs = sh(["podman", "logs", vigil], stack.env)
    assert "Application shutdown complete" in logs.stdout + logs.stderr


def test_compose_down_leaves_nothing(stack: Stack) -> None:
    stack("down", timeout=120)
    assert stack.containers() == []
    networks = sh(["podman", "network", "ls", "--format", "{{.Name}}"], stack.env).stdout.split()
    assert not [n for n in networks if n.startswith(stack.project)]
    # Only the named data volume stays, by design (as with docker compose); `down -v` removes it.
    volumes = sh(["podman", "volume", "ls", "--format", "{{.Name}}"], stack.env).stdout.split()
    assert [v for v in volumes if v.startswith(stack.project)] == [
        f"{stack.project}_prometheus-data"
    ]
