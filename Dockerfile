# Tollbooth gateway image: the installed package in a virtualenv, run as a non-root user.
# Build: docker build -t tollbooth .   (the README's "Running in production" says how to run it)

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY pricing ./pricing
COPY storage ./storage
RUN python -m venv /opt/tollbooth && /opt/tollbooth/bin/pip install /src

FROM python:3.11-slim
ENV PATH=/opt/tollbooth/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/tollbooth /opt/tollbooth
# The config's default home (Kubernetes mounts its ConfigMap over it) and the data dir: the
# usage journal lives under it, so mount a volume there (see deploy/).
COPY deploy/config.yaml /etc/tollbooth/config.yaml
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tollbooth --create-home \
        tollbooth
USER 10001
WORKDIR /var/lib/tollbooth
EXPOSE 8080
# SIGTERM drains (readiness off, server.drain_grace_s of service, streams finished until
# server.drain_timeout_s, then every usage event written): give it drain_timeout_s + 10 s
# (`docker stop -t 40`, compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status != 200)"]
CMD ["tollbooth", "serve", "--config", "/etc/tollbooth/config.yaml", "--host", "0.0.0.0"]
