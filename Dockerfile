# One image for the API, the workers, the reconciler and the migration step (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first and pinned: the Linux wheel of torch 2.13.0 carries its CUDA runtime for the GPU workers.
RUN pip install "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY storage ./storage
COPY api ./api
COPY worker ./worker
COPY styledrop ./styledrop
# A plain install: the migrations (alembic/, linked as storage/migrations/) ship inside the package.
RUN pip install ".[gpu]"

RUN useradd --create-home --uid 1000 styledrop && mkdir -p /data /models && chown styledrop /data /models
USER styledrop
ENV STYLEDROP_DATA_DIR=/data HF_HOME=/models
EXPOSE 8000
CMD ["styledrop", "--help"]
