"""Chat templates: the tokenizer's own, or one of the bundled Jinja templates for base models.

A template is a Jinja string in the Hugging Face ``chat_template`` dialect, so that the template
used for training is saved with the tokenizer and every inference path (``processor.
apply_chat_template``) renders prompts identically. Each bundled template also names its
end-of-turn string, the token that labels supervise after every answer.

Bundled templates:

* ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>\\n`` (Qwen style, no default system prompt).
* ``llama3``: Llama-3-Instruct headers, ``<|eot_id|>`` after every turn.
* ``vicuna`` (alias ``medmvl``): MedM-VL's ``qwen2`` conversation format,
  ``SYSTEM USER: q ASSISTANT: a<eos>USER: ...``; the end of turn is the tokenizer's EOS.
* ``plain``: pre-training (connector alignment): the media markers of the user turn, then the
  caption and EOS; all other text and the system prompt are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MEDMVL_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama-3-Instruct's own template (without tool use).
LLAMA3 = (
    "{%- for message in messages %}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{%- if loop.index0 == 0 %}{%- set content = (bos_token or '') + content %}{%- endif %}"
    "{{- content }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# MedM-VL's "qwen2" conv_version (a Vicuna-v1 layout whose separator is the EOS token):
# SYSTEM + " " + "USER: " + q + " " + "ASSISTANT: " + a + eos, no separator between rounds; the
# generation prompt ends with "ASSISTANT:" (no trailing space), and user turns are stripped.
VICUNA = (
    "{{- bos_token or '' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + ' ' }}"
    "{%- else %}{{- '" + MEDMVL_SYSTEM.replace("'", "\\'") + " ' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- 'USER: ' + message['content'] | trim + ' ' }}"
    "{%- elif message['role'] == 'assistant' %}{{- 'ASSISTANT: ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}"
)

# LLaVA's "plain" pre-training format: media markers, caption, end of text.
PLAIN = (
    "{{- bos_token or '' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- for piece in message['content'].split('<') %}"
    "{%- if piece.startswith('image>') %}{{- '<image>' }}{%- elif piece.startswith('volume>') %}{{- '<volume>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

BUNDLED: dict[str, str] = {"chatml": CHATML, "llama3": LLAMA3, "vicuna": VICUNA, "plain": PLAIN}
ALIASES = {"medmvl": "vicuna"}
# end-of-turn string per bundled template; None = the tokenizer's EOS token
END_OF_TURN: dict[str, str | None] = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "vicuna": None, "plain": None}
# end-of-turn strings of well-known tokenizer-provided templates (searched after each answer)
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
TEMPLATE_CHOICES = ("auto", "tokenizer", *BUNDLED, *ALIASES)


def template_names() -> list[str]:
    """Valid values for a ``template`` setting."""
    return list(TEMPLATE_CHOICES)


def resolve_template(name: str | None, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str | None]:
    """Pick the Jinja chat template and its end-of-turn string.

    Args:
        name: ``auto`` / None (the tokenizer's own template if it has one, else ``chatml``),
            ``tokenizer`` (its own, required), a bundled name (``chatml``, ``llama3``, ``vicuna``,
            ``medmvl``, ``plain``) or a literal Jinja template (contains ``{%`` or ``{{``).
        tokenizer: the tokenizer (its ``chat_template`` and ``eos_token`` are read).

    Returns:
        ``(jinja_template, end_of_turn)``; ``end_of_turn`` is None when it must be detected after
        each answer (tokenizer-provided or custom templates).
    """
    name = name or "auto"
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: use the default one
        own = own.get("default")
    if "{%" in name or "{{" in name:
        return name, None
    if name == "auto":
        if own:
            return own, None
        name = "chatml"
    if name == "tokenizer":
        if not own:
            raise ValueError(
                "template 'tokenizer' asked for, but the tokenizer has no chat_template; "
                f"choose a bundled template: {', '.join(BUNDLED)}"
            )
        return own, None
    key = ALIASES.get(name, name)
    if key not in BUNDLED:
        raise ValueError(f"unknown chat template {name!r}; valid choices: {', '.join(TEMPLATE_CHOICES)}")
    eot = END_OF_TURN[key]
    if eot is None:
        eot = getattr(tokenizer, "eos_token", None)
        if not eot:
            raise ValueError(f"template {name!r} ends every answer with the EOS token, but the tokenizer has none")
    return BUNDLED[key], eot


def render(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = False,
) -> str:
    """Render messages to text with a Jinja chat template (no tokenisation).

    Args:
        tokenizer: provides ``bos_token``/``eos_token`` and the Jinja environment.
        template: the Jinja template (from :func:`resolve_template`).
        messages: ``[{"role", "content"}]`` with marker text content.
        add_generation_prompt: append the assistant header that opens the next answer.
    """
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):  # tokenize=False renders text; anything else is a tokenizer bug
        raise TypeError(
            f"{type(tokenizer).__name__}.apply_chat_template(tokenize=False) returned {type(text).__name__}"
        )
    return text
