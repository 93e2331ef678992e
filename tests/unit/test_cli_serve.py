"""`flywheel serve`'s start-up failures that need no Ray (subprocess, as a user runs it)."""

import socket
import time

import yaml

from tests.unit.test_cli_logs import flywheel


def test_serve_on_a_taken_port_is_one_line_before_ray_starts(tmp_path):
    """Ray's proxy would fail to bind a minute later, with its actor's traceback."""
    model = tmp_path / "local-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"serve": {"port": port, "models": [{"name": "m", "source": str(model)}]}}))
        started = time.monotonic()
        result = flywheel("serve", "--config", str(config), home=tmp_path / "home")
    assert result.returncode == 2 and time.monotonic() - started < 60
    assert result.stderr.strip() == (f"error: 127.0.0.1:{port} is taken (Address already in use): stop what "
                                     "listens there, or set serve.port")
