"""ONNX models behind one loader: tokenise into windows, run in batches, read the outputs.

Everything here is synchronous and CPU-bound; `detect/batcher.py` runs it off the event loop.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from extproc.models.manifest import Manifest, ModelError, read_manifest

log = logging.getLogger(__name__)

# A text longer than this many windows is scanned at its head and tail only: bounded cost per
# request matters more inline than the middle of a megabyte body (regex still sees all of it).
MAX_WINDOWS = 64
_BENIGN_LABELS = {"safe", "benign", "legit", "legitimate", "label_0", "negative", "o", "clean"}


@dataclass(frozen=True, slots=True)
class Detection:
    """A model's score for one label over a character span of the text it was given."""

    label: str
    score: float
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Window:
    """Token ids of one window plus the character offsets of each content token."""

    text_index: int
    ids: list[int]  # prefix + content + suffix, unpadded
    offsets: list[tuple[int, int]]  # one per content token
    start: int  # character span the window covers
    end: int


def choose_providers(device: str) -> list[str]:
    """Execution providers for `device` (auto|cpu|cuda); cuda without a GPU build is an error."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ModelError(
            "ml_device is cuda but onnxruntime has no CUDA provider: uninstall onnxruntime, "
            "then install onnxruntime-gpu"
        )
    return ["CPUExecutionProvider"]


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a small CPU: full graph optimisation, no spinning threads.

    Spinning intra-op threads would keep both cores busy between batches and starve Envoy and
    the event loop, which share them.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def resolve_model_dir(name_or_path: str, cache_dir: Path) -> Path:
    """A model name under `cache_dir`, or an explicit directory path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_absolute() or name_or_path.startswith((".", "~")) or "/" in name_or_path:
        return candidate
    return cache_dir.expanduser() / name_or_path


