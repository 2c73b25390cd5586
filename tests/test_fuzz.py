"""Fuzzing what a user controls: configs, datasets, token sequences and HTTP request bodies.

Every failure must be a clear error: a `DistillError` (or, from `distill serve`, a 4xx JSON error
body), never a traceback from inside torch, pydantic, yaml or json, never a 5xx, never a hang.

    pytest tests/test_fuzz.py               # default suite: a few dozen examples per property
    pytest tests/test_fuzz.py -m slow       # the same properties with many more examples
    python benchmarks/fuzz.py               # the slow run, counted (benchmarks/results/fuzz.json)

Each property counts its cases; with DISTILL_FUZZ_LOG=FILE set, the counts (cases, clear errors,
successes, unclear errors with where they came from, hangs) are written there at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import tempfile
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from distill.core.errors import DistillError
from distill.recipes.classify.config import (
    RunConfig,
    default_config_dict,
    load_config,
    validate_config,
)

FAST = 25  # examples per property in the default suite; the slow suite runs MANY (default 400)
MANY = int(os.environ.get("DISTILL_FUZZ_EXAMPLES", "400"))
CASES: Counter = Counter()  # (property, outcome) → count
UNCLEAR: dict[str, set[str]] = {}  # property → distinct "Type at file:line: message" of unclear errors
CASE_TIMEOUT_S = 60  # one case taking longer is a hang


class Hang(Exception):
    """A case ran past CASE_TIMEOUT_S."""


def fuzz(prop: Callable[..., None], fast: int = FAST, many: int = MANY, **strategies: Any):
    """The property as two tests: a quick one for the default suite and a slow one with many examples."""

    def make(n: int) -> Callable[..., None]:
        return settings(max_examples=n, deadline=None, database=None, derandomize=n == fast,
                        suppress_health_check=list(HealthCheck))(given(**strategies)(prop))

    return make(fast), pytest.mark.slow(make(many))


@contextmanager
def time_limit(seconds: float):
    """Raise Hang in this (main) thread if the block runs longer than `seconds`."""
    def on_alarm(*_: Any) -> None:
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def expect_clear(name: str, call: Callable[[], Any],
                 clear: tuple[type[BaseException], ...] = (DistillError,)) -> None:
    """Run one case: success or a clear error with a message pass; anything else is recorded and fails."""
    CASES[(name, "cases")] += 1
    try:
        with time_limit(CASE_TIMEOUT_S):
            call()
    except Hang:
        CASES[(name, "hangs")] += 1
        raise
    except clear as exc:
        if not str(exc).strip():
            CASES[(name, "unclear_errors")] += 1
            UNCLEAR.setdefault(name, set()).add(_where(exc) + " (no message)")
            raise AssertionError(f"{type(exc).__name__} without a message") from exc
        CASES[(name, "clear_errors")] += 1
        return
    except Exception as exc:
        CASES[(name, "unclear_errors")] += 1
        UNCLEAR.setdefault(name, set()).add(_where(exc))
        raise
    CASES[(name, "ok")] += 1


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(exc)[:120]}"


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    path = os.environ.get("DISTILL_FUZZ_LOG")
    if path:
        names = sorted({name for name, _ in CASES})
        out = {name: {k: CASES[(name, k)] for k in ("cases", "ok", "clear_errors", "unclear_errors", "hangs")}
               | {"unclear": sorted(UNCLEAR.get(name, ()))} for name in names}
        Path(path).write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------- (a) configs


def _keys(model: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config model (the override vocabulary)."""
    out = []
    for name, f in model.model_fields.items():
        out.append(prefix + name)
        sub = f.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            out += _keys(sub, f"{prefix}{name}.")
    return out


KEYS = _keys(RunConfig)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(KEYS + ["kind"]) | st.text(max_size=6), inner, max_size=3),
                       max_leaves=12)
