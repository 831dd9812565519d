from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cot_patching.problems import (
    DATA_DIR,
    ProblemFileError,
    deterministic_sample,
    gsm8k_gold,
    load_problems,
    read_gsm8k,
    read_svamp,
)


def _write(tmp_path, data, raw=False):
    path = tmp_path / "problems.json"
    path.write_text(data if raw else json.dumps(data), encoding="utf-8")
    return path


def test_load_valid_with_unicode_and_long_text(tmp_path):
    question = "Zoë a 3 œufs 🥚 " + "très long " * 2000
    path = _write(tmp_path, [{"id": "a", "question": question, "gold_answer": "3", "source": "x"},
                             {"id": 2, "question": "q", "gold_answer": 4.5}])
    problems = load_problems(path)
    assert problems[0].question == question and problems[1].id == "2" and problems[1].gold_answer == "4.5"


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ("{}", "non-empty JSON list"),
    ("[]", "non-empty JSON list"),
    ('[{"id": "a", "question": "q"}]', "missing field(s) gold_answer"),
    ('[{"id": "a", "question": "q", "gold_answer": "five"}]', "is not numeric"),
    ('[{"id": "a", "question": "", "gold_answer": "5"}]', "'question' must be"),
    ('[{"id": "a", "question": "q", "gold_answer": "5"}, {"id": "a", "question": "r", "gold_answer": "6"}]',
     "duplicate id 'a'"),
    ('[3]', "expected an object"),
])
def test_bad_problem_files(tmp_path, content, message):
    with pytest.raises(ProblemFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_problems(_write(tmp_path, content, raw=True))


def test_missing_file(tmp_path):
    with pytest.raises(ProblemFileError, match="not found"):
        load_problems(tmp_path / "nope.json")


def test_gsm8k_gold():
    assert gsm8k_gold("so 9*2=18\n#### 18") == "18"
    assert gsm8k_gold("#### 1,234") == "1234"
    assert gsm8k_gold("#### -5") == "-5"
    assert gsm8k_gold("no marker") is None


def test_vendored_datasets_read_offline():
    gsm8k = read_gsm8k("test")
    assert len(gsm8k) == 1319 and gsm8k[0].id == "gsm8k-test-0000" and gsm8k[0].gold_answer == "18"
    svamp = read_svamp()
    assert len(svamp) == 1000 and all(p.gold_answer for p in svamp)
    assert (DATA_DIR / "gsm8k" / "LICENSE").is_file() and (DATA_DIR / "svamp" / "LICENSE").is_file()


def test_committed_sample_is_the_deterministic_sample():
    committed = load_problems(DATA_DIR / "problems.sample.json")
    assert len(committed) == 60
    # written before problems carried gold_steps: the same problems otherwise
    assert committed == [replace(p, gold_steps=None) for p in deterministic_sample(read_gsm8k("test"), 60)]


def test_a_stratified_sample_is_balanced_in_every_prefix_and_records_gold_steps(tmp_path):
    from cot_patching.problems import load_problems, read_gsm8k, stratified_sample
    from cot_patching.runs.files import write_json

    pool = read_gsm8k("test")
    assert all(p.gold_steps is not None for p in pool)
    assert pool[0].gold_steps == pool[0].gold_steps and sum(p.gold_steps == 0 for p in pool) < len(pool)
    sample = stratified_sample(pool, 40, ["2", "3", "4", "5+"])
    assert [p.difficulty for p in sample[:8]] == ["2", "3", "4", "5+"] * 2
    assert len({p.id for p in sample}) == 40 and stratified_sample(pool, 40, ["2", "3", "4", "5+"]) == sample
    path = tmp_path / "problems.json"
    write_json(path, [p.to_json() for p in sample])
    assert [p.gold_steps for p in load_problems(path)] == [p.gold_steps for p in sample]
    no_steps = [p.__class__(p.id, p.question, p.gold_answer) for p in pool[:3]]
    with pytest.raises(ValueError, match="gold_steps"):
        stratified_sample(no_steps, 2, ["2"])
