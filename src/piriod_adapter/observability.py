"""The service's logger and metrics (Powertools), shared by every module."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

SERVICE = "piriod-usage-adapter"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="PiriodUsageAdapter", service=SERVICE)
