"""The regex + model ensemble: which model looks at what, thresholds, merging, time budget."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from extproc.config import SecurityAnalysisConfig
from extproc.detect.batcher import MicroBatcher, Overloaded
from extproc.detect.findings import Category, Finding, Role, Severity
from extproc.detect.ml import Detection, OnnxModel, resolve_model_dir
from extproc.dialects.base import Segment
from extproc.models.manifest import ModelError
from extproc.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# Thresholds per operating point, chosen on the development split only (docs/detection.md);
# the evaluation sets are never used to set them.
THRESHOLDS: dict[str, dict[str, float]] = {
    # NanoGuard's probabilities bunch up near 1.0 (a quarter of honest dev look-alikes score
    # above 0.99), so its useful thresholds sit in the last decimals.
    "injection": {"high_recall": 0.9999, "balanced": 0.999999, "high_precision": 0.9999995},
    # The MiniLM attack head's probability; out-of-fold on dev it detects 69% at 10% FP,
    # 53% at 2.5% and 48% at 0.8%.
    "jailbreak": {"high_recall": 0.63, "balanced": 0.74, "high_precision": 0.80},
    "ner": {"high_recall": 0.5, "balanced": 0.7, "high_precision": 0.85},
    "toxicity": {"high_recall": 0.5, "balanced": 0.7, "high_precision": 0.9},
}
# Who may inject: text a user or a tool supplied. System and assistant text is the operator's.
_ATTACK_ROLES = (Role.USER, Role.TOOL_RESULT)
_ATTACK_FAMILY = {
    Category.PROMPT_INJECTION,
    Category.ROLE_INJECTION,
    Category.JAILBREAK,
    Category.DELIMITER_INJECTION,
    Category.ENCODING_ATTACK,
}
# NER entity labels in the regex tier's PII vocabulary. Labels not listed (URL, CITY, STATE,
# ZIP_CODE) are not reported: alone they identify nobody and would redact half of all travel
# questions.
PII_TYPES = {
    "GIVEN_NAME": "person_name",
    "SURNAME": "person_name",
    "NAME": "person_name",
    "PERSON": "person_name",
    "PER": "person_name",
    "EMAIL": "email",
    "PHONE": "phone_number",
    "TAX_ID": "tax_id",
    "BANK_ACCOUNT": "bank_account",
    "ROUTING_NUMBER": "routing_number",
    "GOVERNMENT_ID": "government_id",
    "PASSPORT": "passport",
    "DRIVERS_LICENSE": "drivers_license",
    "BUILDING_NUMBER": "street_address",
    "STREET_NAME": "street_address",
    "SECONDARY_ADDRESS": "street_address",
    "STREET_ADDRESS": "street_address",
    "ADDRESS": "street_address",
}
# What may separate two entity pieces that are one thing ("Maria" "Gonzalez", "221" "Baker St").
_JOINABLE_GAP = re.compile(r"[\s,.#-]{0,3}")
ROLES = ("injection", "jailbreak", "ner", "toxicity")


@dataclass(slots=True)
class Slot:
    """One configured model role and how it is doing."""

    role: str
    name: str  # what config asked for
    threshold: float
    model: OnnxModel | None = None
    batcher: MicroBatcher[str, list[Detection]] | None = None
    error: str | None = None
    load_ms: float = 0.0

    def status(self) -> dict[str, Any]:
        """The /health entry for this model."""
        if self.batcher is None:
            return {"model": self.name, "loaded": False, "error": self.error}
        return {
            "model": self.name,
            "loaded": True,
            "providers": self.model.providers if self.model else [],
            "threshold": self.threshold,
            "load_ms": round(self.load_ms, 1),
            "queue": self.batcher.pending if self.batcher else 0,
        }


@dataclass(frozen=True, slots=True)
class MlResult:
    """Findings for the verdict now, plus the models' run if it is still going (recorded later)."""

    findings: list[Finding]
    late: asyncio.Task[list[Finding]] | None = None


