"""gitopsq: a GitOps controller for ML runs."""

__version__ = "0.1.0"
