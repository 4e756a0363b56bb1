FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates bubblewrap socat \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 fixbot

WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
# The work volume mounts at /app/data/work: made here, a named volume starts out owned by
# the non-root user instead of root.
RUN pip install --no-cache-dir --no-deps . && mkdir -p /app/data/work && chown -R fixbot /app/data

# Agents run in a bubblewrap sandbox (docs/sandbox.md): the container needs user
# namespaces and mounts, e.g. `--security-opt seccomp=unconfined --security-opt
# apparmor=unconfined` (docker-compose.yml sets them), or `sandbox: off` in fixbot.yml.
USER fixbot
ENV FIXBOT_HTTP_HOST=0.0.0.0
EXPOSE 8080
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
CMD ["python", "app.py"]
