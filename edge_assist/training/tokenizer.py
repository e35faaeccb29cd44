"""Byte-level UTF-8 tokenizer for report text in any language.

Every string is its UTF-8 bytes, so English, Chinese and anything else work
without a vocabulary to train or ship: token id = byte value + N_SPECIAL.
Special tokens: PAD (0), BOS (1), EOS (2), UNK (3, never produced by encode;
decode shows it as U+FFFD). A sequence is BOS, bytes..., EOS, truncated to
max_len at a UTF-8 character boundary (never half a Chinese character).

Training-only (edge_assist.training is never imported by the run-time path).
"""

from __future__ import annotations

from typing import Sequence

import torch

PAD, BOS, EOS, UNK = 0, 1, 2, 3
N_SPECIAL = 4
VOCAB_SIZE = 256 + N_SPECIAL


class ByteTokenizer:
    """UTF-8 bytes + special tokens.

    >>> tok = ByteTokenizer(max_len=32)
    >>> tok.decode(tok.encode("肝脏 liver"))
    '肝脏 liver'
    """

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK
    vocab_size = VOCAB_SIZE

    def __init__(self, max_len: int = 160):
        if max_len < 3:
            raise ValueError(f"max_len must be at least 3 (BOS, one byte, EOS), got {max_len}")
        self.max_len = int(max_len)

    def config(self) -> dict:
        return {"kind": "byte", "max_len": self.max_len}

    @classmethod
    def from_config(cls, cfg: dict) -> "ByteTokenizer":
        if cfg.get("kind", "byte") != "byte":
            raise ValueError(f"not a byte tokenizer config: {cfg}")
        return cls(max_len=int(cfg["max_len"]))

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids; truncated to max_len (specials included) at a character boundary."""
        data = text.encode("utf-8")
        limit = self.max_len - (2 if add_special else 0)
        if len(data) > limit:
            cut = limit
            while cut > 0 and (data[cut] & 0xC0) == 0x80:  # data[cut] continues a character: back off
                cut -= 1
            data = data[:cut]
        ids = [b + N_SPECIAL for b in data]
        return [BOS, *ids, EOS] if add_special else ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text from ids; PAD/BOS/EOS are dropped, UNK and broken bytes become U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out += bytes([i - N_SPECIAL]) if N_SPECIAL <= i < VOCAB_SIZE else "\ufffd".encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def batch(self, texts: Sequence[str], *, pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids LongTensor [B, L], mask BoolTensor [B, L], True = real token).

        L is the longest sequence in the batch (or max_len with pad_to_max)."""
        seqs = [self.encode(t) for t in texts]
        width = self.max_len if pad_to_max else max((len(s) for s in seqs), default=2)
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = True
        return ids, mask

    __call__ = batch