class Ensemble:
    """Loaded models and the rules for combining them with the regex tier."""

    def __init__(self, config: SecurityAnalysisConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.budget = config.ml_budget_ms / 1000
        point = config.operating_point
        wanted = {
            "injection": (config.ml_enabled, config.ml_model, config.ml_threshold),
            "jailbreak": (
                config.jailbreak_enabled,
                config.jailbreak_model,
                config.jailbreak_threshold,
            ),
            "ner": (config.ner_enabled, config.ner_model, config.ner_threshold),
            "toxicity": (config.toxicity_enabled, config.toxicity_model, config.toxicity_threshold),
        }
        self.slots: dict[str, Slot] = {}
        if not (config.ml_enabled and config.ml_preload):
            return
        for role, (enabled, name, threshold) in wanted.items():
            if enabled:
                chosen = THRESHOLDS[role][point] if threshold is None else threshold
                self.slots[role] = Slot(role, name, chosen)

    def load(self) -> None:
        """Load every configured model; a failure leaves that role regex-only, loudly."""
        config = self.config
        for slot in self.slots.values():
            started = time.perf_counter()
            try:
                directory = resolve_model_dir(slot.name, config.ml_cache_dir)
                slot.model = OnnxModel(
                    directory, device=config.ml_device, threads=config.ml_threads
                )
                self._check_task(slot)
                _warm_up(slot.model)
            except ModelError as exc:
                slot.model, slot.error = None, str(exc)
                log.warning(
                    "ML model %s (%s) not loaded, that check is regex-only: %s",
                    slot.name,
                    slot.role,
                    exc,
                )
                self.metrics.inc(self.metrics.ml_load_failures, slot.name, slot.role)
                self.metrics.child(self.metrics.ml_models_loaded, slot.name, slot.role).set(0)
                continue
            slot.load_ms = (time.perf_counter() - started) * 1000
            slot.batcher = self._batcher(slot, slot.model)
            self.metrics.child(self.metrics.ml_models_loaded, slot.name, slot.role).set(1)
            log.info(
                "ML model %s loaded for %s in %.0f ms (%s)",
                slot.name,
                slot.role,
                slot.load_ms,
                slot.model.providers[0],
            )

    def _check_task(self, slot: Slot) -> None:
        assert slot.model is not None
        task = slot.model.manifest.task
        expected = {
            "injection": "sequence-classification",
            "toxicity": "sequence-classification",
            "ner": "token-classification",
            "jailbreak": ("embedding-similarity", "sequence-classification"),
        }[slot.role]
        if task not in expected:
            raise ModelError(f"{slot.name}: a {task} model cannot serve as the {slot.role} model")

    def _batcher(self, slot: Slot, model: OnnxModel) -> MicroBatcher[str, list[Detection]]:
        metrics = self.metrics
        seconds = metrics.child(metrics.ml_batch_seconds, slot.name)
        sizes = metrics.child(metrics.ml_batch_size, slot.name)

        def observed(size: int, elapsed: float) -> None:
            seconds.observe(elapsed)
            sizes.observe(size)

        max_batch = self.config.ml_max_batch
        return MicroBatcher(
            slot.name,
            lambda texts: model.predict(texts, max_batch=max_batch),
            max_batch=max_batch,
            max_wait_us=self.config.ml_max_wait_us,
            on_batch=observed,
        )

    def view(self, config: SecurityAnalysisConfig) -> Ensemble:
        """The loaded models that `config` still switches on (runtime flags); no reloading.

        Turning a model on that was not loaded at startup needs a restart.
        """
        switches = {
            "injection": config.ml_enabled,
            "jailbreak": config.jailbreak_enabled,
            "ner": config.ner_enabled,
            "toxicity": config.toxicity_enabled,
        }
        other = copy.copy(self)
        other.slots = {
            role: slot
            for role, slot in self.slots.items()
            if config.ml_enabled and switches.get(role, True)
        }
        return other

    # -- status ------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether any model is loaded."""
        return any(s.batcher is not None for s in self.slots.values())

    def status(self) -> dict[str, Any]:
        """The /health view: configured models, which loaded, and whether we are degraded."""
        if not self.slots:
            return {"enabled": False, "mode": "regex-only"}
        degraded = [s.role for s in self.slots.values() if s.batcher is None]
        return {
            "enabled": True,
            "mode": "ensemble"
            if not degraded
            else ("regex-only" if not self.active else "partial"),
            "degraded": degraded,
            "timing": self.config.ml_timing,
            "budget_ms": self.config.ml_budget_ms,
            "operating_point": self.config.operating_point,
            "models": {role: slot.status() for role, slot in self.slots.items()},
        }

    def skipped(self, reason: str) -> None:
        """Count a request that did not need the models (e.g. regex already blocked it)."""
        for slot in self.slots.values():
            if slot.batcher is not None and slot.role != "toxicity":
                self.metrics.inc(self.metrics.ml_skipped, slot.name, reason)

    def close(self) -> None:
        """Stop the batcher threads."""
        for slot in self.slots.values():
            if slot.batcher is not None:
                slot.batcher.close()

    # -- analysis ----------------------------------------------------------------------------
    async def request(self, segments: Sequence[Segment], regex: list[Finding]) -> MlResult:
        """Regex findings merged with whatever the request models find within the budget."""
        jobs = [
            (slot, [i for i, s in enumerate(segments) if s.text and s.role in _ATTACK_ROLES])
            for role in ("injection", "jailbreak", "ner")
            if (slot := self.slots.get(role)) is not None and slot.batcher is not None
        ]
        return await self._analyse(segments, regex, jobs, "request")

    async def response(self, segments: Sequence[Segment], regex: list[Finding]) -> MlResult:
        """As `request`, for a buffered response: the toxicity model on the model's output."""
        slot = self.slots.get("toxicity")
        if slot is None or slot.batcher is None:
            return MlResult(regex)
        picked = [i for i, s in enumerate(segments) if s.text and s.role is Role.OUTPUT]
        return await self._analyse(segments, regex, [(slot, picked)], "response")

    def response_later(self, segments: Sequence[Segment]) -> asyncio.Task[list[Finding]] | None:
        """Start the response models on text already sent (a stream); record, never wait."""
        slot = self.slots.get("toxicity")
        if slot is None or slot.batcher is None:
            return None
        picked = [i for i, s in enumerate(segments) if s.text and s.role is Role.OUTPUT]
        if not picked:
            return None
        return asyncio.ensure_future(self._run(segments, [(slot, picked)]))

    async def _analyse(
        self,
        segments: Sequence[Segment],
        regex: list[Finding],
        jobs: list[tuple[Slot, list[int]]],
        direction: str,
    ) -> MlResult:
        jobs = [(slot, picked) for slot, picked in jobs if picked]
        if not jobs:
            return MlResult(regex)
        started = time.perf_counter()
        task = asyncio.ensure_future(self._run(segments, jobs))
        if self.config.ml_timing == "async":
            return MlResult(regex, task)
        done, _ = await asyncio.wait({task}, timeout=self.budget)
        self.metrics.child(self.metrics.ml_wait_seconds, direction).observe(
            time.perf_counter() - started
        )
        if task not in done:
            for slot, _picked in jobs:
                self.metrics.inc(self.metrics.ml_skipped, slot.name, "late")
            return MlResult(regex, task)
        return MlResult(merge(regex, task.result()))

    async def _run(
        self, segments: Sequence[Segment], jobs: list[tuple[Slot, list[int]]]
    ) -> list[Finding]:
        runs = [self._one(slot, segments, picked) for slot, picked in jobs]
        found: list[Finding] = []
        for result in await asyncio.gather(*runs):
            found.extend(result)
        return found

    async def _one(
        self, slot: Slot, segments: Sequence[Segment], picked: list[int]
    ) -> list[Finding]:
        assert slot.batcher is not None
        metrics = self.metrics
        texts = [segments[i].text for i in picked]
        budget = self.budget if self.config.ml_timing == "inline" else None
        depth = metrics.child(metrics.ml_queue_depth, slot.name)
        try:
            depth.set(slot.batcher.pending + len(texts))
            detections = await slot.batcher.submit(texts, budget)
        except Overloaded:
            metrics.inc(metrics.ml_skipped, slot.name, "shed")
            return []
        except Exception:
            # A model failure must not fail the request: regex still decides.
            log.exception("ML model %s failed; regex verdict stands", slot.name)
            metrics.inc(metrics.ml_skipped, slot.name, "failed")
            return []
        finally:
            depth.set(slot.batcher.pending)
        findings: list[Finding] = []
        for index, found in zip(picked, detections, strict=True):
            findings.extend(self.findings(slot, found, index, segments[index].text))
        return findings

    def findings(
        self, slot: Slot, detections: Sequence[Detection], segment: int | None, text: str = ""
    ) -> list[Finding]:
        """Detections at or above the slot's threshold, as findings (entity pieces joined)."""
        out: list[Finding] = []
        for d in detections:
            if d.score < slot.threshold:
                continue
            finding = to_finding(slot.role, slot.name, d, segment)
            if finding is None:
                continue
            last = out[-1] if out else None
            if (
                slot.role == "ner"
                and last is not None
                and last.type == finding.type
                and 0 <= finding.start - last.end <= 3
                and _JOINABLE_GAP.fullmatch(text[last.end : finding.start])
            ):
                out[-1] = replace(
                    last, end=finding.end, confidence=min(last.confidence, finding.confidence)
                )
                continue
            out.append(finding)
        return out


def _warm_up(model: OnnxModel) -> None:
    """Run once: the first run allocates and plans, and a model that cannot run fails here."""
    try:
        model.predict(["warm-up"])
    except Exception as exc:  # onnxruntime raises its own bare types
        raise ModelError(f"{model.directory}: fails on a test input: {exc}") from None


def to_finding(role: str, model: str, d: Detection, segment: int | None) -> Finding | None:
    """A model detection in the regex tier's vocabulary."""
    detector = f"ml:{model}"
    if role == "ner":
        kind = d.label.upper()
        pii_type = PII_TYPES.get(kind)
        if pii_type is None:
            return None
        return Finding(
            pii_type,
            Category.PII,
            Severity.MEDIUM,
            d.score,
            d.start,
            d.end,
            f"ml.{model}.{kind.lower()}",
            detector,
            segment,
        )
    if role == "toxicity":
        severe = d.label in ("severe_toxic", "threat")
        return Finding(
            "toxicity",
            Category.TOXICITY,
            Severity.HIGH if severe else Severity.MEDIUM,
            d.score,
            d.start,
            d.end,
            f"ml.{model}.{d.label}",
            detector,
            segment,
        )
    jailbreak = role == "jailbreak" or "jailbreak" in d.label.lower()
    kind, category = (
        ("jailbreak", Category.JAILBREAK)
        if jailbreak
        else ("prompt_injection", Category.PROMPT_INJECTION)
    )
    return Finding(
        kind, category, Severity.HIGH, d.score, d.start, d.end, f"ml.{model}", detector, segment
    )


def _family(category: Category) -> str:
    return "attack" if category in _ATTACK_FAMILY else category.value


def merge(regex: Sequence[Finding], ml: Sequence[Finding]) -> list[Finding]:
    """Regex findings always stay; a model finding that overlaps one of the same family joins it.

    The joined finding keeps the regex span and rule (precise evidence), takes the higher
    confidence and names both detectors (`regex+ml:nanoguard`), so `agreement` counts them.
    """
    out = list(regex)
    for finding in ml:
        joined = False
        for i, other in enumerate(out):
            if (
                other.segment == finding.segment
                and _family(other.category) == _family(finding.category)
                and other.start < finding.end
                and finding.start < other.end
                and finding.detector not in other.detector.split("+")
            ):
                out[i] = replace(
                    other,
                    detector=f"{other.detector}+{finding.detector}",
                    confidence=max(other.confidence, finding.confidence),
                )
                joined = True
        if not joined:
            out.append(finding)
    return out
