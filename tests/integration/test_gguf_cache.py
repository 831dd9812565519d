"""The GGUF cache: a converted entry loads the same model (weights, tokenizer, record) as the GGUF itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cot_patching.models import gguf_cache
from cot_patching.models.gguf_cache import CACHE_ENV, ENTRY_FILE, converted_gguf, entry_is_sound, entry_name
from cot_patching.models.loading import (
    EMBEDDED,
    EMBEDDED_FILE,
    embedded_model_dir,
    load_hf_model,
    load_tokenizer,
    resolve_model,
    stop_token_ids,
    tokenizer_sha256,
)
from cot_patching.runs.files import file_sha256

CPU, FP32 = torch.device("cpu"), torch.float32
PROMPT = [{"role": "user", "content": "Ann pays $18.00 for 3 pens. 日本 café: how much is one?"}]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return embedded_model_dir() / EMBEDDED_FILE


@pytest.fixture(scope="module")
def direct() -> tuple:
    """The embedded model read from its GGUF, with the cache off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, "off")
        source = resolve_model(EMBEDDED)
        return load_tokenizer(source), load_hf_model(source, CPU, FP32)


@pytest.fixture(scope="module")
def cache(gguf_path, tmp_path_factory) -> Path:
    """A cache folder holding the embedded GGUF's entry, converted once for this module."""
    root = tmp_path_factory.mktemp("gguf-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root))
        assert converted_gguf(gguf_path, file_sha256(gguf_path)) == root / entry_name(file_sha256(gguf_path))
    return root


def _load(cache: Path, monkeypatch: pytest.MonkeyPatch, spec: str = EMBEDDED) -> tuple:
    monkeypatch.setenv(CACHE_ENV, str(cache))
    source = resolve_model(spec)
    return load_tokenizer(source), load_hf_model(source, CPU, FP32)


def _refuse_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*args):
        raise AssertionError("a sound entry was converted again")

    monkeypatch.setattr(gguf_cache, "_convert", no_conversion)


def _assert_same_model(a: tuple, b: tuple) -> None:
    (tokenizer_a, model_a), (tokenizer_b, model_b) = a, b
    assert tokenizer_sha256(tokenizer_a) == tokenizer_sha256(tokenizer_b)
    assert stop_token_ids(tokenizer_a, model_a) == stop_token_ids(tokenizer_b, model_b)
    assert tokenizer_a.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True) == \
        tokenizer_b.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    weights_a, weights_b = model_a.state_dict(), model_b.state_dict()
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    ids = torch.tensor([[1, 2, 3, 400, 5000, 17]])
    assert torch.equal(model_a(ids).logits, model_b(ids).logits)


def test_a_converted_entry_loads_the_gguf_model_bit_for_bit(direct, gguf_path, cache, monkeypatch):
    digest = file_sha256(gguf_path)
    entry = cache / entry_name(digest)
    assert entry_is_sound(entry, digest)
    assert json.loads((entry / ENTRY_FILE).read_text())["gguf_file"] == EMBEDDED_FILE
    assert [path.name for path in cache.iterdir()] == [entry.name]  # no staging folder left behind
    _refuse_conversion(monkeypatch)
    warm = _load(cache, monkeypatch)
    assert warm[1].config._name_or_path == str(entry)  # it really read the entry, not the GGUF
    _assert_same_model(direct, warm)


def test_a_gguf_file_elsewhere_with_the_same_bytes_uses_the_same_entry(direct, gguf_path, cache, tmp_path,
                                                                       monkeypatch):
    copy = tmp_path / "models" / "smol.gguf"
    copy.parent.mkdir()
    shutil.copy(gguf_path, copy)
    source = resolve_model(str(copy))
    assert source.kind == "gguf" and source.gguf_file == "smol.gguf"
    _refuse_conversion(monkeypatch)
    _assert_same_model(direct, _load(cache, monkeypatch, str(copy)))


def test_a_damaged_entry_is_converted_again(gguf_path, cache, tmp_path, monkeypatch, capsys):
    digest = file_sha256(gguf_path)
    shutil.copytree(cache, tmp_path / "cache")
    entry = tmp_path / "cache" / entry_name(digest)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    conversions = []
    monkeypatch.setattr(gguf_cache, "_convert", lambda *args: conversions.append(args) or args[2])
    assert converted_gguf(gguf_path, digest) == entry and conversions == []  # sound: read as it is
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert not entry_is_sound(entry, digest)
    assert converted_gguf(gguf_path, digest) == entry
    assert conversions == [(gguf_path, digest, entry)]
    assert "is damaged; converting the GGUF again" in capsys.readouterr().err


def test_an_entry_of_another_file_or_an_unfinished_one_is_not_sound(gguf_path, cache, tmp_path):
    digest = file_sha256(gguf_path)
    entry = tmp_path / "entry"
    shutil.copytree(cache / entry_name(digest), entry)
    assert entry_is_sound(entry, digest)
    assert not entry_is_sound(entry, "0" * 64)
    (entry / "tokenizer.json").unlink()
    assert not entry_is_sound(entry, digest)
    (entry / ENTRY_FILE).unlink()
    assert not entry_is_sound(entry, digest)


def test_the_cache_off_or_unwritable_reads_the_gguf_directly(gguf_path, tmp_path, monkeypatch, capsys):
    digest = file_sha256(gguf_path)
    monkeypatch.setenv(CACHE_ENV, "off")
    assert converted_gguf(gguf_path, digest) is None
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    assert converted_gguf(gguf_path, digest) is None
    assert "reading the GGUF directly" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"
