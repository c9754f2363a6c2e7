"""The daemon's HTTP app: JSON API, webhook, Prometheus metrics and the dashboard."""

from gitopsq.web.app import create_app
from gitopsq.web.metrics import Metrics

__all__ = ["create_app", "Metrics"]