TRICKY_YAML = st.sampled_from(["[", "{a: ", "]", "!!python/object:os.system", "!!binary x", "*a", "&a", "1e999",
                               ".nan", "-.inf", "0x1F", "'\\0'", '"\\0"', "~", "2001-01-01", "!!set {a, b}",
                               "{widths: x}", "[[1, 2], [3]]", "- a\n- b", "a: b: c", "\t", "%YAML 1.2"])
VALUES = TRICKY_YAML | st.text(max_size=20) | JSONISH.map(json.dumps)
OVERRIDES = st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS) | st.text(max_size=15), VALUES)
                     | st.text(max_size=20), max_size=4)


def _overrides(overrides: list[str]) -> None:
    expect_clear("config overrides", lambda: load_config(None, overrides))


def _set(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return raw


def _nested(changes: list[tuple[str, Any]], whole: Any) -> None:
    raw = default_config_dict()
    for key, value in changes:
        _set(raw, key, value)
    expect_clear("config mappings", lambda: validate_config(raw if whole is None else whole))


def _yaml_file(content: bytes, overrides: list[str]) -> None:
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.textkd.config import load_textkd_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(content)
        for loader in (load_config, load_textkd_config, load_lm_config):
            expect_clear("config files", lambda: loader(path, overrides))


test_config_overrides, test_config_overrides_many = fuzz(_overrides, overrides=OVERRIDES)
test_config_mappings, test_config_mappings_many = fuzz(
    _nested, changes=st.lists(st.tuples(st.sampled_from(KEYS), JSONISH), max_size=4),
    whole=st.none() | st.none() | JSONISH)
test_config_files, test_config_files_many = fuzz(
    _yaml_file, fast=15, many=MANY // 2,
    content=st.binary(max_size=60) | st.text(max_size=60).map(str.encode)
    | st.builds(lambda k, v: f"{k}: {v}\n".encode(), st.sampled_from(KEYS), VALUES),
    overrides=st.lists(st.text(max_size=10), max_size=1))


# --------------------------------------------------------------------------- (b) datasets

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.int8, np.bool_,
                          np.complex64, np.str_, object])


@st.composite
def array_data(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 30))
    shape = (n, *draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = draw(DTYPES)
    if dtype is object:
        x = np.array(draw(st.lists(JSONISH, min_size=n, max_size=n)) + [None], dtype=object)[:n]
    elif dtype is np.str_:
        x = draw(hnp.arrays(np.dtype("U3"), shape))
    else:
        x = draw(hnp.arrays(dtype, shape))  # floats include NaN and ±inf
    m = draw(st.sampled_from([n, n, n, max(0, n - 1), n + 2]))
    label_shape = draw(st.sampled_from([(m,), (m,), (m, 2), ()]))
    kind = draw(st.sampled_from(["int", "int", "float", "bool", "uint8"]))
    dtype, elements = {"int": (np.int64, st.integers(-2, 12) | st.just(2**40)),
                       "float": (np.float32, st.floats(-2, 12, width=32) | st.sampled_from([np.nan, 0.5])),
                       "bool": (np.bool_, st.booleans()), "uint8": (np.uint8, st.integers(0, 255))}[kind]
    return x, draw(hnp.arrays(dtype, label_shape, elements=elements))


def _one_step(model: torch.nn.Module, train: Any, num_classes: int, val: Any = None) -> None:
    from distill.losses.methods import CE
    from distill.training.classify import fit
    from distill.training.config import TrainConfig

    fit(model, train, objective=CE(), config=TrainConfig(epochs=1, batch_size=64, precision="no"),
        num_classes=num_classes, val_data=val, device="cpu", quiet=True)


def _arrays_then_fit(data: tuple[np.ndarray, np.ndarray], fractions: tuple[float, float]) -> None:
    from distill.data.tables import from_arrays
    from distill.models.config import ModelConfig
    from distill.models.zoo import build_model

    def case() -> None:
        splits = from_arrays(*data, val_fraction=fractions[0], test_fraction=fractions[1])
        spec = ModelConfig(arch="mlp", kwargs={"hidden": [4]})
        model = build_model(spec, splits.input_shape, splits.num_classes)
        _one_step(model, splits.train, splits.num_classes, splits.val)

    expect_clear("datasets: from_arrays + fit", case)


def _dataset_into_a_model(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    """A user's tensors and a model built for digits (1×8×8, 10 classes): shapes and labels may not fit."""
    from distill.data.arrays import ArrayDataset
    from distill.models.config import ModelConfig
    from distill.models.zoo import build_model

    def case() -> None:
        model = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [4]}), (1, 8, 8), num_classes)
        _one_step(model, ArrayDataset(x, y), num_classes)

    expect_clear("datasets: ArrayDataset + fit", case)


