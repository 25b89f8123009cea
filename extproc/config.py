"""Typed configuration: defaults → YAML file → environment → CLI flags (highest last).

Field names follow the LLMTrace config guide where the concept exists
(`enable_security_analysis`, `security_analysis_timeout_ms`, `enforcement`, `pii.action`,
`output_safety.enabled`, `logging.*`); ext_proc specifics live under `server` and `envoy`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from extproc.detect.findings import Severity

ENV_PREFIX = "EXTPROC_"
ENV_NESTING = "__"
# Variables the process reads itself, never part of the config tree.
_ENV_NOT_CONFIG = {"EXTPROC_CONFIG", "EXTPROC_RUNTIME_CONFIG"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SeverityLevel = Annotated[
    Severity, BeforeValidator(Severity.parse), PlainSerializer(str, return_type=str)
]


class ServerConfig(_Section):
    """The gRPC ext_proc server and the admin HTTP server."""

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=1, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(8081, ge=1, le=65535)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes, on ports grpc_port .. grpc_port+workers-1. Envoy gets one "
        "endpoint per worker and balances streams across them (SO_REUSEPORT would not: Envoy "
        "keeps one HTTP/2 connection per worker thread).",
    )
    failure_mode: Literal["open", "closed"] = Field(
        "closed",
        description="open: when extproc is down or errors, requests pass unanalysed; "
        "closed: they get a 5xx JSON error.",
    )
    max_request_size_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_response_size_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    grace_seconds: float = Field(5.0, ge=0, description="Drain time for open streams on shutdown.")


class EnvoyConfig(_Section):
    """How `extproc up` runs Envoy and how the Envoy config is rendered."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(10000, ge=1, le=65535)
    admin_port: int = Field(9901, ge=1, le=65535)
    upstream_url: str = Field("http://127.0.0.1:18080", description="The LLM provider or gateway.")
    concurrency: int = Field(2, ge=1, le=64)
    message_timeout_ms: int | None = Field(
        None,
        ge=10,
        description="Envoy's wait per ext_proc message; default security_analysis_timeout_ms+500.",
    )

    @field_validator("upstream_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


OperatingPoint = Literal["high_recall", "balanced", "high_precision"]
DEFAULT_MODELS_DIR = Path("~/.cache/extproc/models")


class SecurityAnalysisConfig(_Section):
    """Detector settings: the regex tier and the ONNX model ensemble (seed names)."""

    rule_files: list[Path] = Field(
        default_factory=list,
        description="Rule pack YAML files; empty means every bundled policies/rules/*.yaml.",
    )
    scan_unknown_paths: bool = Field(
        False,
        description="Scan the raw body of requests to paths no dialect knows (else pass through).",
    )
    ml_enabled: bool = Field(
        True,
        description="Run the ONNX models beside the regex tier. Models that are not installed "
        "(`extproc models install`) or fail to load leave regex-only analysis, with a warning, "
        "a metric and /health saying so.",
    )
    ml_preload: bool = Field(
        True, description="Load models at startup. false: regex-only (models never load lazily)."
    )
    ml_cache_dir: Path = Field(
        DEFAULT_MODELS_DIR, description="Where `extproc models install` put the model directories."
    )
    ml_model: str = Field(
        "nanoguard",
        description="Prompt-injection sequence classifier: a model name under ml_cache_dir, or a "
        "path to any directory with model.onnx + tokenizer.json (+ config.json labels), such as "
        "a Hugging Face ONNX export.",
    )
    ml_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Injection score that counts; null: operating point's."
    )
    jailbreak_enabled: bool = Field(
        True,
        description="Semantic attack detector: MiniLM embeddings scored by a logistic head "
        "trained on known jailbreaks and injections (or best cosine to its bank, if no head).",
    )
    jailbreak_model: str = Field("minilm-attack-bank", description="As ml_model.")
    jailbreak_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Attack probability (cosine without a head); null: operating point's.",
    )
    ner_enabled: bool = Field(
        True, description="Token-classification NER for names and addresses regex cannot see."
    )
    ner_model: str = Field("rampart", description="As ml_model (a token classifier).")
    ner_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Entity score that counts; null: operating point's."
    )
    toxicity_enabled: bool = Field(True, description="Toxicity classifier on responses.")
    toxicity_model: str = Field("toxicity", description="As ml_model.")
    toxicity_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Label score that counts; null: operating point's."
    )
    operating_point: OperatingPoint = Field(
        "balanced",
        description="Default thresholds of every model: high_recall catches more and flags more "
        "honest text; high_precision the reverse. See docs/detection.md for the measured trade.",
    )
    ml_timing: Literal["inline", "async"] = Field(
        "inline",
        description="inline: wait up to ml_budget_ms for the models, then decide with whatever "
        "has arrived (a late model result is still recorded as a finding). async: decide on "
        "regex alone at once; model findings are recorded when they arrive.",
    )
    ml_budget_ms: int = Field(
        250, ge=1, description="Longest a request waits for the models (inline timing)."
    )
    ml_max_batch: int = Field(16, ge=1, le=256, description="Windows per model call.")
    ml_max_wait_us: int = Field(
        500, ge=0, le=100_000, description="How long a lone request waits for others to batch with."
    )
    ml_threads: int = Field(
        0, ge=0, le=256, description="onnxruntime intra-op threads per model; 0: one per core."
    )
    ml_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: CUDA when onnxruntime-gpu provides it, else CPU. cuda: fail to load "
        "rather than run on the CPU.",
    )
    ml_skip_when_regex_blocks: bool = Field(
        True,
        description="Skip the models for a request the regex tier already blocks (the verdict "
        "cannot change; saves their time under attack).",
    )


