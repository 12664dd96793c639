"""Byte-level tokenizer: 256 byte ids plus [MASK], [PAD], [BOS], [EOS].

Bytes are tokens, so any UTF-8 text round-trips and the prompt grammar needs no vocabulary work.
The interface is deliberately the small subset of an HF tokenizer the learner uses
(``encode``/``decode``/``mask_token_id``/``pad_token_id``/``vocab_size``), so a pretrained
model's tokenizer can stand in for it.
"""

from __future__ import annotations

from typing import Protocol


class TokenizerLike(Protocol):
    mask_token_id: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; special ids follow. ``encode`` adds no specials."""

    mask_token_id = 256
    pad_token_id = 257
    bos_token_id = 258
    eos_token_id = 259
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Bytes up to the first [EOS]; other specials are dropped; bad UTF-8 is replaced."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_token_id:
                break
            if i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")
