"""The service's logger and metrics (Powertools), shared by every module."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger, Metrics

SERVICE = "piriod-usage-adapter"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="PiriodUsageAdapter", service=SERVICE)

# The AWS SDK and the HTTP client log whole requests and answers at DEBUG: Secrets Manager's
# answers hold the Piriod token and the signing secrets. Lambda sets the root logger to the
# function's log level, so they are held at WARNING whatever LogLevel says.
for _noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
