"""TGI-equivalent counting (sagebatch.domain.tokens) checked against mistral-common v1."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer as ReferenceTokenizer

import sagebatch.domain.tokens as tokens_module
from sagebatch.domain.prompt import Message, render_messages, render_prompt
from sagebatch.domain.tokens import (
    BOS_ID,
    BUNDLED_MODEL_PATH,
    EOS_ID,
    MODEL_FILE,
    MODEL_SHA256,
    MistralTokenizer,
    default_model_path,
    get_tokenizer,
    installed_model_path,
)

REPO = Path(__file__).resolve().parents[2]

CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
'''
LONG_PROSE = " ".join(["The committee reviewed the quarterly figures and asked for a revised forecast."] * 40)

# (system, [user, assistant, user, ...]) — every conversation ends with a user turn.
CORPUS: dict[str, tuple[str | None, list[str]]] = {
    "ascii": (None, ["What is the capital of France?"]),
    "accents": (None, ["Crème brûlée, façade, naïve, Ångström, Øresund"]),
    "emoji": (None, ["Rate this 😀🎉👍🏽 and 🇫🇷 please"]),
    "zwj-emoji": (None, ["family: 👨‍👩‍👧‍👦, flag: 🏳️‍🌈"]),
    "cjk": (None, ["东京是日本的首都。北京呢？"]),
    "japanese": (None, ["こんにちは、世界！カタカナとひらがな"]),
    "korean": (None, ["안녕하세요 세계"]),
    "arabic-rtl": (None, ["مرحبا بالعالم"]),
    "devanagari": (None, ["नमस्ते दुनिया"]),
    "math-symbols": (None, ["∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≈ ∞"]),
    "rare-plane": (None, ["𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 𓀀"]),
    "combining": (None, ["e\u0301 a\u0308 n\u0303"]),
    "fullwidth": (None, ["ｆｕｌｌｗｉｄｔｈ ﬁ ligature"]),
    "code": (None, [f"Explain:\n```python\n{CODE}```"]),
    "json": (None, ['{"a": [1, 2, {"b": null}], "c": "d\\n"}']),
    "tabs": (None, ["col1\tcol2\t\tcol3"]),
    "crlf": (None, ["line one\r\nline two\r\n"]),
    "whitespace-runs": (None, ["a    b        c                  d"]),
    "leading-trailing-space": (None, ["   padded   "]),
    "only-spaces": (None, ["     "]),
    "newlines-only": (None, ["\n\n\n"]),
    "empty-user": (None, [""]),
    "nbsp-and-bom": (None, ["a\u00a0b\ufeffc\u200bd"]),
    "control-chars": (None, ["bell\x07 null\x00 esc\x1b[0m"]),
    "brackets-like-template": (None, ["[INST] nested [/INST] text ] ["]),
    "long-prose": (None, [LONG_PROSE]),
    "system": ("You are a terse assistant.", ["Hi"]),
    "system-multiline": ("Rules:\n1. Be kind.\n2. Be brief.", ["Explain DNS."]),
    "system-empty-user": ("Only system matters", [""]),
    "two-exchanges": (None, ["Hi", "Hello!", "How are you?"]),
    "protocol-23": (None, ["Hi", "Hello!", "How are you?"]),
    "system-multi-turn": ("Answer in French.", ["Hi", "Bonjour !", "Thanks", "De rien.", "Bye"]),
    "assistant-leading-space": (None, ["q", "  spaced answer", "next"]),
    "assistant-trailing-newline": (None, ["q", "answer\n", "next"]),
    "assistant-whitespace-only": (None, ["q", "   ", "next"]),
    "assistant-code": (None, ["write fib", CODE, "now in Rust"]),
    "assistant-emoji-start": (None, ["mood?", "😀 great", "why?"]),
    "assistant-starts-with-bracket": (None, ["list?", "] odd", "ok"]),
    "unicode-multi-turn": ("系统提示", ["你好", "你好！有什么可以帮你？", "讲个笑话 😀"]),
    "many-turns": (None, [f"turn {i}" for i in range(21)]),
}


def our_messages(system: str | None, turns: list[str]) -> list[Message]:
    messages = [Message(role="system", content=system)] if system is not None else []
    roles = ["user", "assistant"]
    messages += [Message(role=roles[i % 2], content=text) for i, text in enumerate(turns)]  # type: ignore[arg-type]
    return messages


def reference_messages(system: str | None, turns: list[str]) -> list:
    messages: list = [SystemMessage(content=system)] if system is not None else []
    kinds = [UserMessage, AssistantMessage]
    messages += [kinds[i % 2](content=text) for i, text in enumerate(turns)]
    return messages


@pytest.fixture(scope="module")
def reference() -> ReferenceTokenizer:
    return ReferenceTokenizer.v1()


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_rendered_chat_tokenizes_exactly_like_mistral_common(case: str, reference: ReferenceTokenizer) -> None:
    # Given a conversation from the corpus
    system, turns = CORPUS[case]
    # When we render it for TGI and encode it as TGI would
    ours = get_tokenizer().encode(render_messages(our_messages(system, turns)))
    # Then the ids (hence the count) equal mistral-common's chat encoding
    expected = reference.encode_chat_completion(ChatCompletionRequest(messages=reference_messages(system, turns))).tokens
    assert ours == expected


def test_corpus_is_large_enough() -> None:
    # Given the parametrized corpus above
    # Then it covers at least thirty conversations
    assert len(CORPUS) >= 30


def test_protocol_example_single_turn_is_15_tokens() -> None:
    # Given protocol.md section 9's single-turn example
    # When counted
    # Then it is 15 tokens, BOS included
    assert get_tokenizer().count(render_prompt("What is the capital of France?")) == 15


def test_protocol_example_three_turns_is_23_tokens() -> None:
    # Given protocol.md section 9's Hi / Hello! / How are you? example
    messages = our_messages(None, ["Hi", "Hello!", "How are you?"])
    # When counted
    # Then it is 23 tokens
    assert get_tokenizer().count(render_messages(messages)) == 23


def test_empty_assistant_turn_matches_mistral_common_rule(reference: ReferenceTokenizer) -> None:
    # Given an empty assistant answer, which mistral-common refuses to encode
    turns = ["a", "", "b"]
    with pytest.raises(Exception, match="content or tool_calls"):
        reference.encode_chat_completion(ChatCompletionRequest(messages=reference_messages(None, turns)))
    # When we render and count it
    ours = get_tokenizer().encode(render_messages(our_messages(None, turns)))
    # Then it equals mistral-common's per-message rule: BOS, "[INST] a [/INST]", EOS, "[INST] b [/INST]"
    sp = reference.instruct_tokenizer.tokenizer
    expected = [BOS_ID, *sp.encode("[INST] a [/INST]", bos=False, eos=False), EOS_ID]
    expected += sp.encode("[INST] b [/INST]", bos=False, eos=False)
    assert ours == expected


def test_literal_special_tokens_count_as_tgi_parses_them() -> None:
    # Given inputs with a literal leading "<s>" (as in the seed) and a literal "</s>"
    tok = get_tokenizer()
    # When counted
    # Then "<s>" is a second BOS (+1, protocol.md 9) and "</s>" is the single EOS id
    assert tok.count("<s>" + render_prompt("What is the capital of France?")) == 16
    assert tok.encode("x</s>y")[2] == EOS_ID
    assert tok.encode("<unk>", bos=False) == [0]


def test_count_includes_bos_and_encode_can_omit_it() -> None:
    # Given any text
    tok = get_tokenizer()
    # When encoded with and without BOS
    # Then the only difference is the leading id 1
    assert tok.encode("hello world") == [BOS_ID, *tok.encode("hello world", bos=False)]
    assert tok.count("") == 1


def test_decode_round_trips_text() -> None:
    # Given unicode text
    text = "héllo 世界 😀 𝔘 \n\tcode()"
    tok = get_tokenizer()
    # When encoded then decoded
    # Then the text comes back
    assert tok.decode(tok.encode(text, bos=False)) == text


SPAN_TEXT = ("Para one. Sentence two!\n\n  indented 世界 😀 𝔘\n\tx = 1</s>after <s>y\n" * 30) + "end " * 50


@pytest.mark.parametrize("block_chars", [5, 32, 1 << 16])
def test_blocked_count_equals_one_pass_encoding(block_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a long text counted in blocks of various sizes (cut only after newlines)
    monkeypatch.setattr(tokens_module, "_BLOCK_CHARS", block_chars)
    tok = get_tokenizer()
    # When counted
    # Then the count equals the length of the one-pass encoding
    assert tok.count(SPAN_TEXT) == len(tok.encode(SPAN_TEXT))


@pytest.mark.parametrize("block_chars", [5, 32, 1 << 16])
def test_spans_have_one_entry_per_counted_token(block_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a text with paragraphs, unicode, byte-fallback characters and special literals
    monkeypatch.setattr(tokens_module, "_BLOCK_CHARS", block_chars)
    tok = get_tokenizer()
    # When token spans are computed
    spans = tok.spans(SPAN_TEXT)
    # Then there is exactly one span per token TGI counts (minus BOS)
    assert len(spans) + 1 == tok.count(SPAN_TEXT)


@pytest.mark.parametrize("longest", [7, 64, 1 << 20])
def test_span_slices_rebuild_the_text(longest: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the same text, with newline-free runs cut after `longest` characters
    monkeypatch.setattr(tokens_module, "_BLOCK_CHARS", 5)
    monkeypatch.setattr(tokens_module, "_LONGEST_SPAN_BLOCK", longest)
    spans = get_tokenizer().spans(SPAN_TEXT)
    # When it is sliced at every 7th token
    pieces = [spans.text(i, i + 7) for i in range(0, len(spans), 7)]
    # Then every slice decodes and together they are the text
    assert "".join(pieces) == SPAN_TEXT


def test_model_comes_from_the_installed_package_and_is_not_in_the_repo() -> None:
    # Given the model path the tokenizer loads in a local install (no layer copy beside the package)
    path = default_model_path()
    # Then it is mistral_common's bundled v1 file with the published hash, outside this repository
    assert not BUNDLED_MODEL_PATH.exists()
    assert path.parts[-3:] == ("mistral_common", "data", "tokenizer.model.v1")
    assert "site-packages" in path.parts
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MODEL_SHA256
    project_dirs = [d for d in REPO.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert not [f for d in project_dirs for f in d.glob("**/tokenizer.model*")]


@pytest.fixture
def layer_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model copied beside the package, as the layer build (shared/Makefile) does, with no fallback left."""
    installed = installed_model_path()
    assert installed is not None
    copy = tmp_path / "sagebatch" / "domain" / "data" / MODEL_FILE
    copy.parent.mkdir(parents=True)
    shutil.copyfile(installed, copy)
    monkeypatch.setattr(tokens_module, "BUNDLED_MODEL_PATH", copy)
    monkeypatch.setattr(tokens_module, "installed_model_path", lambda: None)  # as in the layer: no mistral_common
    return copy


