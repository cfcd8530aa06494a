"""Chat templates (specnb.chat): rendering with and without a template, one BOS, multi-turn questions
run turn by turn with the method's own answers, and the runs through experiment that record it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tokenizers.processors import TemplateProcessing

from specnb.study import experiment
from specnb.chat import Prompting, converse, conversation
from specnb.study.params import METHODS, MethodParams, ParamsError, validate_method_params
from specnb.prompts import Prompt

from tiny_models import build_llama, build_tokenizer

# A small template of our own: the BOS first (as Llama's and Mistral's templates write it), one line per message,
# then the assistant's header when a generation prompt is asked for.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
TEXTS = ["[user] What is two plus two?\n[assistant] Four.\n[user] And three plus three?\n",
         "def parse(text):\n    return text.split()\n"] * 4
QUESTION = Prompt("7", "What is two plus two?", "math", ("What is two plus two?", "And three plus three?"))


def tokenizer(template: bool = True):
    """The tiny byte-level BPE, made to add a BOS to raw text (as Llama's tokenizers do), with or without the template."""
    tok = build_tokenizer(texts=TEXTS)
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                              special_tokens=[(tok.bos_token, bos)])
    if template:
        tok.chat_template = TEMPLATE
    return tok


def ids_of(tok, text: str) -> list[int]:
    """The ids of a rendered text written out by hand: the BOS, then the text without special tokens."""
    return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory) -> dict[str, str]:
    """A tiny edge / cloud pair whose shared tokenizer carries TEMPLATE."""
    root = tmp_path_factory.mktemp("chat_pair")
    tok = tokenizer()
    cloud = build_llama(root / "cloud", tok, seed=2)
    edge = build_llama(root / "edge", tok, seed=1, base=cloud, noise=0.3)
    return {"edge": str(edge), "cloud": str(cloud)}


