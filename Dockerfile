# syntax=docker/dockerfile:1
#
# Vigil inference service: FastAPI + ONNX Runtime serving an exported bundle.
# The image holds no torch: only the base dependencies and the ONNX Runtime
# extra of pyproject.toml are installed, never the "train" extra.
#
#   docker build -t vigil:cpu .
#   docker build --build-arg RUNTIME=gpu -t vigil:gpu .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" --read-only --tmpfs /tmp vigil:cpu
#
# Build args
#   BASE_IMAGE  defaults to python:3.11-slim. The commands below expect a Debian/Ubuntu
#               image whose `python` is 3.11 or newer with pip (deploy/base-image.sh
#               makes a local stand-in where no image can be pulled).
#   RUNTIME     cpu (default) installs the "cpu" extra (onnxruntime);
#               gpu installs the "gpu" extra: onnxruntime-gpu with CUDA and cuDNN from
#               NVIDIA's PyPI wheels, so the GPU image derives from the same slim base
#               instead of a multi-GB nvidia/cuda one. The host needs only the NVIDIA
#               driver and the NVIDIA Container Toolkit (docker run --gpus all ...).
#   ORT_GPU_CONSTRAINT  which onnxruntime-gpu, hence which CUDA major (RUNTIME=gpu only):
#               onnxruntime-gpu 1.21 - 1.26   CUDA 12   (default; driver >= 525)
#               onnxruntime-gpu >= 1.27       CUDA 13   (driver >= 580, Turing or newer):
#               --build-arg ORT_GPU_CONSTRAINT="onnxruntime-gpu>=1.27"

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG RUNTIME=cpu
ARG ORT_GPU_CONSTRAINT="onnxruntime-gpu<1.27"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed numeric id (Kubernetes' runAsNonRoot can check it).
RUN groupadd --gid 10001 vigil \
    && useradd --no-log-init --uid 10001 --gid vigil --create-home --home-dir /home/vigil \
        --shell /usr/sbin/nologin vigil \
    && mkdir -p /models

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that this layer is rebuilt only
# when the dependency list or RUNTIME changes, not on every source edit. The list is
# the base dependencies plus the RUNTIME extra; "train" (torch) is never read.
# For the GPU runtime, the NVIDIA wheels' lib folders are registered with the dynamic
# loader: ONNX Runtime's CUDA provider dlopens libcudart, libcublas and libcudnn by
# name, and site-packages is not on the loader's path.
COPY pyproject.toml ./
RUN case "${RUNTIME}" in cpu|gpu) ;; *) echo "RUNTIME must be cpu or gpu, not '${RUNTIME}'" >&2; exit 1 ;; esac \
    && python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' "${RUNTIME}" > /tmp/requirements.txt \
    && echo "${ORT_GPU_CONSTRAINT}" > /tmp/constraints.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && rm /tmp/requirements.txt \
    && if [ "${RUNTIME}" = gpu ]; then \
        python -c 'import glob, sysconfig; print("\n".join(sorted(glob.glob(sysconfig.get_paths()["purelib"] + "/nvidia/**/lib", recursive=True))))' > /etc/ld.so.conf.d/nvidia-wheels.conf \
        && ldconfig; \
    fi

# The package itself. vigil/training is copied with the rest, but only the training
# commands import it (and torch), which this image never runs.
# Every requirement is already installed, so this adds the package and nothing else;
# the last commands fail the build if torch found its way in anyway, or if the GPU
# image lacks ONNX Runtime's CUDA provider.
COPY README.md ./
COPY vigil/ vigil/
# DL3013 (pin versions): this installs the local project; its requirements, with
# their bounds from pyproject.toml, were installed by the layer above.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${RUNTIME}]" -c /tmp/constraints.txt \
    && rm -rf build ./*.egg-info /tmp/constraints.txt \
    && pip check \
    && python -c 'import importlib.util, sys; sys.exit("torch must not be installed in the service image" if importlib.util.find_spec("torch") else 0)' \
    && if [ "${RUNTIME}" = gpu ]; then \
        python -c 'import onnxruntime as ort; assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()'; \
    fi

ENV VIGIL_BUNDLE=/models/default \
    VIGIL_HOST=0.0.0.0 \
    VIGIL_PORT=8000

USER 10001:10001

EXPOSE 8000

# Ready (200) only once a bundle is loaded. http.client ignores HTTP(S)_PROXY,
# which urllib would apply even to 127.0.0.1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import http.client, os; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('VIGIL_PORT', '8000')), timeout=4); c.request('GET', '/readyz'); raise SystemExit(c.getresponse().status != 200)"]

# uvicorn (PID 1 in exec form) handles SIGTERM: it stops accepting connections and
# lets in-flight requests finish before exiting.
STOPSIGNAL SIGTERM

CMD ["vigil", "serve"]
