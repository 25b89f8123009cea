"""The converted toxic-comment-classifier: manifest, scores and Keras-identical tokenisation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from extproc.models.manifest import Manifest, ModelError, read_manifest
from extproc.models.toxicity import _read_tokenizer_state


@pytest.fixture(scope="module")
def toxicity_dir(models_dir: Path) -> Path:
    return models_dir / "toxicity"


@pytest.fixture(scope="module")
def manifest(toxicity_dir: Path) -> Manifest:
    return read_manifest(toxicity_dir, verify=True)


def _ids(directory: Path, manifest: Manifest, text: str) -> list[int]:
    tokenizer = Tokenizer.from_file(str(directory / manifest.tokenizer_file))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return [i for i in ids if i not in manifest.drop_ids]


def _scores(directory: Path, manifest: Manifest, text: str) -> dict[str, float]:
    ids = _ids(directory, manifest, text)[-manifest.max_length :]
    row = [manifest.pad_id] * (manifest.max_length - len(ids)) + ids
    session = ort.InferenceSession(
        str(directory / manifest.model_file), providers=["CPUExecutionProvider"]
    )
    feed = {manifest.inputs["input_ids"]: np.asarray([row], dtype=np.int64)}
    (out,) = session.run([manifest.output], feed)
    return dict(zip(manifest.labels, (float(x) for x in out[0]), strict=True))


def test_manifest_verifies(manifest: Manifest) -> None:
    assert manifest.labels == [
        "toxic",
        "severe_toxic",
        "obscene",
        "threat",
        "insult",
        "identity_hate",
    ]
    assert manifest.positive_labels == manifest.labels
    assert (manifest.max_length, manifest.padding, manifest.padding_side) == (
        100,
        "max_length",
        "left",
    )
    assert manifest.activation == "none"  # the graph ends in the Keras model's sigmoid
    assert manifest.license == "MIT"
    check = manifest.verification
    assert check["max_abs_diff"] <= check["atol"] <= 1e-4
    assert check["tokenizer_mismatches"] == 0 and check["tokenizer_strings"] >= 300


def test_insult_scores_toxic(toxicity_dir: Path, manifest: Manifest) -> None:
    scores = _scores(toxicity_dir, manifest, "Shut up, you worthless stupid idiot!")
    assert scores["toxic"] > 0.5
    assert scores["insult"] > 0.5


def test_polite_sentence_scores_clean(toxicity_dir: Path, manifest: Manifest) -> None:
    scores = _scores(toxicity_dir, manifest, "Thank you for your help, have a wonderful day.")
    assert scores["toxic"] < 0.2
    assert max(scores.values()) < 0.2


def test_tokenizer_matches_keras(toxicity_dir: Path, manifest: Manifest) -> None:
    # From the package's pickled Keras Tokenizer (texts_to_sequences): "xyzzyplugh", "ΟΔΟΣ" and
    # "2024" are unknown, "fan's" is ranked beyond num_words=20000; Keras drops all of them.
    text = "Hello, WORLD! Don't you-dare call me a xyzzyplugh; the Metallica fan's ΟΔΟΣ (2024)..."
    assert _ids(toxicity_dir, manifest, text) == [302, 257, 59, 6, 2509, 459, 35, 5, 1, 12052]
    # Python's lower() turns a word-final capital sigma into "ς"; a per-character lowercase
    # would give "ετητησ", which is not the vocabulary's word.
    assert _ids(toxicity_dir, manifest, "ΕΤΗΤΗΣ and ετητησ") == [15308, 4]


def test_unpickler_refuses_foreign_globals(tmp_path: Path) -> None:
    # The tokenizer pickle is third-party data: only the Tokenizer and plain containers load.
    path = tmp_path / "tokenizer.pickle"
    path.write_bytes(pickle.dumps({"word_index": print}))
    with pytest.raises(ModelError, match=r"refusing to load builtins\.print"):
        _read_tokenizer_state(path)
