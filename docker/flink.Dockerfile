# The aggregation job's image: official Flink 2.2.1 + PyFlink + Kafka SQL connector + Tally's UDF jar.
# Used for the JobManager, the TaskManagers and the one-shot `flink run -py jobs/aggregate.py`.
#   docker build -f docker/flink.Dockerfile -t tally-flink .      (context: repository root)

# 1. Tally's Java UDFs (jobs/udf) and the Kafka SQL connector, with Maven.
FROM maven:3.9.9-eclipse-temurin-17 AS jars
WORKDIR /build/udf
COPY jobs/udf/pom.xml ./pom.xml
COPY jobs/udf/src ./src
RUN mvn -q -B package -DskipTests && cp target/tally-udf.jar /build/tally-udf.jar
RUN mvn -q -B dependency:copy -Dartifact=org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2 \
        -DoutputDirectory=/build/connectors

# 2. The runtime: official Flink image, Python 3.11 venv with PyFlink and Tally.
FROM flink:2.2.1-scala_2.12-java17
USER root
# Tally needs Python >=3.11,<3.12 (pyproject.toml); the Flink image is Ubuntu-based.
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv socat curl \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
WORKDIR /opt/tally
COPY pyproject.toml README.md ./
COPY tally ./tally
COPY schemas ./schemas
COPY sinks ./sinks
COPY jobs/__init__.py jobs/aggregate.py ./jobs/
COPY jobs/udf/pom.xml ./jobs/udf/pom.xml
COPY reconcile ./reconcile
# apache-flink==2.2.1 comes from pyproject.toml's pinned dependencies.
RUN /opt/venv/bin/pip install --no-cache-dir -e .
COPY --from=jars /build/tally-udf.jar /opt/flink/lib/tally-udf.jar
COPY --from=jars /build/connectors/ /opt/flink/lib/
# tally.udf.udf_jar_path() wants jobs/udf/target/tally-udf.jar newer than pom.xml (no Maven at run time).
COPY --from=jars /build/tally-udf.jar ./jobs/udf/target/tally-udf.jar
RUN touch jobs/udf/target/tally-udf.jar && chown -R flink:flink /opt/tally
COPY docker/entrypoint.sh /usr/local/bin/tally-entrypoint
ENV PATH=/opt/venv/bin:$PATH PYFLINK_CLIENT_EXECUTABLE=/opt/venv/bin/python \
    TALLY_HOME=/opt/flink/tally TALLY_HOST=0.0.0.0 PYTHONUNBUFFERED=1
# The official entrypoint (/docker-entrypoint.sh) stays: jobmanager | taskmanager | flink ...
ENTRYPOINT ["/usr/local/bin/tally-entrypoint", "/docker-entrypoint.sh"]
CMD ["help"]