@pytest.fixture
def two_turn_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    rows = [{"question_id": 7, "category": "math", "turns": list(QUESTION.turns)},
            {"question_id": "x1", "category": "writing", "turns": ["Say hello."]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


# ---------------------------------------------------------------------------- rendering

def test_auto_renders_the_user_turn_with_the_template_and_the_generation_prompt():
    tok = tokenizer()
    p = Prompting(tok, "auto")
    assert p.templated
    assert p.render(QUESTION) == ids_of(tok, "[user] What is two plus two?\n[assistant] ")


def test_none_feeds_raw_text_and_only_the_first_turn():
    tok = tokenizer()
    p = Prompting(tok, "none")
    assert not p.templated
    assert p.render(QUESTION) == ids_of(tok, "What is two plus two?") == tok("What is two plus two?")["input_ids"]
    assert p.turns(QUESTION) == ("What is two plus two?",)
    with pytest.raises(ValueError, match="1 turn"):
        p.render(QUESTION, ["Four."])


def test_auto_without_a_template_falls_back_to_raw_text():
    tok = tokenizer(template=False)
    p = Prompting(tok, "auto")
    assert not p.templated and p.describe() == {"chat_template": "auto", "applied": False, "tokenizer": None}
    assert p.render(QUESTION) == tok("What is two plus two?")["input_ids"]
    assert p.turns(QUESTION) == ("What is two plus two?",)


def test_a_template_that_writes_the_bos_gets_one_bos_not_two():
    tok = tokenizer()
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds one to raw text itself
    ids = Prompting(tok, "auto").render(QUESTION)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_second_turn_renders_the_whole_conversation():
    tok = tokenizer()
    ids = Prompting(tok, "auto").render(QUESTION, ["Four."])
    assert ids == ids_of(tok, "[user] What is two plus two?\n[assistant] Four.\n[user] And three plus three?\n[assistant] ")
    assert conversation(["a", "b"], ["x"]) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"},
                                               {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="one answer per earlier turn"):
        conversation(["a", "b"], [])


def test_converse_puts_the_methods_own_first_answer_into_the_second_turn():
    tok = tokenizer()
    seen: list[list[int]] = []

    def method(ids, n):
        seen.append(ids)
        return SimpleNamespace(text=f"  answer-{len(seen)}\n")  # surrounding whitespace is dropped, as Spec-Bench does

    out = converse(method, QUESTION, Prompting(tok, "auto"), 5)
    assert len(out) == len(seen) == 2
    assert "answer-1" not in tok.decode(seen[0])
    assert seen[1] == ids_of(tok, "[user] What is two plus two?\n[assistant] answer-1\n[user] And three plus three?\n[assistant] ")
    assert len(converse(method, QUESTION, Prompting(tok, "none"), 5)) == 1


def test_a_bad_value_names_the_valid_ones():
    with pytest.raises(ValueError, match="'auto', 'none'"):
        Prompting(tokenizer(), "yes")
    with pytest.raises(ParamsError, match=r"chat_template: .*'auto' or 'none'.*'yes'"):
        validate_method_params({"chat_template": "yes"})
    assert validate_method_params({}).chat_template == "auto"


def test_a_cloud_across_the_link_brings_its_template():
    """The link's client loads the server's tokenizer from the files the server sends: the template travels."""
    from specnb.link.client import _load_tokenizer
    from specnb.link.server import _tokenizer_files

    tok = tokenizer()
    remote = _load_tokenizer(_tokenizer_files(SimpleNamespace(tokenizer=tok)))
    assert Prompting(remote, "auto").render(QUESTION, ["Four."]) == Prompting(tok, "auto").render(QUESTION, ["Four."])


# ---------------------------------------------------------------------------- runs through experiment

def params(pair, tmp_path, **kw) -> MethodParams:
    base = dict(edge_model=pair["edge"], cloud_model=pair["cloud"], num_prompts=None, max_new_tokens=6,
                warmup=0, reps=2, result_path=str(tmp_path / "r.json"))
    return MethodParams(**(base | kw))


def spy_on_prompts(monkeypatch) -> list[list[int]]:
    """Every prompt the method's decode function is given, in order."""
    seen: list[list[int]] = []
    real = experiment.decoder

    def decoder(method, models, p):
        fn = real(method, models, p)

        def run(prompt, n):
            seen.append(list(prompt))
            return fn(prompt, n)
        return run
    monkeypatch.setattr(experiment, "decoder", decoder)
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_a_two_turn_question_turn_by_turn(chat_pair, tmp_path, two_turn_file, monkeypatch, method):
    seen = spy_on_prompts(monkeypatch)
    rec = experiment.run(method, params(chat_pair, tmp_path, prompts=two_turn_file))
    tok = tokenizer()
    rows = rec["prompts"]
    assert [r["id"] for r in rows] == ["7", "7/2", "x1"] and [r["turn"] for r in rows] == [1, 2, 1]
    assert rec["settings"]["chat_template"] == "auto" and rec["settings"]["chat_template_applied"] is True
    assert rec["prompting"] == {"chat_template": "auto", "applied": True,
                                "tokenizer": "edge" if method == "edge" else "cloud"}
    # repetition 1 runs 7, 7/2, x1; repetition 2 starts one question later: x1, 7, 7/2
    assert [(e["rep"], e["prompt"]) for e in rec["timing"]["entries"]] == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 0), (1, 1)]
    first_answer = rows[0]["text"].strip()
    assert first_answer, "the tiny model answered nothing: the check below would prove nothing"
    assert seen[1] == ids_of(tok, f"[user] What is two plus two?\n[assistant] {first_answer}\n"
                                  "[user] And three plus three?\n[assistant] ")
    assert seen[2] == ids_of(tok, "[user] Say hello.\n[assistant] ")
    json.loads((tmp_path / "r.json").read_text())  # written whole