class OnnxModel:
    """One model directory, loaded: `predict(texts)` gives each text its detections."""

    def __init__(
        self,
        directory: Path,
        *,
        device: str = "auto",
        threads: int = 0,
        verify: bool = True,
    ) -> None:
        if not directory.is_dir():
            raise ModelError(f"{directory}: no such model directory (run `extproc models install`)")
        self.directory = directory
        if (directory / "manifest.json").is_file():
            self.manifest = read_manifest(directory, verify=verify)
        else:
            self.manifest = manifest_from_hf_export(directory)
        m = self.manifest
        self.name = m.name
        self.providers = choose_providers(device)
        model_file = m.model_file
        if m.gpu_model_file and self.providers[0] == "CUDAExecutionProvider":
            model_file = m.gpu_model_file
        try:
            self.tokenizer = Tokenizer.from_file(str(directory / m.tokenizer_file))
            self.session = ort.InferenceSession(
                str(directory / model_file), session_options(threads), providers=self.providers
            )
        except Exception as exc:  # onnxruntime and tokenizers raise their own bare types
            raise ModelError(f"{directory}: cannot load: {exc}") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        names = {i.name for i in self.session.get_inputs()}
        missing = [n for n in m.inputs.values() if n not in names]
        if missing:
            raise ModelError(
                f"{directory}: the model has no input {missing} (it has {sorted(names)})"
            )
        self._dtype = np.dtype(m.input_dtype)
        # Special ids never come from the text itself: a user typing "[SEP]" or "[CLS]" (which
        # the tokenizer maps to the real special token) must not re-frame the model's input.
        self._drop = {*m.drop_ids, *m.prefix_ids, *m.suffix_ids, m.pad_id}
        self.bank: np.ndarray | None = None
        self.head: tuple[np.ndarray, float] | None = None
        if m.task == "embedding-similarity" and m.bank:
            bank = np.load(directory / m.bank, allow_pickle=False)
            if bank.ndim != 2 or not len(bank):
                raise ModelError(f"{directory}: {m.bank} must be a non-empty 2-D array")
            self.bank = bank.astype(np.float32)
            if m.head:
                with np.load(directory / m.head, allow_pickle=False) as head:
                    weight = np.asarray(head["weight"], dtype=np.float32)
                    bias = float(head["bias"])
                if weight.shape != (bank.shape[1],):
                    raise ModelError(
                        f"{directory}: {m.head} weight must have shape ({bank.shape[1]},)"
                    )
                self.head = (weight, bias)
        self.positive = [i for i, label in enumerate(m.labels) if label in m.positive_labels]

    # -- tokenising --------------------------------------------------------------------------
    def windows(self, texts: Sequence[str]) -> list[Window]:
        """Every text cut into overlapping windows of at most max_length tokens."""
        m = self.manifest
        room = m.max_length - len(m.prefix_ids) - len(m.suffix_ids)
        step = room - m.stride
        out: list[Window] = []
        for index, encoding in enumerate(
            self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ):
            pairs = [
                (i, o)
                for i, o in zip(encoding.ids, encoding.offsets, strict=True)
                if i not in self._drop
            ]
            starts = list(range(0, max(len(pairs) - m.stride, 1), step)) or [0]
            if len(starts) > MAX_WINDOWS:
                half = MAX_WINDOWS // 2
                starts = starts[:half] + starts[-half:]
            for begin in starts:
                chunk = pairs[begin : begin + room]
                ids = [i for i, _ in chunk]
                offsets = [o for _, o in chunk]
                span = (offsets[0][0], offsets[-1][1]) if offsets else (0, len(texts[index]))
                out.append(
                    Window(index, [*m.prefix_ids, *ids, *m.suffix_ids], offsets, span[0], span[1])
                )
        return out

    def _feeds(self, windows: Sequence[Window]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        m = self.manifest
        width = m.max_length if m.padding == "max_length" else max(len(w.ids) for w in windows)
        ids = np.full((len(windows), width), m.pad_id, dtype=self._dtype)
        mask = np.zeros((len(windows), width), dtype=self._dtype)
        for row, window in enumerate(windows):
            n = len(window.ids)
            if m.padding_side == "left":
                ids[row, width - n :] = window.ids
                mask[row, width - n :] = 1
            else:
                ids[row, :n] = window.ids
                mask[row, :n] = 1
        feeds = {m.inputs["input_ids"]: ids}
        if "attention_mask" in m.inputs:
            feeds[m.inputs["attention_mask"]] = mask
        if "token_type_ids" in m.inputs:
            feeds[m.inputs["token_type_ids"]] = np.zeros_like(ids)
        return feeds, mask

    def run(self, windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
        """The model's raw output for a batch of windows, and the attention mask used."""
        feeds, mask = self._feeds(windows)
        (output,) = self.session.run([self.manifest.output], feeds)
        return np.asarray(output, dtype=np.float32), mask

    # -- predicting --------------------------------------------------------------------------
    def predict(self, texts: Sequence[str], max_batch: int = 16) -> list[list[Detection]]:
        """Detections per text: positive labels' best window, or entities. No threshold yet."""
        windows = self.windows(texts)
        results: list[list[Detection]] = [[] for _ in texts]
        if self.manifest.max_batch:
            max_batch = min(max_batch, self.manifest.max_batch)
        for begin in range(0, len(windows), max_batch):
            chunk = windows[begin : begin + max_batch]
            output, mask = self.run(chunk)
            if self.manifest.task == "token-classification":
                self._entities(chunk, output, results)
            elif self.manifest.task == "embedding-similarity":
                self._similar(chunk, output, mask, results)
            else:
                self._classes(chunk, output, results)
        return [
            _best_per_label(r) if self.manifest.task != "token-classification" else _dedupe(r)
            for r in results
        ]

    def _classes(
        self, windows: Sequence[Window], output: np.ndarray, results: list[list[Detection]]
    ) -> None:
        probs = _activate(output, self.manifest.activation)
        for window, row in zip(windows, probs, strict=True):
            for index in self.positive:
                label = self.manifest.labels[index]
                results[window.text_index].append(
                    Detection(label, float(row[index]), window.start, window.end)
                )

    def _similar(
        self,
        windows: Sequence[Window],
        output: np.ndarray,
        mask: np.ndarray,
        results: list[list[Detection]],
    ) -> None:
        assert self.bank is not None
        if output.ndim == 3:  # token embeddings: mean over real tokens
            weights = mask[..., None].astype(np.float32)
            output = (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(output, axis=1, keepdims=True)
        embeddings = output / np.maximum(norms, 1e-12)
        if self.head is not None:
            weight, bias = self.head
            best = 1.0 / (1.0 + np.exp(-(embeddings @ weight + bias)))
        else:
            best = (embeddings @ self.bank.T).max(axis=1)
        label = self.manifest.positive_labels[0] if self.manifest.positive_labels else "attack"
        for window, score in zip(windows, best, strict=True):
            results[window.text_index].append(
                Detection(label, float(score), window.start, window.end)
            )

    def _entities(
        self, windows: Sequence[Window], output: np.ndarray, results: list[list[Detection]]
    ) -> None:
        labels = self.manifest.labels
        probs = _activate(output, "softmax")
        lead = len(self.manifest.prefix_ids)
        for row, window in enumerate(windows):
            offset = 0
            if self.manifest.padding_side == "left":
                offset = probs.shape[1] - len(window.ids)
            current: list[Any] | None = None  # [label, start, end, scores]
            found: list[Detection] = []
            for k, (start, end) in enumerate(window.offsets):
                p = probs[row, offset + lead + k]
                tag = labels[int(p.argmax())]
                score = float(p.max())
                kind = tag[2:] if tag[:2] in ("B-", "I-") else tag
                if tag == "O" or tag.lower() in _BENIGN_LABELS:
                    _close(current, found)
                    current = None
                    continue
                contiguous = current is not None and current[0] == kind and not tag.startswith("B-")
                if contiguous and current is not None:
                    current[2] = end
                    current[3].append(score)
                else:
                    _close(current, found)
                    current = [kind, start, end, [score]]
            _close(current, found)
            results[window.text_index].extend(found)


def _close(current: list[Any] | None, found: list[Detection]) -> None:
    if current is not None:
        found.append(Detection(current[0], float(np.mean(current[3])), current[1], current[2]))


def _activate(output: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        shifted = output - output.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        return np.asarray(exp / exp.sum(axis=-1, keepdims=True))
    if activation == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-output)))
    return output


def _best_per_label(detections: list[Detection]) -> list[Detection]:
    best: dict[str, Detection] = {}
    for d in detections:
        if d.label not in best or d.score > best[d.label].score:
            best[d.label] = d
    return list(best.values())


def _dedupe(detections: list[Detection]) -> list[Detection]:
    """Entities seen twice in overlapping windows: keep the higher-scoring copy."""
    kept: dict[tuple[str, int, int], Detection] = {}
    for d in detections:
        key = (d.label, d.start, d.end)
        if key not in kept or d.score > kept[key].score:
            kept[key] = d
    return sorted(kept.values(), key=lambda d: (d.start, d.end))


def manifest_from_hf_export(directory: Path) -> Manifest:
    """Derive a manifest for a Hugging Face style ONNX export (config.json + tokenizer.json)."""
    model = directory / "model.onnx"
    if not model.is_file() and (directory / "onnx" / "model.onnx").is_file():
        model = directory / "onnx" / "model.onnx"
    tokenizer_file = directory / "tokenizer.json"
    config_file = directory / "config.json"
    for needed in (model, tokenizer_file, config_file):
        if not needed.is_file():
            raise ModelError(f"{directory}: no manifest.json, and no {needed.name} for a HF export")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        inputs = [
            i.name
            for i in ort.InferenceSession(
                str(model), providers=["CPUExecutionProvider"]
            ).get_inputs()
        ]
    except Exception as exc:  # any unreadable part makes the directory unusable
        raise ModelError(f"{directory}: unreadable HF export: {exc}") from None
    id2label = config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    token_task = any("TokenClassification" in a for a in config.get("architectures", []))
    positive = (
        [] if token_task else [label for label in labels if label.lower() not in _BENIGN_LABELS]
    )
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    cut = _find(full, bare)
    prefix, suffix = (full[:cut], full[cut + len(bare) :]) if cut >= 0 else ([], [])
    max_length = min(int(config.get("max_position_embeddings", 512)), 512)
    if config.get("model_type") in ("roberta", "xlm-roberta"):
        max_length = min(max_length, 512) - 2  # RoBERTa counts positions from padding_idx+1
    pad = config.get("pad_token_id")
    role_names = {"input_ids", "attention_mask", "token_type_ids"}
    return Manifest(
        name=directory.name,
        task="token-classification" if token_task else "sequence-classification",
        labels=labels,
        positive_labels=positive,
        max_length=max_length,
        pad_id=int(pad) if isinstance(pad, int) else 0,
        prefix_ids=prefix,
        suffix_ids=suffix,
        stride=min(64, max_length // 4),
        inputs={name: name for name in inputs if name in role_names},
        output="logits",
        model_file=str(model.relative_to(directory)),
        source={"path": str(directory)},
    )


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1