TENSOR_DTYPES = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool,
                                 torch.float16])


@st.composite
def tensors(draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(0, 20))
    shape = draw(st.sampled_from([(1, 8, 8), (64,), (8, 8), (1, 8, 9), (3, 8, 8), ()]))
    values = st.floats(-1e3, 1e3) | st.just(np.nan)
    x = torch.from_numpy(draw(hnp.arrays(np.float32, (n, *shape), elements=values)))
    x = x.to(draw(TENSOR_DTYPES))
    extra = draw(st.sampled_from([0, 0, 1]))  # now and then a label too many
    y = torch.tensor(draw(st.lists(st.integers(-2, 12), min_size=n, max_size=n + extra)))
    return x, y.to(draw(st.sampled_from([torch.int64, torch.int32, torch.float32])))


FRACTIONS = st.tuples(st.sampled_from([0.1, 0.3, 0.5, 0.9]), st.sampled_from([0.1, 0.2, 0.5]))
test_from_arrays_then_fit, test_from_arrays_then_fit_many = fuzz(
    _arrays_then_fit, data=array_data(), fractions=FRACTIONS)
def _tensors_into_a_model(xy: tuple[torch.Tensor, torch.Tensor], k: int) -> None:
    _dataset_into_a_model(*xy, k)


test_datasets_into_a_model, test_datasets_into_a_model_many = fuzz(
    _tensors_into_a_model, xy=tensors(), k=st.sampled_from([10, 10, 1, 3]))


# --------------------------------------------------------------------------- (c) token sequences

TOKEN_IDS = (st.lists(st.integers(0, 300), max_size=24)  # what a tokenizer gives, then what none should
             | st.lists(st.integers(-5, 300) | st.sampled_from([2**31, 2**63, 2**70, -(2**63) - 1]),
                        max_size=24))
SPECIAL = (st.integers(0, 300) | st.integers(0, 300) | st.none() | st.integers(-3, -1)
           | st.sampled_from([2**63, 2**70]))


class FakeTokenizer:
    """A tokenizer whose token ids the fuzzer chooses: every text maps to `ids` (no chat template)."""

    chat_template = None

    def __init__(self, ids: list[int], eos: Any, pad: Any):
        self.ids, self.eos_token_id, self.pad_token_id = ids, eos, pad

    def __call__(self, text: Any, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(self.ids)}

    def __len__(self) -> int:
        return 301


TEXTS = (st.text(max_size=20) | st.sampled_from(["", " ", "\x00", "God created the light"])
         | st.lists(st.sampled_from("In the beginning God created".split()), max_size=8).map(" ".join)
         | JSONISH)
# Rows are what a user's JSONL holds (any JSON values); a row's `weight` is set by distill itself
# (textkd.examples.task_rows, from the validated rationale_weight), so it stays a float >= 0.
WORDS = st.lists(st.sampled_from("In the beginning God created the heaven and the earth".split()),
                 min_size=1, max_size=8).map(" ".join)
WEIGHT = st.floats(0, 10)
GOOD_ROW = (st.fixed_dictionaries({"prompt": WORDS, "response": WORDS, "weight": WEIGHT})
            | st.fixed_dictionaries({"text": WORDS})
            | st.fixed_dictionaries({"messages": st.tuples(WORDS, WORDS).map(lambda pr: [
                {"role": "user", "content": pr[0]}, {"role": "assistant", "content": pr[1]}])}))
