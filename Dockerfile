# Concord: `docker build -t concord . && docker run -p 8080:8080 -e CONCORD_REDIS_URL=redis://redis:6379 concord`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY lua ./lua
RUN pip install '.[server]' \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin concord

USER concord
EXPOSE 8080
# slim has no curl; the interpreter is already here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# Extra arguments are appended: `docker run concord --workers 4`.
ENTRYPOINT ["concord", "serve", "--host", "0.0.0.0", "--port", "8080"]
