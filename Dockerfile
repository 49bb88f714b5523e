# cnncli in a container: `cnn` is the entrypoint, runs land in /work/runs.
#
# CPU image (the default):
#   docker build -t cnncli .
#   docker run --rm -v "$PWD:/work" cnncli train /opt/cnncli/configs/<config>.yaml
#
# GPU image: the VARIANT build argument selects the package's `gpu` extra,
# i.e. `tensorflow[and-cuda]`, whose pip wheels carry CUDA and cuDNN. The host
# needs only the NVIDIA driver and the NVIDIA Container Toolkit:
#   docker build --build-arg VARIANT=gpu -t cnncli:gpu .
#   docker run --rm --gpus all -v "$PWD:/work" cnncli:gpu train /opt/cnncli/configs/<config>.yaml
#
# One slim base serves both variants (rather than switching to the much larger
# tensorflow/tensorflow:*-gpu image) so the two images differ only in the
# extra installed, and the Python version is the same in both.

# Pinned by tag; TensorFlow >= 2.16 publishes wheels for Python 3.12.
FROM python:3.12-slim-bookworm

# cpu | gpu; anything else fails the build instead of silently building CPU.
ARG VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=2

# Only what the package build needs: pyproject.toml reads README.md as its
# long description, and the version from cnncli/__init__.py.
WORKDIR /opt/cnncli/src
COPY pyproject.toml README.md LICENSE ./
COPY cnncli/ cnncli/

# A regular (non-editable) install into the system site-packages, so the
# source tree is not needed at run time. "./[gpu]" is pip's spelling of this
# directory with its gpu extra; the leading "./" also tells hadolint (DL3013)
# that this is a local path, not an unpinned package from PyPI.
RUN case "$VARIANT" in \
        cpu) extra="" ;; \
        gpu) extra="[gpu]" ;; \
        *) echo "VARIANT must be cpu or gpu, got: $VARIANT" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir "./${extra}"

# Ready configs, outside /work so mounting a host directory there keeps them.
COPY configs/ /opt/cnncli/configs/

# Runs as an unprivileged user; its home holds Keras's dataset and weights
# cache (~/.keras), so mount a volume there to keep downloads between runs.
# Numeric ids, so Kubernetes' runAsNonRoot can verify them without /etc/passwd.
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin cnn \
    && mkdir -p /work \
    && chown 1000:1000 /work
USER 1000:1000

# `cnn train` writes runs/<name>/<timestamp>/ relative to here.
WORKDIR /work

ENTRYPOINT ["cnn"]
CMD ["--help"]
