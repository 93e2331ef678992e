"""bench/train_gpu.py (S4's GPU benchmark) must stay runnable for the session that gets a
GPU: a 2-layer smoke run on CPU goes through the same build, step and per-variant process
code. Liger's Triton kernels need a GPU, so here its variant must come back as a failed row
(or numbers, where Liger can run), never as a crash of the whole benchmark."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_its_smoke_mode_and_reports_mfu():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "train_gpu.py"), "--tiny",
                             "--variants", "eager,nocast+causal,flce", "--profile"], check=False,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "train_gpu" and report["parameters"] > 100_000
    assert set(report["versions"]) >= {"torch", "transformers", "peft"} and report["versions"]["torch"]
    eager, causal, flce = (report["results"][name] for name in ("eager", "nocast+causal", "flce"))
    assert eager["tokens_per_s"] > 0 and 0 < eager["mfu"] < 1 and eager["micro_batch"] == 2
    assert causal["tokens_per_s"] > 0 and causal["parameters"] == eager["parameters"]
    profile = eager["profile"]  # CPU operators' time here: the code path, not the numbers
    assert set(profile["ms_per_step"]) == {"matmul", "attention", "triton", "other"}
    assert sum(profile["ms_per_step"].values()) == pytest.approx(profile["total_ms_per_step"], abs=0.1)
    assert profile["top_kernels_ms_per_step"] and profile["total_ms_per_step"] > 0
    assert "error" in flce or flce["tokens_per_s"] > 0


def test_an_unknown_feature_is_a_one_line_error_before_anything_runs():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "train_gpu.py"), "--tiny",
                             "--variants", "eager,compiled+fast"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and not result.stdout
    assert result.stderr.strip().splitlines() == [
        ("unknown feature(s) fast in variant 'compiled+fast'; a variant is 'eager' or a '+'-joined set of "
         "compiled, dynamic, liger, flce, cudnn, nocast, autotune, cudagraphs, coordesc, causal")]
