"""The recogniser's alphabet: printable ASCII, with index 0 reserved for the CTC blank."""

from __future__ import annotations

CHARSET = "".join(chr(c) for c in range(32, 127))  # space .. '~' (95 characters)
BLANK = 0


class Codec:
    """Maps text to label indices (1-based; 0 is the CTC blank) and back."""

    def __init__(self, charset: str = CHARSET) -> None:
        self.charset = charset
        self.index = {ch: i + 1 for i, ch in enumerate(charset)}

    @property
    def num_classes(self) -> int:
        return len(self.charset) + 1

    def encode(self, text: str) -> list[int]:
        missing = sorted({ch for ch in text if ch not in self.index})
        if missing:
            raise ValueError(f"characters outside the charset: {missing!r}")
        return [self.index[ch] for ch in text]

    def decode_greedy(self, best: list[int]) -> str:
        """Collapse repeats, then drop blanks (CTC best-path decoding)."""
        out = []
        prev = BLANK
        for k in best:
            if k != prev and k != BLANK:
                out.append(self.charset[k - 1])
            prev = k
        return "".join(out)


def normalise_text(text: str) -> str:
    """Replace characters the model cannot output by their closest ASCII form (or drop them)."""
    table = {
        "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
        "\u2014": "-", "\u00a0": " ", "\t": " ", "\u2026": "...",
    }  # fmt: skip
    text = "".join(table.get(ch, ch) for ch in text)
    return "".join(ch for ch in text if 32 <= ord(ch) < 127)
