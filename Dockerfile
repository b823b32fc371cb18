# smg: the gateway, its simulated worker, and the chaos suite's entrypoints.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY smg ./smg
RUN pip install . && useradd --system --uid 10001 --no-create-home smg \
    && mkdir /data && chown smg /data
# the embedded history database (--history-backend sqlite); mount a volume to keep it
ENV SMG_HISTORY_DB_PATH=/data/history.db
VOLUME /data

USER smg
# data plane, metrics, mesh (UDP and TCP)
EXPOSE 30000 29000 39527/udp 39527/tcp
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:30000/liveness', timeout=2).status != 200)"
ENTRYPOINT ["smg"]
CMD ["serve", "--sim-workers", "2"]