def test_greedy_speculative_reproduces_the_cloud_on_both_turns(chat_pair, tmp_path, two_turn_file):
    cloud = experiment.run("cloud", params(chat_pair, tmp_path, prompts=two_turn_file, result_path=str(tmp_path / "c.json")))
    spec = experiment.run("speculative", params(chat_pair, tmp_path, prompts=two_turn_file))
    assert [r["tokens"] for r in spec["prompts"]] == [r["tokens"] for r in cloud["prompts"]]


def test_none_runs_first_turns_of_raw_text_and_records_it(chat_pair, tmp_path, two_turn_file, monkeypatch):
    seen = spy_on_prompts(monkeypatch)
    rec = experiment.run("cloud", params(chat_pair, tmp_path, prompts=two_turn_file, chat_template="none", reps=1))
    tok = tokenizer()
    assert [r["id"] for r in rec["prompts"]] == ["7", "x1"]
    assert rec["settings"]["chat_template"] == "none" and rec["settings"]["chat_template_applied"] is False
    assert seen == [tok("What is two plus two?")["input_ids"], tok("Say hello.")["input_ids"]]


def test_a_model_without_a_template_runs_raw_text_under_auto(tiny_pair, tmp_path, two_turn_file, monkeypatch):
    seen = spy_on_prompts(monkeypatch)
    rec = experiment.run("speculative", params(tiny_pair, tmp_path, prompts=two_turn_file, reps=1))
    assert rec["settings"]["chat_template_applied"] is False and [r["id"] for r in rec["prompts"]] == ["7", "x1"]
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_pair["cloud"])
    assert seen == [plain("What is two plus two?")["input_ids"], plain("Say hello.")["input_ids"]]


def test_drift_decodes_the_first_turn_as_the_run_rendered_it(chat_pair, monkeypatch):
    """The precision analysis measures drift on the tokens a run decoded: templated for an ``auto`` run,
    raw text for a ``none`` run and for records made before the parameter existed."""
    from specnb.report import drift

    seen: list[list[int]] = []
    real = drift._decode

    def spy(model, ids, *args, **kwargs):
        seen.append(list(ids))
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(drift, "_decode", spy)
    tok = tokenizer()
    for mode, expected in (("auto", ids_of(tok, "[user] What is two plus two?\n[assistant] ")),
                           ("none", tok("What is two plus two?")["input_ids"])):
        seen.clear()
        drift.measure(chat_pair["cloud"], [QUESTION], 4, dtypes=("float32", "bfloat16"), progress=False,
                      chat_template=mode)
        assert seen and all(ids == expected for ids in seen)


def test_the_link_study_decodes_templated_ids_in_every_way(chat_pair):
    """The edge-cloud study notebook renders prompts once (the cloud's template) and passes token ids: the
    cloud-only, server-side and edge-cloud ways across a real `specnb serve` all decode them, greedily alike."""
    from specnb import ModelSpec, autoregressive, connect, load
    from specnb.link import local_server
    from specnb.study import rtt
    from specnb.study.methods import LINK_METHODS

    edge = load(ModelSpec(chat_pair["edge"], dtype="float32", device="cpu", threads=1))
    with local_server(chat_pair["cloud"], draft=chat_pair["edge"]) as address:
        cloud = connect(address)
        prompting = Prompting(cloud.tokenizer, "auto", "cloud")
        assert prompting.templated
        ids = [prompting.render(QUESTION)]
        df = rtt.link_grid(edge, cloud, ids, rtts_ms=(0,), gammas=(2,), max_new_tokens=6, reps=1, server_gamma=2)
    local = autoregressive(load(ModelSpec(chat_pair["cloud"], dtype="float32", device="cpu")), ids[0], 6).tokens
    ways = df[df.method != "edge"]
    assert set(ways.method) == {"cloud", "server_speculative", "edge_cloud"}
    assert set(df.method) == set(LINK_METHODS)  # every way of the method registry's link entries, by its names
    assert all(list(t) == local for t in ways.tokens)
