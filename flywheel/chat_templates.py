"""The chat templates Flywheel ships (`flywheel/templates/*.jinja`) and how a configured name
resolves to a file. Standard library only: the training loop's tests import it on bare GPU
machines that have no Ray, Serve or pydantic."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"


def chat_template_path(template: str | None) -> str | None:
    """A bundled template name, or a path to a .jinja file, as vLLM's `--chat-template`."""
    if template is None:
        return None
    bundled = TEMPLATES / f"{template}.jinja"
    if bundled.is_file():
        return str(bundled)
    if Path(template).expanduser().is_file():
        return str(Path(template).expanduser().resolve())
    raise FileNotFoundError(f"chat template {template!r}: no bundled template or file of that name")
