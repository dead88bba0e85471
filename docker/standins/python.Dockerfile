# STAND-IN for python:3.11-slim (no registry is reachable on the test machines), tagged with that name
# so docker/infer-cpu.Dockerfile builds unchanged. Reproduces only what that Dockerfile relies on:
# `python` and `pip` on PATH, root pip installs allowed, useradd. Debian bookworm's CPython 3.11.2
# rather than the official image's source-built 3.11.x in /usr/local.
FROM local/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED \
    && ln -sf /usr/bin/pip3 /usr/local/bin/pip
# pip trusts the system CA store (the test machines' outbound HTTPS is re-signed by a proxy).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
