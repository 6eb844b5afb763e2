FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY faceid_batch ./faceid_batch
COPY faceid_sim ./faceid_sim
# deploy: Flower (the Celery monitor the compose file runs).
RUN pip install --no-cache-dir ".[deploy]" && useradd --system --uid 10001 faceid
USER faceid
# Prometheus metrics of a worker (METRICS_PORT).
EXPOSE 9808
# Celery's warm shutdown on SIGTERM (the default) lets calls in flight finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["faceid-batch"]