class CategoryEnforcement(_Section):
    """Per finding type (or category) action, overriding the global mode."""

    finding_type: str
    action: Literal["block", "flag", "log"]


class EnforcementConfig(_Section):
    """What happens to a request whose findings reach the thresholds (seed 004's shape)."""

    mode: Literal["block", "flag", "log"] = "block"
    min_severity: SeverityLevel = Severity.HIGH
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    categories: list[CategoryEnforcement] = Field(default_factory=list)
    block_status_code: int = Field(403, ge=400, le=599)


class PiiConfig(_Section):
    """PII handling on requests (and on responses when output_safety is on)."""

    action: Literal["alert_only", "alert_and_redact", "redact_silent"] = "alert_only"
    reversible: bool = Field(
        False,
        description="With a redacting action: forward numbered placeholders ([PII:EMAIL_1]), "
        "keep the originals in memory for that request only, and put them back in the "
        "response, so the user sees their data and the provider never does.",
    )


class OutputSafetyConfig(_Section):
    """Checks on buffered (non-streaming) responses."""

    enabled: bool = True
    redact_secrets: bool = Field(True, description="Replace secrets in responses with tags.")


class StreamingAnalysisConfig(_Section):
    """Checks on streamed (SSE) responses while they flow (config guide names)."""

    enabled: bool = Field(True, description="Analyse SSE responses of known dialects.")
    output_enabled: bool = Field(True, description="Run output checks on streamed text.")
    early_stop_on_critical: bool = Field(
        True, description="End the stream with a warning event when a finding is severe enough."
    )
    early_stop_min_severity: SeverityLevel = Field(
        Severity.CRITICAL, description="The severity that stops a stream (with the flag above)."
    )
    token_interval: int = Field(
        50,
        ge=1,
        le=100000,
        description="The config guide's check interval in tokens. extproc checks every chunk "
        "Envoy delivers before forwarding it, which is never less often, so this is an upper "
        "bound kept for compatibility.",
    )
    include_usage: bool = Field(
        True,
        description="Add stream_options.include_usage to OpenAI streaming requests so token "
        "usage is known; the extra usage chunk is removed unless the client asked for it.",
    )
    overlap_chars: int = Field(
        512,
        ge=64,
        le=65536,
        description="Text kept from earlier chunks and scanned again with each new chunk, so "
        "a match split across chunks is found. Must exceed the longest match to catch.",
    )


