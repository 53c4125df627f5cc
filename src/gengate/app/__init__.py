"""The HTTP surface: OpenAI-compatible routes, the admin plane, transport middleware."""

from gengate.app.factory import create_app

__all__ = ["create_app"]
