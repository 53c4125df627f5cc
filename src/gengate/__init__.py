"""gengate: a self-hosted, policy-governed, OpenAI-compatible Gen Gateway."""

__version__ = "0.1.0"
