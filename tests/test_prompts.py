"""Prompt sets: the built-in code set and the Spec-Bench JSONL loader."""

from __future__ import annotations

import json

import pytest

from specnb.prompts import Prompt, load_prompts


def test_builtin_code_is_a_set_of_distinct_code_prompts():
    prompts = load_prompts("builtin:code")
    assert 12 <= len(prompts) <= 16
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)
    assert all(isinstance(p, Prompt) and p.text.strip() and p.category for p in prompts)
    for p in prompts:  # every prompt is the start of Python source: it must not be empty code
        assert any(word in p.text for word in ("def ", "class ", '"""', "for ", "try:"))


def test_limit_spreads_over_categories_in_file_order():
    every = load_prompts("builtin:code")
    four = load_prompts("builtin:code", limit=4)
    assert [p.category for p in four] == ["signature", "class", "method", "docstring"]
    assert four == [p for p in every if p in four]  # file order
    assert load_prompts("builtin:code", limit=1000) == every
    for n in range(1, len(every)):  # each limit's prompts are the smaller limit's plus one
        assert set(load_prompts("builtin:code", limit=n)) < set(load_prompts("builtin:code", limit=n + 1))


def test_limit_spreads_over_spec_bench_tasks_and_mt_benchs_categories(tmp_path):
    """Spec-Bench's file is sorted by category (its first 80 questions are MT-bench): a limit takes
    every task in turn, and within MT-bench each of its eight categories in turn."""
    from specnb.prompts import MT_BENCH, task

    rows = [{"question_id": i, "category": c, "turns": [f"q{i}"]}
            for i, c in enumerate([c for c in MT_BENCH for _ in range(3)] + ["translation"] * 3 + ["rag"] * 3)]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    six = load_prompts(str(path), limit=6)
    assert [task(p.category) for p in six].count("mt_bench") == 2 and {"translation", "rag"} <= {p.category for p in six}
    assert [p.category for p in six if task(p.category) == "mt_bench"] == ["writing", "roleplay"]
    assert [int(p.id) for p in six] == sorted(int(p.id) for p in six)


@pytest.mark.parametrize("limit", [0, -2])
def test_limit_must_be_positive(limit):
    with pytest.raises(ValueError, match="limit"):
        load_prompts("builtin:code", limit=limit)


def test_unknown_builtin_names_the_known_sets():
    with pytest.raises(ValueError, match="builtin:code"):
        load_prompts("builtin:nope")


def test_jsonl_keeps_id_category_and_every_turn_with_the_first_as_text(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question_id": 7, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
            {"question_id": "x1", "turns": ["Hi"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    first, second = load_prompts(str(path))
    assert (first.id, first.text, first.category) == ("7", "What is 2+2?", "math")
    assert first.turns == ("What is 2+2?", "And 3+3?")
    assert second == Prompt("x1", "Hi", "unknown") and second.turns == ("Hi",)


def test_a_prompt_built_from_text_is_one_turn_and_text_must_be_the_first_turn():
    assert Prompt("a", "hello", "c").turns == ("hello",)
    assert Prompt("a", "hello", "c", ("hello", "more")).turns == ("hello", "more")
    with pytest.raises(ValueError, match="first turn"):
        Prompt("a", "hello", "c", ("other", "more"))


def test_jsonl_turns_must_all_be_text(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 1, "turns": ["ok", 3]}) + "\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:1.*list of strings"):
        load_prompts(str(path))


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question_id": 1, "turns": ["ok"]}) + "\n{not json}\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_prompts(str(path))
    path.write_text(json.dumps({"question_id": 1, "turns": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_prompts(str(path))


def test_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_prompts(str(tmp_path / "absent.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(empty))
