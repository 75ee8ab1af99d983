# Runtime image: the worker, without torch (models run on ONNX Runtime).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TRIAGE_MODELS_DIR=/app/models TRIAGE_METRICS_HOST=0.0.0.0
COPY pyproject.toml README.md ./
COPY triage ./triage
COPY models ./models
COPY schemas ./schemas
RUN pip install --no-cache-dir . && useradd --system --uid 10001 triage
USER triage
# Mount or copy models into /app/models; studies must be readable at the URIs the events name.
EXPOSE 9464
ENTRYPOINT ["triage", "worker"]
CMD ["--bootstrap", "kafka:9092", "--processes", "2", "--metrics-port", "9464"]
