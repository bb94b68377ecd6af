#!/usr/bin/env python3
"""Makes tests/fixtures/gemma3_tokens.jsonl: 2,400 varied strings and the ids
llama.cpp's tokenizer gives each with Gemma 3's vocabulary (no BOS).

usage: scripts/gemma3-tokenizer-fixture.py LLAMA_TOKENIZE GEMMA3.gguf OUT.jsonl

One llama-tokenize call (release b11434, ../shared/tools; --no-escape, so a
backslash stays a backslash) reads all the
strings joined by the control token <unused99>: llama.cpp tokenizes the text
between special tokens piece by piece, so each string's ids are the run
between two <unused99> ids. Strings are seeded and varied: scripts (Latin
with accents, Cyrillic, Greek, CJK, Arabic, Hebrew, Devanagari, Thai,
emoji), code, numbers, whitespace runs (spaces, tabs, newlines), text that
spells control pieces (<start_of_turn>, <end_of_turn>, <bos>, <eos>), byte
fallback (characters outside the vocabulary), and mixtures.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

SEPARATOR = "<unused99>"
WORDS = ["the", "The", "cat", "sat", "on", "mat", "Hello", "world", "naïve", "café", "über",
         "Straße", "año", "Привет", "мир", "Γειά", "σου", "日本語", "中文", "한국어", "مرحبا",
         "שלום", "नमस्ते", "สวัสดี", "🙂", "🚀", "👍🏽", "don't", "I'm", "e.g.", "U.S.A.", "3.14159",
         "1,000,000", "0x1F", "2026-12-07", "foo_bar", "camelCase", "snake_case", "URL:",
         "https://example.com/a?b=c", "user@example.com", "#include", "<stdio.h>", "fn",
         "main()", "{", "}", "=>", "!=", "&&", "||", "/*", "*/", "//", "\\n", "\"quoted\"",
         "'single'", "(paren)", "[bracket]", "  ", "\t", "\n", "\n\n", "   ", "\r\n"]
CONTROL = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<start_of_turn>user\n",
           "<end_of_turn>\n<start_of_turn>model\n"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "let v: Vec<u32> = (0..10).collect();", "SELECT * FROM t WHERE id = 42;",
        "<div class=\"a\">text</div>", "if x == 1:\n\tpass\nelse:\n\t\tprint('no')",
        "    indented\n        more\n", "x = [1, 2, 3]  # comment"]
RARE = ["\u0000", "\u0007", "\u00ad", "\u200b", "\ufeff", "\U0001f9ff", "\U0001d54f", "\u2028",
        "\U00020000", "\u0378", "\U000e0001", "\U0010fffd"]


def one(rng):
    kind = rng.randrange(8)
    if kind == 0:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    if kind == 1:
        return "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
    if kind == 2:
        return rng.choice(CODE) + rng.choice(["", " ", "\n", "\t"])
    if kind == 3:
        ws = ["", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\t\t", "        "]
        return "".join(rng.choice(ws) + rng.choice(WORDS) for _ in range(rng.randint(1, 6))) + rng.choice(ws)
    if kind == 4:
        return rng.choice(CONTROL) + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))
    if kind == 5:
        return "".join(rng.choice(RARE + WORDS[:10]) for _ in range(rng.randint(1, 6)))
    if kind == 6:
        return "".join(chr(rng.randint(0x20, 0x7e)) for _ in range(rng.randint(1, 40)))
    return "".join(chr(rng.choice([rng.randint(0x20, 0x2ff), rng.randint(0x400, 0x4ff),
                                   rng.randint(0x4e00, 0x4fff), rng.randint(0x1f300, 0x1f64f)]))
                   for _ in range(rng.randint(1, 20)))


def main(tokenize, model, out):
    rng = random.Random(20261207)
    strings = []
    while len(strings) < 2400:
        s = one(rng)
        # The separator must only separate; empty strings have no run.
        if s and SEPARATOR not in s:
            strings.append(s)
    sep_id = ids_of(tokenize, model, SEPARATOR)
    assert len(sep_id) == 1, sep_id
    ids = ids_of(tokenize, model, SEPARATOR + SEPARATOR.join(strings) + SEPARATOR)
    runs, run = [], None
    for i in ids:
        if i == sep_id[0]:
            if run is not None:
                runs.append(run)
            run = []
        elif run is not None:
            run.append(i)
    assert len(runs) == len(strings), (len(runs), len(strings))
    with open(out, "w", encoding="utf-8") as f:
        for s, r in zip(strings, runs):
            f.write(json.dumps({"text": s, "ids": r}, ensure_ascii=False) + "\n")


def ids_of(tokenize, model, text):
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write(text)
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(os.path.abspath(tokenize)))
    out = subprocess.run([tokenize, "-m", model, "-f", f.name, "--ids", "--no-bos", "--no-escape", "--log-disable"],
                         capture_output=True, text=True, env=env, check=True).stdout
    os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