class StorageConfig(_Section):
    """Where request records (traces, spans, findings) are kept; written off the hot path."""

    profile: Literal["memory", "lite", "production"] = Field(
        "lite",
        description="memory: lost on restart (tests); lite: an SQLite file; production: "
        "PostgreSQL (postgres_url).",
    )
    database_path: Path = Field(Path("extproc.db"), description="The SQLite file (lite).")
    postgres_url: str | None = Field(
        None, description="postgresql://user:pass@host:5432/db (production; required there)."
    )
    capture_content: Literal["full", "redacted", "none"] = Field(
        "redacted",
        description="What prompt/response text is stored: as sent, with findings replaced by "
        "tags, or not at all.",
    )
    redis_url: str | None = Field(
        None,
        description="redis://host:6379/0 for counters shared by all replicas (rate limits, "
        "budgets); without it counters are per process.",
    )
    redis_key_prefix: str = Field("extproc:", description="Prefix of every Redis key.")
    auto_migrate: bool | None = Field(
        None,
        description="Apply pending schema migrations at start; default: yes, except in "
        "production (run `extproc migrate` there).",
    )
    queue_size: int = Field(10000, ge=1, description="Records waiting for the writer.")
    batch_size: int = Field(200, ge=1, le=10000, description="Records per database write.")
    flush_interval_ms: int = Field(200, ge=1, description="Longest wait before a write.")
    journal_dir: Path = Field(
        Path("extproc-journal"),
        description="Spill journal for records the database could not take (replayed later).",
    )
    retention_days: float | None = Field(
        30, gt=0, description="Traces older than this are purged (hourly); null keeps them."
    )

    @model_validator(mode="after")
    def _production_needs_postgres(self) -> StorageConfig:
        if self.profile == "production" and not self.postgres_url:
            raise ValueError("profile production needs postgres_url")
        return self

    @property
    def migrate_at_start(self) -> bool:
        """`auto_migrate`, or its default for the profile."""
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.profile != "production"


class RateLimitOverride(_Section):
    """One tenant's own rate (config guide: `rate_limiting.tenant_overrides.<tenant>`)."""

    requests_per_second: float = Field(gt=0)
    burst_size: int = Field(ge=1)


class RateLimitingConfig(_Section):
    """Token bucket per tenant, shared by every replica through Redis (storage.redis_url)."""

    enabled: bool = False
    requests_per_second: float = Field(100.0, gt=0, description="Sustained rate per tenant.")
    burst_size: int = Field(200, ge=1, description="Bucket size: requests allowed at once.")
    window_seconds: int = Field(
        60,
        ge=1,
        description="A tenant's bucket is forgotten this long after its last request (it is "
        "full again by then unless the rate is below burst/window).",
    )
    tenant_overrides: dict[str, RateLimitOverride] = Field(default_factory=dict)

    def for_tenant(self, tenant: str | None) -> tuple[float, int]:
        """(requests_per_second, burst_size) for a tenant."""
        own = self.tenant_overrides.get(tenant) if tenant is not None else None
        if own is not None:
            return own.requests_per_second, own.burst_size
        return self.requests_per_second, self.burst_size


