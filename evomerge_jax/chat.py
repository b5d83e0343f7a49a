"""Chat templates: one rendering of a prompt through a tokenizer's chat template (transformers'
`apply_chat_template`), used by every evolve task type (`chat_template: true`) and by the lm-eval
model (`--apply-chat-template`, the `lm_eval` task type), so that a chat model sees the same text
whichever path scores it.
"""

from __future__ import annotations

from .errors import ConfigError


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """One user turn, after a system turn when `system_prompt` is given."""
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return [*system, {"role": "user", "content": prompt}]


def render_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                where: str = "chat_template") -> str:
    """The conversation as the tokenizer's chat template writes it, as text. With
    `add_generation_prompt` the text ends where the assistant's answer begins; without, the last
    message is left open so that a continuation extends it (lm-eval's convention)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
                          "has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         continue_final_message=not add_generation_prompt)


def chat_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of text a chat template rendered: its special tokens are in the text already, so
    none are added (as `apply_chat_template(..., tokenize=True)` encodes it)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