def test_the_layer_copy_of_the_model_is_loaded_first_and_gives_mistral_commons_ids(
    layer_copy: Path, reference: ReferenceTokenizer
) -> None:
    # Given the model file beside the package (the layer's copy) and no mistral_common to fall back on
    # When the tokenizer loads its default model
    path = default_model_path()
    tok = MistralTokenizer()
    # Then it is the copy, and every conversation of the corpus still encodes exactly as mistral-common does
    assert path == layer_copy
    for case, (system, turns) in sorted(CORPUS.items()):
        expected = reference.encode_chat_completion(ChatCompletionRequest(messages=reference_messages(system, turns))).tokens
        assert tok.encode(render_messages(our_messages(system, turns))) == expected, case


def test_a_layer_copy_with_the_wrong_hash_is_refused_rather_than_skipped(layer_copy: Path) -> None:
    # Given a different file where the layer's model should be
    blob = layer_copy.read_bytes()
    layer_copy.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    # When the tokenizer loads its default model
    # Then it refuses it (a different vocabulary would change every budget decision)
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        MistralTokenizer()


def test_without_a_layer_copy_or_mistral_common_the_error_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given neither the layer's copy nor an installed mistral_common
    monkeypatch.setattr(tokens_module, "BUNDLED_MODEL_PATH", tmp_path / "data" / MODEL_FILE)
    monkeypatch.setattr(tokens_module, "find_spec", lambda name: None)
    # When the model is looked up
    # Then it fails naming both places, and downloads nothing
    with pytest.raises(FileNotFoundError, match=r"neither at .* nor in an installed mistral_common"):
        default_model_path()


def test_finding_the_installed_model_does_not_import_mistral_common() -> None:
    # Given a fresh interpreter with the local install (mistral-common, its numpy and pillow are heavy to import)
    code = (
        "import sys; from sagebatch.domain.tokens import get_tokenizer; get_tokenizer(); print(sorted("
        "m for m in ('mistral_common', 'numpy', 'PIL', 'tiktoken') if m in sys.modules))"
    )
    # When the tokenizer loads mistral_common's model file
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    # Then none of them was imported
    assert result.stdout.strip() == "[]"


def test_get_tokenizer_is_a_singleton() -> None:
    # Given two lookups
    # Then they return the same loaded instance
    assert get_tokenizer() is get_tokenizer()


def test_concurrent_encoding_gives_the_same_ids_as_serial() -> None:
    # Given one shared tokenizer and many different texts
    tok = get_tokenizer()
    texts = [f"{i} " + LONG_PROSE[: 50 + 37 * i] + " 世界😀" * (i % 5) for i in range(200)]
    serial = [tok.encode(t) for t in texts]
    # When eight threads encode them at once, repeatedly
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(tok.encode, texts * 5))
    # Then every result equals the serial one
    assert concurrent == serial * 5
