"""Build a small, offline Hugging Face "fast" tokenizer for AIPerf and GuideLLM.

Both tools want a tokenizer and would download one. This one is a WordLevel
tokenizer whose pre-tokenizer is the regex of GuideLLM's mock server
(``\\w+ | one punctuation mark | a run of whitespace``), so one streamed chunk
of that server is one token. Its vocabulary: the words of AIPerf's bundled
corpora and Faker's lorem list (what GuideLLM's synthetic prompts and the
mock server emit), capitalised too, printable ASCII, numbers and whitespace
runs; anything else is ``[UNK]``, still one token.

Run it with the Python of a peer-tool virtual environment (it needs
``tokenizers`` and ``transformers``, which both have); no network:

    $PEER_guidellm/bin/python benchmarks/peer_tokenizer.py $PEER/tok
"""

from __future__ import annotations

import glob
import os
import re
import string
import sys

PATTERN = r"\w+|[^\w\s]|\s+"
WHITESPACE = {" ", "\n", "\t", "\r", "\n\n", "  ", " \n", "\n ", "   ", "    ", "\r\n"}


def main(out: str, aiperf_venv: str) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: set[str] = set()
    corpora = "lib/python3*/site-packages/aiperf/dataset/generator/assets/*.txt"
    for path in glob.glob(os.path.join(aiperf_venv, corpora)):
        with open(path, encoding="utf-8", errors="ignore") as f:
            words.update(re.findall(r"\w+|[^\w\s]", f.read()))
    try:  # Faker's lorem words: GuideLLM's synthetic text and the mock server's output
        from faker.providers.lorem.en_US import Provider as Lorem

        words.update(Lorem.word_list)
    except ImportError:
        pass
    words |= {w.capitalize() for w in words} | {w.lower() for w in words}
    words |= set(string.printable.strip()) | {str(i) for i in range(1000)}
    vocab = {"[UNK]": 0}
    for w in sorted(WHITESPACE) + sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", model_max_length=1_000_000
    )
    os.makedirs(out, exist_ok=True)
    fast.save_pretrained(out)
    print(f"wrote {out} (vocabulary {len(vocab)})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: peer_tokenizer.py OUT_DIR   (AIPERF_VENV: the aiperf venv, for its corpora)")
    peer = os.environ.get("PEER", "/tmp/peer")
    main(sys.argv[1], os.environ.get("AIPERF_VENV", peer + "_aiperf"))
