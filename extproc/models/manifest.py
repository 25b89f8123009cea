"""`manifest.json`: what a model directory holds and how to feed it.

Written by `extproc models install` (or derived from a Hugging Face style export by
`from_hf_export`) and read by the runtime loader; the runtime never guesses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"
Task = Literal["sequence-classification", "token-classification", "embedding-similarity"]
TASKS: tuple[str, ...] = ("sequence-classification", "token-classification", "embedding-similarity")


class ModelError(Exception):
    """A model directory that cannot be used (missing, corrupt, or inconsistent)."""


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to tokenise, batch and interpret one ONNX model."""

    name: str
    task: Task
    labels: list[str]  # output index -> label; for token tasks the BIO tags
    max_length: int  # tokens per window, special tokens included
    # Labels that count as a detection (sequence tasks); token tasks use every non-"O" tag.
    positive_labels: list[str] = field(default_factory=list)
    padding: Literal["max_length", "longest"] = "longest"
    padding_side: Literal["right", "left"] = "right"
    pad_id: int = 0
    prefix_ids: list[int] = field(default_factory=list)  # added before each window (BOS/CLS)
    suffix_ids: list[int] = field(default_factory=list)  # added after each window (SEP)
    drop_ids: list[int] = field(default_factory=list)  # removed after tokenising (OOV)
    stride: int = 64  # tokens shared by consecutive windows of a long text
    # ONNX input names by role: "input_ids" (required), "attention_mask", "token_type_ids".
    inputs: dict[str, str] = field(default_factory=lambda: {"input_ids": "input_ids"})
    output: str = "logits"
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    input_dtype: Literal["int64", "int32", "float32"] = "int64"
    pooling: Literal["mean", "cls", "none"] = "none"  # embedding tasks
    bank: str | None = None  # embedding tasks: .npy of L2-normalised attack embeddings
    # Embedding tasks: .npz with `weight` [dim] and `bias` [] of a logistic head; when present the
    # score is sigmoid(embedding . weight + bias) instead of the best cosine to the bank.
    head: str | None = None
    # Rows per session call; 0: no limit. Dynamically quantised models scale activations per
    # call, so batch peers would move each other's scores: such models run one row at a time.
    max_batch: int = 0
    model_file: str = "model.onnx"
    gpu_model_file: str | None = None  # e.g. an fp32 twin of an int8 model, used with CUDA
    tokenizer_file: str = "tokenizer.json"
    source: dict[str, str] = field(default_factory=dict)  # package, version, files it came from
    license: str = ""
    attribution: str = ""
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    verification: dict[str, Any] = field(default_factory=dict)  # how it matched its source

    def to_json(self) -> str:
        """Stable, human-readable JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = MANIFEST) -> Manifest:
        """Validate a parsed manifest; every problem is a ModelError naming the key."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{where}: unknown keys {unknown}")
        for key in ("name", "task", "labels", "max_length"):
            if key not in data:
                raise ModelError(f"{where}: missing {key!r}")
        if data["task"] not in TASKS:
            raise ModelError(f"{where}: task {data['task']!r} is not one of {list(TASKS)}")
        if not isinstance(data["max_length"], int) or data["max_length"] < 2:
            raise ModelError(f"{where}: max_length must be an integer >= 2")
        manifest = cls(**dict(data))
        if "input_ids" not in manifest.inputs:
            raise ModelError(f"{where}: inputs must name the input_ids tensor")
        room = manifest.max_length - len(manifest.prefix_ids) - len(manifest.suffix_ids)
        if room < 1 or manifest.stride >= room:
            raise ModelError(f"{where}: stride {manifest.stride} leaves no room in a window")
        bad = [p for p in manifest.positive_labels if p not in manifest.labels]
        if bad:
            raise ModelError(f"{where}: positive_labels {bad} are not in labels")
        if manifest.task == "embedding-similarity" and not manifest.bank:
            raise ModelError(f"{where}: an embedding-similarity model needs a bank file")
        return manifest


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash every file the manifest uses, then write `manifest.json` last (it marks completion)."""
    names = [manifest.model_file, manifest.tokenizer_file]
    names += [n for n in (manifest.bank, manifest.head, manifest.gpu_model_file) if n]
    files = {name: sha256_file(directory / name) for name in names}
    extra = {n: h for n, h in manifest.files.items() if n not in files}
    final = Manifest(**{**asdict(manifest), "files": {**extra, **files}})
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(final.to_json(), encoding="utf-8")
    tmp.replace(directory / MANIFEST)
    return final


def read_manifest(directory: Path, verify: bool = True) -> Manifest:
    """Load and check a model directory's manifest; `verify` re-hashes its files."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelError(f"{directory}: no {MANIFEST} (run `extproc models install`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    manifest = Manifest.from_mapping(data, str(path))
    if verify:
        for name, expected in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ModelError(f"{directory}: {name} is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ModelError(f"{directory}: {name} is corrupt (sha256 {actual[:12]}…)")
    return manifest
