"""Offline Mistral 7B (v1, 32k vocabulary) token counting, as TGI counts.

The SentencePiece model is the ``tokenizer.model.v1`` file shipped inside the
``mistral_common`` package (protocol.md section 9). The Lambda layer build
(shared/Makefile) copies it from the locally installed mistral_common to
``sagebatch/domain/data/`` so the layer needs neither mistral-common nor its
numpy, pillow and tiktoken; a local install reads mistral_common's copy. It is
never downloaded and never committed to this repository.

How TGI counts an ``inputs`` string (protocol.md 3.2 and 9): it encodes with
special tokens enabled, so BOS (id 1) is prepended, and the literals ``<s>``,
``</s>`` and ``<unk>`` in the text are parsed as their control ids. The text
between such literals is encoded as independent segments, each getting
SentencePiece's leading ``▁`` (the "legacy" behaviour of the Llama/Mistral
tokenizer that TGI loads). ``encode`` reproduces that: split at the literals,
SentencePiece-encode each segment. For text rendered by ``sagebatch.domain.prompt``
this gives the same ids as mistral-common's ``encode_chat_completion``
(tests/unit/test_tokens.py).

Thread safety: the processor is immutable after loading and the sentencepiece
0.2 binding calls the ``const`` C++ ``Encode``/``Decode`` with the GIL released
(``sentencepiece_pybind.cc``), so one shared instance serves concurrent workers
and threads really encode in parallel.
"""

from __future__ import annotations

import hashlib
import re
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import sentencepiece

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
SPECIAL_IDS = {"<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
_SPECIAL_SPLIT = re.compile("(<unk>|<s>|</s>)")

MODEL_FILE = "tokenizer.model.v1"
# protocol.md section 9: the same file as Mistral 7B's / Mixtral's tokenizer.model.
MODEL_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

# Long texts are encoded in blocks for offsets so that the protobuf result of a
# multi-megabyte document never sits in memory at once.
_BLOCK_CHARS = 1 << 16
# Offsets of a newline-free run longer than this are computed in cut pieces
# (bounded memory, count off by about one token per cut; chunkers verify anyway).
_LONGEST_SPAN_BLOCK = 1 << 20
# SentencePiece turns "\n" into the byte piece <0x0A> and no v1 piece contains a
# newline, so encoding "\n" + block and dropping the first two pieces ("▁",
# "<0x0A>") gives the block's ids exactly as they are inside the whole text.
_NEWLINE_PREFIX_PIECES = 2


# Where the layer build puts the model (gitignored; absent in a source checkout).
BUNDLED_MODEL_PATH = Path(__file__).parent / "data" / MODEL_FILE


def installed_model_path() -> Path | None:
    """The v1 model inside the installed mistral_common package (found without importing it), if any."""
    spec = find_spec("mistral_common")
    locations = spec.submodule_search_locations if spec is not None else None
    for location in locations or []:
        candidate = Path(location) / "data" / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


def default_model_path() -> Path:
    """The v1 model: the copy beside this package (the Lambda layer), else mistral_common's (a local install).

    Never downloads anything. ``MistralTokenizer()`` checks the file against ``MODEL_SHA256`` before using it.
    """
    if BUNDLED_MODEL_PATH.is_file():
        return BUNDLED_MODEL_PATH
    installed = installed_model_path()
    if installed is None:
        raise FileNotFoundError(
            f"{MODEL_FILE} is neither at {BUNDLED_MODEL_PATH} (the Lambda layer build puts it there) "
            "nor in an installed mistral_common package (pip install -e . installs it)"
        )
    return installed


@dataclass(frozen=True)
class TokenSpans:
    """Where each token of a text starts, for cutting the text by token counts.

    ``starts[i]`` is the UTF-8 byte offset of token ``i`` (BOS not included).
    Every start is on a character boundary (byte-fallback pieces of one character
    all report the character's start), so any ``text(i, j)`` decodes cleanly.
    """

    data: bytes
    starts: array[int]

    def __len__(self) -> int:
        return len(self.starts)

    def offset(self, index: int) -> int:
        """Byte offset of token ``index``; ``len(self)`` maps to the end of the text."""
        return len(self.data) if index >= len(self.starts) else self.starts[index]

    def text(self, start: int, stop: int) -> str:
        """The source text covered by tokens ``start`` (inclusive) to ``stop`` (exclusive)."""
        return self.data[self.offset(start) : self.offset(stop)].decode("utf-8")

    def index_at(self, byte_offset: int) -> int:
        """First token starting at or after ``byte_offset``."""
        return bisect_left(self.starts, byte_offset)


class MistralTokenizer:
    """TGI-equivalent token counting for Mistral 7B Instruct (v1 vocabulary)."""

    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, model_path: Path | str | None = None) -> None:
        path = Path(model_path) if model_path is not None else default_model_path()
        blob = path.read_bytes()
        if model_path is None and hashlib.sha256(blob).hexdigest() != MODEL_SHA256:
            # A different file would silently change every budget decision.
            raise RuntimeError(f"{path} is not the expected Mistral v1 tokenizer (sha256 mismatch)")
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=blob)
        if self._sp.vocab_size() != 32000 or self._sp.bos_id() != BOS_ID or self._sp.eos_id() != EOS_ID:
            raise RuntimeError(f"{path} does not have the Mistral v1 vocabulary layout")
        # Upper bound on the characters one token can cover, so callers can tell
        # a text is far over budget without tokenizing megabytes
        # (``min_tokens``). Byte-fallback pieces cover at most one character.
        longest = max(
            len(self._sp.id_to_piece(i))
            for i in range(self._sp.vocab_size())
            if not (self._sp.is_byte(i) or self._sp.is_control(i) or self._sp.is_unknown(i))
        )
        self.max_chars_per_token = max(longest, max(len(s) for s in SPECIAL_IDS))

    # -- TGI view: special literals parsed, BOS prepended -------------------

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Ids TGI feeds the model for ``inputs=text`` (``bos=True``)."""
        ids = [BOS_ID] if bos else []
        for segment, special in _segments(text):
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._sp.encode(segment))
        return ids

    def count(self, text: str) -> int:
        """Input tokens TGI counts for ``inputs=text``: BOS included.

        Long texts are counted block by block, cutting only after newlines, which
        is exact (see ``_NEWLINE_PREFIX_PIECES``) and, unlike one SentencePiece
        call on megabytes, linear in the text length.
        """
        total = 1
        for segment, special in _segments(text):
            if special is not None:
                total += 1
                continue
            for block, after_newline in _blocks(segment):
                if after_newline:
                    total += len(self._sp.encode("\n" + block)) - _NEWLINE_PREFIX_PIECES
                else:
                    total += len(self._sp.encode(block))
        return total

    def min_tokens(self, text: str) -> int:
        """A cheap lower bound on ``count(text)`` (BOS included)."""
        return 1 + -(-len(text) // self.max_chars_per_token)

    def count_after_newline(self, text: str) -> int:
        """Tokens ``text`` adds when it follows a newline inside a larger text (no BOS).

        Used to add up blocks separated by newlines without re-encoding the
        joined text: no piece spans a newline, so these counts are additive.
        """
        return self.count("\n" + text) - 1 - _NEWLINE_PREFIX_PIECES

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; control ids (BOS, EOS) decode to nothing."""
        text: str = self._sp.decode(list(ids))
        return text

    # -- offsets, for chunking ---------------------------------------------

    def spans(self, text: str) -> TokenSpans:
        """Token start offsets of ``text`` in one linear pass (TGI view, no BOS).

        ``len(spans(t)) + 1 == count(t)``: blocks are cut after newlines and
        encoded in-context (see ``_NEWLINE_PREFIX_PIECES``); only a cut inside a
        newline-free run of over ``_LONGEST_SPAN_BLOCK`` characters can differ,
        by about one token.
        """
        starts = array("q")
        base = 0
        for segment, special in _segments(text):
            if special is not None:
                starts.append(base)
                base += len(segment.encode("utf-8"))
                continue
            for block, after_newline in _blocks(segment, longest=_LONGEST_SPAN_BLOCK):
                if after_newline:
                    proto = self._sp.encode("\n" + block, out_type="proto")
                    pieces = proto.pieces[_NEWLINE_PREFIX_PIECES:]
                    shift = base - 1  # the added "\n" is one byte
                else:
                    pieces = self._sp.encode(block, out_type="proto").pieces
                    shift = base
                starts.extend([piece.begin + shift for piece in pieces])
                base += len(block.encode("utf-8"))
        return TokenSpans(text.encode("utf-8"), starts)


