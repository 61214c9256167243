"""sagebatch: serverless batch inference for a self-hosted LLM endpoint on AWS."""

__version__ = "0.1.0"
