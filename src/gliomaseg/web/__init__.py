"""Web app: `gliomaseg serve` (FastAPI + one static page). See app.create_app."""

from .app import WebSettings, create_app
from .uploads import UploadLimits

__all__ = ["UploadLimits", "WebSettings", "create_app"]