def _segments(text: str) -> Iterator[tuple[str, int | None]]:
    """Split at special-token literals: (text, None) or (literal, its id)."""
    if "<" not in text:  # fast path: nothing to parse
        if text:
            yield text, None
        return
    for index, part in enumerate(_SPECIAL_SPLIT.split(text)):
        if index % 2:
            yield part, SPECIAL_IDS[part]
        elif part:
            yield part, None


def _blocks(segment: str, longest: int | None = None) -> Iterator[tuple[str, bool]]:
    """Cut a long segment into blocks of about ``_BLOCK_CHARS``, right after a newline.

    Yields (block, starts_after_newline). When a block has no newline it grows to
    the next newline, up to ``longest`` characters (None: no limit, so every cut
    is exact); past that it is cut anyway, which may shift the count at that cut
    by about one token.
    """
    position = 0
    after_newline = False
    while position < len(segment):
        stop = position + _BLOCK_CHARS
        if stop >= len(segment):
            stop = len(segment)
            cut_after_newline = False
        else:
            newline = segment.rfind("\n", position, stop)
            if newline < 0:
                limit = len(segment) if longest is None else position + longest
                newline = segment.find("\n", stop, limit)
            cut_after_newline = newline >= 0
            if cut_after_newline:
                stop = newline + 1
            elif longest is None or len(segment) - position <= longest:
                stop = len(segment)  # the rest is one line: keep it whole
        yield segment[position:stop], after_newline
        after_newline = cut_after_newline
        position = stop


_lock = threading.Lock()
_instance: MistralTokenizer | None = None


def get_tokenizer() -> MistralTokenizer:
    """Process-wide tokenizer (loading takes ~50 ms; do it once per container)."""
    global _instance
    if _instance is None:
        with _lock:
            if _instance is None:
                _instance = MistralTokenizer()
    return _instance
