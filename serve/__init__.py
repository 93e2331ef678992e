"""Ray Serve application for Flywheel: `build_app(config)` is the public surface."""

from serve.app import build_app

__all__ = ["build_app"]