ANY_ROW = st.fixed_dictionaries({}, optional={
    "text": TEXTS, "prompt": TEXTS, "response": TEXTS, "weight": WEIGHT,
    "messages": st.lists(st.fixed_dictionaries({}, optional={
        "role": st.sampled_from(["user", "assistant", "x"]) | SCALARS, "content": TEXTS}) | SCALARS, max_size=3)
    | SCALARS})
ROWS = st.lists(GOOD_ROW, max_size=4) | st.lists(GOOD_ROW | ANY_ROW, max_size=4)


def _token_helpers(ids: list[int], eos: Any, pad: Any, texts: list[Any], rows: list[dict[str, Any]],
                   seq_len: int, packing: bool, real: bool) -> None:
    from distill.data.tokens import encode_rows, pack_text, split_blocks
    from distill.recipes.textkd.examples import encode_weighted

    tok = _real_tokenizer() if real else FakeTokenizer(ids, eos, pad)
    expect_clear("tokens: pack_text", lambda: split_blocks(pack_text(texts, tok, seq_len), 0.2))
    expect_clear("tokens: encode_rows", lambda: encode_rows(rows, tok, seq_len, response_only=True,
                                                            packing=packing, source="fuzz"))
    expect_clear("tokens: encode_weighted", lambda: encode_weighted(rows, tok, seq_len, "fuzz"))


_TOKENIZER: list[Any] = []


def _real_tokenizer() -> Any:
    """The tests' tiny word-level tokenizer with a chat template (built once)."""
    if not _TOKENIZER:
        from lm_helpers import make_tokenizer

        directory = tempfile.TemporaryDirectory(prefix="fuzz-tok-")  # removed when the session ends
        _TOKENIZER.extend([make_tokenizer(Path(directory.name)), directory])
    return _TOKENIZER[0]


test_token_sequences, test_token_sequences_many = fuzz(
    _token_helpers, ids=TOKEN_IDS, eos=SPECIAL, pad=SPECIAL, texts=st.lists(TEXTS, max_size=6), rows=ROWS,
    seq_len=st.integers(8, 24), packing=st.booleans(),  # the configs' range (data.seq_len >= 8)
    real=st.booleans())


# --------------------------------------------------------------------------- (d) HTTP bodies


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("transformers")
    from lm_helpers import make_llama, make_tokenizer

    from distill.serve import server as serve

    directory = tmp_path_factory.mktemp("fuzz_llama")
    make_llama(directory, make_tokenizer(directory), layers=1, hidden=16)
    srv = serve.make_server(str(directory), port=0, max_request_bytes=4_000, max_tokens_limit=4,
                            max_batch=2)
    srv.start_background()
    yield srv
    srv.shutdown()


ROLE = st.sampled_from(["user", "user", "system", "assistant"])
MESSAGE = (st.fixed_dictionaries({"role": ROLE, "content": st.text(max_size=20)})  # mostly well formed
           | st.fixed_dictionaries({}, optional={
               "role": ROLE | SCALARS,
               "content": st.text(max_size=20) | SCALARS | st.lists(st.fixed_dictionaries({}, optional={
                   "type": st.sampled_from(["text", "image_url"]) | SCALARS,
                   "text": st.text(max_size=10) | SCALARS}), max_size=2)}))
ODD = SCALARS | st.sampled_from([float("nan"), float("inf"), -1, 0, 2**64, 1e30, "1"])  # NaN: valid to json
FIELDS = {"messages": st.lists(MESSAGE, min_size=1, max_size=3) | st.lists(MESSAGE, max_size=3) | JSONISH,
          "max_tokens": st.integers(1, 4) | ODD, "max_completion_tokens": st.integers(1, 4) | ODD,
          "temperature": st.floats(0, 2) | ODD, "top_p": st.floats(0, 1) | ODD, "n": st.integers(1, 2) | ODD,
          "seed": st.integers(-(2**63), 2**63) | ODD, "stream": st.booleans() | ODD,
          "logprobs": st.booleans() | ODD, "top_logprobs": st.integers(0, 20) | ODD,
          "stop": ODD | st.lists(st.text(max_size=3), max_size=2), "stream_options": JSONISH, "model": SCALARS}
