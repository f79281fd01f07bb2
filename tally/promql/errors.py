"""The errors of the PromQL subset, each mapped to a Prometheus API error type.

``PromQLSyntaxError`` and ``PromQLUnsupported`` are the user's query text (400 ``bad_data``);
``PromQLExecError`` is a query that parsed but cannot be executed (422 ``execution``).
"""

from __future__ import annotations


class PromQLError(ValueError):
    """Base class; ``error_type`` and ``status`` follow the Prometheus HTTP API."""

    error_type = "bad_data"
    status = 400


class PromQLSyntaxError(PromQLError):
    """The expression does not parse."""


class PromQLUnsupported(PromQLError):
    """Valid PromQL that Tally's subset does not implement; the message names the feature."""


class PromQLExecError(PromQLError):
    """The expression parsed but cannot be evaluated (e.g. many-to-many matching)."""

    error_type = "execution"
    status = 422
