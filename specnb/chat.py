"""Chat templates: how a question's turns become the token ids a method decodes.

Instruct models are trained on conversations rendered with their tokenizer's chat template
(``<|im_start|>user ... <|im_end|><|im_start|>assistant``); fed raw text they answer another,
easier-to-draft task. Spec-Bench renders every question with the model's template and runs
MT-Bench's questions turn by turn, the second turn after the model's own first answer; so does
this module.

``chat_template`` (a parameter of every method notebook and the grid):

* ``auto`` (default): when the tokenizer has a chat template, each turn is rendered as the
  conversation so far ([user t1, assistant a1, user t2, ...]) plus the generation prompt; the
  tokens are the rendered text without the tokenizer's own special tokens (the template writes
  its BOS itself when the model wants one: adding the tokenizer's too would put two BOS in front,
  Hugging Face's ``apply_chat_template`` tokenizes the same way). A tokenizer without a template
  gets raw text, as ``none``.
* ``none``: raw text, tokenized as before templates existed (the tokenizer's special tokens
  added), and only the first turn of a multi-turn question: without a template there is no
  format in which a model can tell its own earlier answer from the next question, and inventing
  one would measure a prompt format no model was trained on. A ``none`` run decodes the
  prompts of the runs recorded before this parameter existed, token for token.

The template is applied as the model ships it: a template that adds a default system message
when none is given (Qwen2.5's: "You are Qwen, created by Alibaba Cloud. ...") adds it here too.
The answer kept for the next turn is the method's decoded output (special tokens dropped,
whitespace stripped), cut at ``max_new_tokens`` like any answer.

Which tokenizer: the cloud's for every method with a cloud (the edge drafts in the cloud's token
space: with one tokenizer directly, with another through :mod:`specnb.decode.translate`, which re-encodes
the rendered text for the edge), the edge's for the edge alone. A cloud across the link brings its tokenizer files, template included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MODES = ("auto", "none")


def check_mode(mode: str) -> str:
    """``mode`` itself, or an error naming the valid values."""
    if mode not in MODES:
        raise ValueError(f"chat_template must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def has_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (base models and the embedded pair do not)."""
    return bool(getattr(tokenizer, "chat_template", None))


def conversation(turns: list[str] | tuple[str, ...], answers: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """[user t1, assistant a1, user t2, ...]: every answer so far, then the next user turn."""
    if len(turns) != len(answers) + 1:
        raise ValueError(f"a conversation needs one answer per earlier turn: {len(turns)} turns, {len(answers)} answers")
    messages = []
    for turn, answer in zip(turns, list(answers) + [None]):
        messages.append({"role": "user", "content": turn})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


@dataclass(frozen=True)
class Prompting:
    """How one run turns questions into token ids: one tokenizer, with its template or raw text."""

    tokenizer: Any
    mode: str = "auto"
    role: str | None = None  # whose tokenizer ("cloud" / "edge"), for the record

    def __post_init__(self) -> None:
        check_mode(self.mode)

    @property
    def templated(self) -> bool:
        """Whether prompts are rendered with the chat template (``auto`` and the tokenizer has one)."""
        return self.mode == "auto" and has_template(self.tokenizer)

    def describe(self) -> dict[str, Any]:
        """What the result records: the mode, whether the template was applied, whose tokenizer."""
        return {"chat_template": self.mode, "applied": self.templated, "tokenizer": self.role}

    def turns(self, prompt: Any) -> tuple[str, ...]:
        """The turns a question runs: all of them with a template, the first one in raw text."""
        return tuple(prompt.turns) if self.templated else (prompt.text,)

    def render(self, prompt: Any, answers: list[str] | tuple[str, ...] = ()) -> list[int]:
        """Token ids of the question's next turn after ``answers`` (the method's own earlier answers)."""
        turns = self.turns(prompt)[: len(answers) + 1]
        if len(turns) != len(answers) + 1:
            raise ValueError(f"prompt {prompt.id!r} has {len(self.turns(prompt))} turn(s) here, not {len(answers) + 1}")
        if not self.templated:
            return list(self.tokenizer(turns[0], add_special_tokens=True)["input_ids"])
        text = self.tokenizer.apply_chat_template(conversation(turns, answers), add_generation_prompt=True,
                                                  tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_text(text: str) -> str:
    """The assistant message kept for the next turn: the decoded answer (special tokens dropped),
    stripped of surrounding whitespace, as Spec-Bench (FastChat) keeps it."""
    return text.strip()


def converse(fn: Callable[[list[int], int], Any], prompt: Any, prompting: Prompting, max_new_tokens: int) -> list[Any]:
    """Run one question turn by turn with a method's ``fn(ids, max_new_tokens) -> Generation``: each
    turn's prompt is the conversation so far, holding the method's own earlier answers (so two
    methods see the same second turn only when their first answers agree, as in Spec-Bench)."""
    answers: list[str] = []
    out = []
    for _ in prompting.turns(prompt):
        g = fn(prompting.render(prompt, answers), max_new_tokens)
        out.append(g)
        answers.append(answer_text(g.text))
    return out


def prompting_for(models: dict[str, Any], mode: str) -> Prompting:
    """The run's :class:`Prompting`: the cloud's tokenizer when there is a cloud, else the edge's."""
    role = "cloud" if "cloud" in models else "edge"
    return Prompting(models[role].tokenizer, mode, role)
