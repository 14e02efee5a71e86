"""Which way the refusal vectors push refusal on a model: the pure parts of the `analyze` stage's sign probe."""

from __future__ import annotations

import re

# A response laid out as a task being carried out: a Markdown heading, a numbered or bulleted list, bold headings, or
# "steps" / "Step 1" (the form AdvBench's imperative requests ask for, which TruthfulQA's questions do not).
STRUCTURED = re.compile(r"(^|\n)\s*(#{1,6}\s|\d+[.)]\s|[-*]\s+\S|\*\*[^*\n]+\*\*)|\bsteps?\b", re.IGNORECASE)


def structured(text: str) -> bool:
    return STRUCTURED.search(text) is not None


def blocks(num_layers: int, size: int) -> list[tuple[int, ...]]:
    """The layers in consecutive blocks of `size` (the last one shorter when `size` does not divide them)."""
    return [tuple(range(i, min(i + size, num_layers))) for i in range(0, num_layers, size)]
