# The image of bp-monitor's jobs: Python 3.11, Java 17 for Spark (and keytool), OpenSSL for the
# compose setup's certificates, the project installed.
# Connector jars are fetched by spark.jars.packages at first start (cache: /root/.ivy2).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps openssl \
    && rm -rf /var/lib/apt/lists/*

ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md .env ./
COPY bp_spark ./bp_spark
# Editable, so the library finds conf/ and .env beside it in /app.
RUN pip install --no-cache-dir -e . && python -m bp_spark.package
COPY conf ./conf
COPY jobs ./jobs
# stack/compose_setup.py (docker compose's setup services) uses localstack.py's certificate code.
COPY stack ./stack
