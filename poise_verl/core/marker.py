"""Finding the end-of-thinking marker in token ids: one token (Qwen3's ``</think>``) or several in a row.

The marker closes a response's reasoning. POISE reads it twice: the response pool ends at its last occurrence
(``pooling.response_cut_at_last_marker_packed``) and the entropy split puts the tokens up to its first occurrence in
the reasoning part (``entropy.end_of_thinking_parts``). A tokenizer without a token of its own for the marker
writes it as several tokens (``tokenizer.encode("</think>")`` gives three or more ids), so the marker is an id
sequence, matched as a contiguous run of a response's real tokens: the official code encodes ``"</think>"`` and
searches for that run (``_find_last_subsequence`` in holi-lab/POISE ``vendor/verl/workers/actor/dp_actor.py``),
and so does verl-recipe's port (``_last_marker_end`` in ``poise/features.py``).

Limitation shared with both: the run is the marker's ids encoded on their own; a tokenizer that merges the marker
with the text around it in a response writes other ids there, and that occurrence is not found.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["marker_ends", "marker_ids"]


def marker_ids(marker: int | Sequence[int] | None) -> tuple[int, ...]:
    """The marker as a tuple of ids: ``()`` for no marker, ``(id,)`` for one token."""
    if marker is None:
        return ()
    if isinstance(marker, int):
        return (int(marker),)
    return tuple(int(token) for token in marker)


def marker_ends(ids: torch.Tensor, offsets: torch.Tensor, marker: int | Sequence[int] | None) -> torch.Tensor:
    """Where an occurrence of the marker ends, in a flat token axis cut into segments.

    Args:
        ids: ``(N,)`` token ids.
        offsets: ``(N,)`` int, each token's position within its segment (0 for a segment's first token); a
            negative offset marks a token outside every segment (a prompt token, padding). A segment's tokens
            are consecutive on the axis.
        marker: the marker's ids (``m`` of them), one id, or None.

    Returns:
        ``(N,)`` bool, True at the last token of each occurrence that lies whole inside one segment: position
        ``p`` with ``offsets[p] >= m - 1`` and ``ids[p - m + 1 .. p]`` equal to the marker. All False for no
        marker.
    """
    pattern = marker_ids(marker)
    width = len(pattern)
    hit = offsets >= width - 1  # the run p - m + 1 .. p stays inside p's segment
    if width == 0:
        return torch.zeros_like(hit)
    for back, token in enumerate(reversed(pattern)):  # ids[p - back] must be the marker's (m - 1 - back)-th id
        earlier = torch.full_like(ids, -1)
        if back < ids.numel():
            earlier[back:] = ids[: ids.numel() - back]
        hit &= earlier == token
    return hit
