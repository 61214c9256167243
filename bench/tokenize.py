"""Tokenizer and chunking throughput on 1 MB and 10 MB documents.

Usage (from the repo root)::

    PYTHONPATH=shared .venv/bin/python bench/tokenize.py            # 1 MB and 10 MB
    PYTHONPATH=shared .venv/bin/python bench/tokenize.py --sizes 1  # 1 MB only

Rows (tokens per second of document, best of ``--repeat`` runs):
  count           tokenizer.count(document): what TGI would count
  count, 2 thr    the same text in two halves on two threads (sentencepiece releases the GIL)
  spans           tokenizer.spans(document): token start offsets, the chunkers' single pass
  split 8192      fitting.answer(..., strategy=split) with the JumpStart budget and a no-op endpoint:
                  one tokenization with offsets, then each chunk call rendered and counted once
  map_reduce 8192 the same with map_reduce (map calls + combining calls, no-op endpoint)

The document is generated deterministically: prose paragraphs, Python code, accented, CJK and
emoji text, and some long runs of whitespace.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's `tokenize`; running it puts bench/ first on
# sys.path, where it would shadow that module for everything imported below.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.fitting import Call, answer
from sagebatch.domain.generation import Generation
from sagebatch.domain.records import DocumentRecord, FitSettings, Strategy
from sagebatch.domain.tokens import get_tokenizer

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "will",
    "more",
    "system",
    "budget",
    "endpoint",
    "request",
    "token",
    "model",
    "latency",
    "throughput",
    "document",
    "paragraph",
]
UNICODE = [
    "Crème brûlée à la façade naïve.",
    "東京は日本の首都です。北京は中国の首都です。",
    "안녕하세요, 세계!",
    "Emoji 😀🎉👍🏽 and flags 🇫🇷🇯🇵.",
    "Ωμέγα, Привет, مرحبا, नमस्ते.",
]
CODE = '''def chunk(items, size):
    """Yield successive slices of ``items``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
'''


def make_document(size_bytes: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < size_bytes:
        kind = rnd.random()
        if kind < 0.70:
            sentences = [
                " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 24))).capitalize() + "."
                for _ in range(rnd.randint(2, 8))
            ]
            part = " ".join(sentences)
        elif kind < 0.85:
            part = CODE.replace("chunk", f"chunk_{rnd.randint(0, 999)}")
        elif kind < 0.97:
            part = " ".join(rnd.choice(UNICODE) for _ in range(rnd.randint(1, 4)))
        else:
            part = "col_a" + " " * rnd.randint(4, 40) + "col_b\t\tcol_c"
        parts.append(part)
        total += len(part.encode("utf-8")) + 2
    return "\n\n".join(parts)


def no_op_endpoint(calls: Sequence[Call]) -> list[Generation]:
    return [Generation("partial answer", 2, "eos_token") for _ in calls]


def best_time(action: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10", help="document sizes in MB (comma separated)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    tok = get_tokenizer()
    budget = TokenBudget()
    print(f"{'document':>8} | {'operation':<15} | {'tokens':>10} | {'seconds':>8} | {'tokens/s':>10} | notes")
    print(f"{'-' * 8}-|-{'-' * 15}-|-{'-' * 10}-|-{'-' * 8}-|-{'-' * 10}-|------")
    for mb in (float(s) for s in args.sizes.split(",")):
        document = make_document(int(mb * 1_000_000))
        label = f"{mb:g} MB"
        seconds, count = best_time(lambda: tok.count(document), args.repeat)
        tokens = int(count) - 1  # without BOS
        rows: list[tuple[str, float, str]] = [("count", seconds, "")]

        half = len(document) // 2
        with ThreadPoolExecutor(max_workers=2) as pool:
            seconds, _ = best_time(lambda: list(pool.map(tok.count, [document[:half], document[half:]])), args.repeat)
        rows.append(("count, 2 thr", seconds, ""))

        seconds, spans = best_time(lambda: tok.spans(document), args.repeat)
        rows.append(("spans", seconds, f"{len(spans)} spans"))

        content = DocumentRecord(instruction="Summarize the document.", document=document)
        for strategy in (Strategy.SPLIT, Strategy.MAP_REDUCE):
            options = FitSettings(strategy=strategy)
            seconds, outcome = best_time(lambda: answer(content, 512, options, budget, tok, no_op_endpoint), args.repeat)
            rows.append((f"{strategy.value} 8192", seconds, f"{outcome.chunks} chunks, {outcome.calls} calls"))

        for name, seconds, notes in rows:
            print(f"{label:>8} | {name:<15} | {tokens:>10,} | {seconds:>8.2f} | {tokens / seconds:>10,.0f} | {notes}")


if __name__ == "__main__":
    main()
