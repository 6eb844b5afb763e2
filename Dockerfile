FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY faceid_batch ./faceid_batch
COPY faceid_sim ./faceid_sim
RUN pip install --no-cache-dir . && useradd --system --uid 10001 faceid
USER faceid
ENTRYPOINT ["faceid-batch"]