BODIES = (st.binary(max_size=200)
          | JSONISH.map(lambda v: json.dumps(v).encode())
          | st.fixed_dictionaries({"messages": st.lists(MESSAGE, min_size=1, max_size=2)},
                                  optional={k: v for k, v in FIELDS.items() if k != "messages"}
                                  ).map(lambda d: json.dumps(d).encode())
          | st.fixed_dictionaries({}, optional=FIELDS).map(lambda d: json.dumps(d).encode()))


def _post(server: Any, body: bytes, path: str = "/v1/chat/completions") -> None:
    def case() -> None:
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=30)  # a timeout here is a hang
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, text = resp.status, resp.read()
        except TimeoutError as exc:
            raise Hang(f"no answer in 30 s to {body[:80]!r}") from exc
        finally:
            conn.close()
        if status == 200:
            _check_answer(path, body, text)  # a valid request (the fuzzer made one): answered, and rightly
            return
        assert 400 <= status < 500, f"HTTP {status} for {body[:200]!r}: {text[:300]!r}"
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"], text
        raise HTTPClear(f"{status}: {error['message']}")

    expect_clear("HTTP bodies", case, clear=(HTTPClear,))


def _check_answer(path: str, body: bytes, text: bytes) -> None:
    """A 200 answer must be what was asked: one choice per prompt × n, each within max_tokens."""
    request = json.loads(body)
    if request.get("stream"):
        assert text.rstrip().endswith(b"data: [DONE]"), text[-200:]
        return
    answer = json.loads(text)
    prompts = request.get("prompt")
    count = 1 if path.endswith("chat/completions") or isinstance(prompts, str) or (
        isinstance(prompts, list) and prompts and isinstance(prompts[0], int)) else len(prompts)
    assert len(answer["choices"]) == count * (request.get("n") or 1), (body, answer)
    limit = request.get("max_tokens") or request.get("max_completion_tokens") or 4
    assert answer["usage"]["completion_tokens"] <= limit * len(answer["choices"]), (body, answer)


class HTTPClear(Exception):
    """A 4xx answer with an OpenAI-style JSON error: the clear outcome for a bad body."""


def _http_body(server: Any, body: bytes) -> None:
    _post(server, body)


test_http_bodies, test_http_bodies_many = fuzz(_http_body, fast=40, many=MANY * 3 // 2, body=BODIES)

TEXT_FIELDS = {"prompt": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3)
               | st.lists(st.integers(0, 40), max_size=4) | JSONISH,
               "max_tokens": st.integers(1, 4) | ODD, "temperature": st.floats(0, 2) | ODD, "n": st.integers(1, 2) | ODD,
               "logprobs": st.integers(0, 5) | ODD, "echo": st.booleans(), "stream": st.booleans() | ODD,
               "stop": ODD | st.lists(st.text(max_size=3), max_size=2), "model": SCALARS,
               "suffix": SCALARS, "best_of": st.integers(0, 2) | ODD}
TEXT_BODIES = (JSONISH.map(lambda v: json.dumps(v).encode())
               | st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=12)},
                                       optional={k: v for k, v in TEXT_FIELDS.items() if k != "prompt"}
                                       ).map(lambda d: json.dumps(d).encode())
               | st.fixed_dictionaries({}, optional=TEXT_FIELDS).map(lambda d: json.dumps(d).encode()))


def _text_body(server: Any, body: bytes) -> None:
    _post(server, body, "/v1/completions")


test_text_completion_bodies, test_text_completion_bodies_many = fuzz(_text_body, fast=40, many=MANY,
                                                                     body=TEXT_BODIES)
