"""The span collector: OTLP/HTTP ingest, cost aggregation per TLS mode, stored results, report."""
