"""Tell a quoted or cited attack phrase ("phrases like 'ignore all rules'") from a used one.

People discuss, test and teach prompt injection, so a regex hit on the phrase alone can't be
trusted with a block. A phrase wrapped tightly in quotes, or introduced by a citing cue, is
treated as a mention: it is still reported, at reduced severity, and the ML tier decides.
Attackers can use the same framing, which is why mentions are downgraded, never dropped.
"""

from __future__ import annotations

_QUOTES = "\"'`"
_TRAILING_PUNCTUATION = ".,;:!?"

# Words that introduce a cited example rather than an instruction to the reader. Phrases with
# "you" are left out on purpose: attacks address the model in the second person.
_CITING_CUES = (
    "such as",
    " like",
    "e.g.",
    "e.g.,",
    "i.e.",
    "for example",
    "for example,",
    "for instance",
    "for instance,",
    "the phrase",
    "phrases",
    "the string",
    "the sentence",
    "known as",
    "called",
    "payload",
    "payloads",
    "prompts",
    "the model to",
    "the llm to",
    "an llm to",
    "the ai to",
    "an ai to",
    "the chatbot to",
    "the bot to",
    "the assistant to",
    "the agent to",
    "models to",
    "llms to",
)
_LOOKBEHIND = 40


def is_mention(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is quoted tightly or introduced by a citing cue."""
    before = text[max(0, start - _LOOKBEHIND) : start].lower().rstrip()
    quoted_before = before.endswith(tuple(_QUOTES))
    after = text[end : end + 2].lstrip(_TRAILING_PUNCTUATION)
    if quoted_before and after[:1] in tuple(_QUOTES):
        return True
    cue_text = before.rstrip(_QUOTES + ":").rstrip()
    return (" " + cue_text).endswith(_CITING_CUES)