class ModelPrice(_Section):
    """USD per 1M tokens."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class CostEstimationConfig(_Section):
    """Cost of each request from its token usage (stored on the span)."""

    enabled: bool = True
    pricing_file: Path | None = Field(
        None,
        description="YAML mapping model -> {input_per_million, output_per_million}; read at "
        "start and on SIGHUP; its entries win over the built-in prices.",
    )
    custom_models: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Inline prices; win over the file and built-ins."
    )


BudgetWindow = Literal["hourly", "daily", "weekly", "monthly"]
BUDGET_WINDOW_SECONDS: dict[str, int] = {
    "hourly": 3600,
    "daily": 86400,
    "weekly": 7 * 86400,
    "monthly": 30 * 86400,
}


class BudgetCap(_Section):
    """Spend limit over a rolling window: soft → alert event, hard → 429 before the upstream."""

    window: BudgetWindow
    hard_limit_usd: float | None = Field(None, gt=0)
    soft_limit_usd: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _limits(self) -> BudgetCap:
        if self.hard_limit_usd is None and self.soft_limit_usd is None:
            raise ValueError("a budget cap needs hard_limit_usd, soft_limit_usd or both")
        if (
            self.hard_limit_usd is not None
            and self.soft_limit_usd is not None
            and self.soft_limit_usd > self.hard_limit_usd
        ):
            raise ValueError("soft_limit_usd must not exceed hard_limit_usd")
        return self


class TokenCap(_Section):
    """Per-request token limits."""

    max_prompt_tokens: int | None = Field(None, ge=1, description="Longer prompts: 413.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="max_tokens / max_completion_tokens clamped to this."
    )
    max_total_tokens: int | None = Field(
        None, ge=1, description="Prompt + requested completion; over it: 413."
    )


class AgentCaps(_Section):
    """Per-agent overrides, keyed by the X-LLMTrace-Agent-ID header."""

    agent_id: str = Field(min_length=1)
    budget_caps: list[BudgetCap] = Field(
        default_factory=list,
        description="Caps on this agent's own spend, on top of the tenant-wide default caps.",
    )
    token_cap: TokenCap | None = Field(None, description="Replace default_token_cap.")


class CostCapsConfig(_Section):
    """Budgets per tenant (and per agent) and per-request token caps.

    default_budget_caps limit each tenant's total spend; an agent listed under `agents` is
    also held to its own caps (its spend still counts toward its tenant's).
    """

    enabled: bool = False
    default_budget_caps: list[BudgetCap] = Field(default_factory=list)
    default_token_cap: TokenCap | None = None
    agents: list[AgentCaps] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> CostCapsConfig:
        seen: set[str] = set()
        for agent in self.agents:
            if agent.agent_id in seen:
                raise ValueError(f"agent_id {agent.agent_id!r} is listed twice")
            seen.add(agent.agent_id)
        for caps in [self.default_budget_caps, *(a.budget_caps for a in self.agents)]:
            windows = [c.window for c in caps]
            if len(windows) != len(set(windows)):
                raise ValueError("each budget window may appear once per cap list")
        return self

    def agent(self, agent_id: str | None) -> AgentCaps | None:
        """The override entry for an agent, if any."""
        for entry in self.agents:
            if entry.agent_id == agent_id:
                return entry
        return None

    def agent_budget_caps(self, agent_id: str | None) -> list[BudgetCap]:
        """Caps on one agent's own spend (none unless the agent is listed)."""
        entry = self.agent(agent_id)
        return entry.budget_caps if entry is not None else []

    def token_cap_for(self, agent_id: str | None) -> TokenCap | None:
        """The token cap that applies to a request from this agent."""
        entry = self.agent(agent_id)
        if entry is not None and entry.token_cap is not None:
            return entry.token_cap
        return self.default_token_cap


ActionName = Literal["block_ip", "webhook"]


class ActionRuleConfig(_Section):
    """Findings that match trigger these actions (LLMTrace action router)."""

    finding_type: str | None = Field(None, description="Finding type; null matches any.")
    min_severity: SeverityLevel = Severity.MEDIUM
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    actions: list[ActionName] = Field(min_length=1)


class IpBlockActionConfig(_Section):
    """block_ip: after max_offenses within ttl_seconds, the source IP gets 403 for ttl_seconds."""

    ttl_seconds: int = Field(300, ge=1)
    max_offenses: int = Field(3, ge=1)


class WebhookActionConfig(_Section):
    """webhook: POST {source_ip, tenant_id, trace_id, findings} off the request path."""

    url: str | None = None
    timeout_ms: int = Field(2000, ge=1)
    max_retries: int = Field(3, ge=0, description="Retries after the first attempt.")
    queue_size: int = Field(1000, ge=1, description="Pending deliveries; beyond it: dropped.")


class ActionRouterConfig(_Section):
    """What to do about a caller whose requests produce findings."""

    enabled: bool = False
    default_actions: list[ActionName] = Field(
        default_factory=list, description="Actions for findings no rule matches."
    )
    rules: list[ActionRuleConfig] = Field(default_factory=list)
    ip_block: IpBlockActionConfig = Field(default_factory=IpBlockActionConfig)
    webhook: WebhookActionConfig = Field(default_factory=WebhookActionConfig)
    trusted_hops: int = Field(
        0,
        ge=0,
        description="Proxies in front of Envoy that append to X-Forwarded-For: the client is "
        "the entry this many places from the right; 0 uses Envoy's peer address.",
    )

    @model_validator(mode="after")
    def _webhook_url(self) -> ActionRouterConfig:
        used = set(self.default_actions).union(*(r.actions for r in self.rules))
        if self.enabled and "webhook" in used and not self.webhook.url:
            raise ValueError("the webhook action needs action_router.webhook.url")
        return self


class AuthzConfig(_Section):
    """The ext_authz gRPC service (envoy.service.auth.v3.Authorization), same port as ext_proc."""

    enabled: bool = Field(True, description="Serve Authorization/Check beside ext_proc.")
    scan_body: bool = Field(
        True, description="Run request detection on a body Envoy sends (with_request_body)."
    )


class AuthConfig(_Section):
    """API keys for the admin REST API (roles: admin, operator, viewer)."""

    enabled: bool = Field(
        False, description="Require `Authorization: Bearer <key>` on every route but /health."
    )
    admin_key: str | None = Field(
        None,
        min_length=16,
        description="Bootstrap admin key (e.g. EXTPROC_AUTH__ADMIN_KEY); create the others "
        "with POST /api/v1/auth/keys.",
    )
    metrics_public: bool = Field(True, description="Serve /metrics without a key.")

    @model_validator(mode="after")
    def _bootstrap(self) -> AuthConfig:
        if self.enabled and not self.admin_key:
            raise ValueError("auth.enabled needs auth.admin_key (the bootstrap admin key)")
        return self


class AlertChannelConfig(_Section):
    """One alert destination with its own thresholds."""

    type: Literal["webhook", "slack", "pagerduty", "email"]
    url: str | None = Field(None, description="webhook and slack: where to POST.")
    routing_key: str | None = Field(None, description="pagerduty: Events API v2 routing key.")
    min_severity: SeverityLevel = Severity.HIGH
    min_security_score: int = Field(0, ge=0, le=100, description="Finding confidence x 100.")

    @model_validator(mode="after")
    def _needs(self) -> AlertChannelConfig:
        if self.type in ("webhook", "slack") and not self.url:
            raise ValueError(f"a {self.type} channel needs url")
        if self.type == "pagerduty" and not self.routing_key:
            raise ValueError("a pagerduty channel needs routing_key")
        return self


class AlertsConfig(_Section):
    """Alerts on findings, budget crossings and anomalies, sent off the request path."""

    enabled: bool = False
    webhook_url: str | None = Field(
        None, description="Legacy single channel: a webhook with the top-level thresholds."
    )
    min_severity: SeverityLevel = Field(Severity.HIGH, description="For webhook_url.")
    min_security_score: int = Field(0, ge=0, le=100, description="For webhook_url.")
    cooldown_seconds: int = Field(
        300, ge=0, description="One alert per finding type (per channel) within this time."
    )
    channels: list[AlertChannelConfig] = Field(default_factory=list)
    timeout_ms: int = Field(5000, ge=1, description="Per delivery attempt.")
    max_retries: int = Field(3, ge=0)
    pagerduty_url: str = Field(
        "https://events.pagerduty.com/v2/enqueue", description="Events API v2 endpoint."
    )


class AnomalyDetectionConfig(_Section):
    """Per-tenant rolling statistics; outliers become findings and alert events."""

    enabled: bool = False
    window_size: int = Field(100, ge=2, description="Recent observations per tenant and metric.")
    sigma_threshold: float = Field(3.0, gt=0, description="Flag values above mean + k*stddev.")
    min_samples: int = Field(
        10, ge=2, description="Observations needed before a tenant's baseline is trusted."
    )
    check_cost: bool = True
    check_tokens: bool = True
    check_velocity: bool = True
    check_latency: bool = True
    velocity_interval_seconds: int = Field(
        60, ge=1, description="Requests are counted per interval for the velocity check."
    )


class CircuitBreakerConfig(_Section):
    """Trips security analysis and storage to pass-through after repeated failures."""

    enabled: bool = True
    failure_threshold: int = Field(10, ge=1, description="Consecutive failures that open it.")
    recovery_timeout_ms: int = Field(30000, ge=1, description="Open this long, then probe.")
    half_open_max_calls: int = Field(3, ge=1, description="Successful probes that close it again.")


class ShutdownConfig(_Section):
    """Graceful shutdown (config guide name)."""

    timeout_seconds: float = Field(
        10.0, ge=0, description="How long shutdown waits for queued trace records to be written."
    )


class LoggingConfig(_Section):
    """Log level and format."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Section):
    """The whole extproc configuration."""

    enable_security_analysis: bool = True
    enable_trace_storage: bool = Field(
        True, description="Store a trace per checked request (see storage.*)."
    )
    security_analysis_timeout_ms: int = Field(5000, ge=1)
    security_analysis: SecurityAnalysisConfig = Field(default_factory=SecurityAnalysisConfig)
    enforcement: EnforcementConfig = Field(default_factory=EnforcementConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    output_safety: OutputSafetyConfig = Field(default_factory=OutputSafetyConfig)
    streaming_analysis: StreamingAnalysisConfig = Field(default_factory=StreamingAnalysisConfig)
    rate_limiting: RateLimitingConfig = Field(default_factory=RateLimitingConfig)
    cost_estimation: CostEstimationConfig = Field(default_factory=CostEstimationConfig)
    cost_caps: CostCapsConfig = Field(default_factory=CostCapsConfig)
    action_router: ActionRouterConfig = Field(default_factory=ActionRouterConfig)
    authz: AuthzConfig = Field(default_factory=AuthzConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    anomaly_detection: AnomalyDetectionConfig = Field(default_factory=AnomalyDetectionConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    envoy: EnvoyConfig = Field(default_factory=EnvoyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _ml_budget_fits(self) -> Config:
        # Past security_analysis_timeout_ms the whole message fails; the models must give up first.
        budget = self.security_analysis.ml_budget_ms
        if budget >= self.security_analysis_timeout_ms:
            raise ValueError(
                f"security_analysis.ml_budget_ms ({budget}) must be below "
                f"security_analysis_timeout_ms ({self.security_analysis_timeout_ms})"
            )
        return self

    @property
    def envoy_message_timeout_ms(self) -> int:
        """Envoy's per-message timeout: longer than the analysis budget, so we answer first."""
        if self.envoy.message_timeout_ms is not None:
            return self.envoy.message_timeout_ms
        return self.security_analysis_timeout_ms + 500


class ConfigError(Exception):
    """Every problem found in a configuration, each with its path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def load_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
    runtime_overlay: Path | None = None,
) -> Config:
    """Resolve the configuration: file → runtime feature overlay → EXTPROC_* → CLI overrides."""
    from extproc.features import overlay_settings

    problems: list[str] = []
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_yaml(Path(path), problems)
    for dotted, value in overlay_settings(runtime_overlay):
        _set_dotted(tree, dotted, value, f"runtime overlay {runtime_overlay}", problems)
    env = os.environ if environ is None else environ
    for dotted, value, origin in _env_overrides(env):
        _set_dotted(tree, dotted, value, origin, problems)
    for dotted, value in overrides:
        _set_dotted(tree, dotted, value, "command line", problems)
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        problems.extend(_describe(exc))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def parse_scalar(text: str) -> Any:
    """Interpret an env var or `--set` value as YAML (so `true`, `5`, `[a, b]` work)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def parse_settings(items: Iterable[str]) -> list[tuple[str, Any]]:
    """`PATH=VALUE` strings (as given to `--set`) as (path, value) overrides."""
    out: list[tuple[str, Any]] = []
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError([f"--set {item!r}: expected PATH=VALUE"])
        out.append((path.strip(), parse_scalar(value)))
    return out


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return {}
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problems.append(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a mapping, not {type(data).__name__}")
        return {}
    return data


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    found = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_CONFIG:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace(ENV_NESTING, ".")
        found.append((dotted, parse_scalar(value), f"environment variable {name}"))
    return found


def _set_dotted(
    tree: dict[str, Any], dotted: str, value: Any, origin: str, problems: list[str]
) -> None:
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        problems.append(f"{origin}: empty setting name")
        return
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            problems.append(f"{origin}: {dotted}: {key} is not a section")
            return
        node = child
    node[keys[-1]] = value


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        where = _format_loc(loc)
        if error["type"] == "extra_forbidden":
            hint = _did_you_mean(loc)
            lines.append(f"{where}: unknown setting{hint}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"{where}: {message}{shown}")
    return lines


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if model is None:
            return ""
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***` (for printing and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def masked_config(config: Config) -> dict[str, Any]:
    """The resolved configuration as JSON data with passwords, keys and hook URLs masked."""
    data = config.model_dump(mode="json")
    url = data["storage"].get("postgres_url")
    if url:
        data["storage"]["postgres_url"] = mask_url(url)
    if data["auth"].get("admin_key"):
        data["auth"]["admin_key"] = "***"
    alerts = data["alerts"]
    if alerts.get("webhook_url"):
        alerts["webhook_url"] = _mask_path(alerts["webhook_url"])
    for channel in alerts["channels"]:
        if channel.get("url"):
            channel["url"] = _mask_path(channel["url"])  # Slack hook URLs are credentials
        if channel.get("routing_key"):
            channel["routing_key"] = "***"
    return data


def _mask_path(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(mask_url(url))
    return urlunsplit(parts._replace(path="/***" if parts.path else "", query=""))


def dump_config(config: Config, *, mask_secrets: bool = False) -> str:
    """The resolved configuration as YAML (`mask_secrets` for `extproc validate`'s output)."""
    data = masked_config(config) if mask_secrets else config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
