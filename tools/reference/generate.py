#!/usr/bin/env python3
"""Generate llama.cpp reference fixtures for coordgen's conformance tests.

Run through `tools/reference/generate` (it builds the venv first). Writes
tests/fixtures/{tokenizer,logits,greedy}.json. Deterministic: the same machine
and the same llama-cpp-python build give byte-identical files.
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
DEMO_CONTEXT = os.path.join(ROOT, "tools", "demo-context.md")

N_THREADS = 2
N_CTX = 2048
N_BATCH = 2048   # logical batch: whole prompt (+continuation) in one llama_decode
N_UBATCH = 2048  # physical batch: no split into 512-token micro-batches
SEED = 0
FLASH_ATTN = False  # llama-cpp-python default: LLAMA_FLASH_ATTN_TYPE_DISABLED
GGML_TYPE_F16 = 1
TYPE_K = GGML_TYPE_F16
TYPE_V = GGML_TYPE_F16

LOGITS_CONTINUATION = 32
GREEDY_TOKENS = 64
TOP_K = 10


def r4(x):
    return round(float(x), 4)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# JSON writer: pretty at the top, compact for lists of scalars (one line per
# top-10 row), so files stay small and diff well.


def _is_scalar(x):
    return x is None or isinstance(x, (bool, int, float, str))


def _dump(obj, indent, level):
    pad = " " * (indent * (level + 1))
    end = " " * (indent * level)
    if _is_scalar(obj):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, list):
        if all(_is_scalar(v) for v in obj) or (
            len(obj) <= 16
            and all(isinstance(v, list) and all(_is_scalar(w) for w in v) for v in obj)
        ):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        if not obj:
            return "[]"
        items = [_dump(v, indent, level + 1) for v in obj]
        return "[\n" + ",\n".join(pad + s for s in items) + "\n" + end + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [
            json.dumps(k, ensure_ascii=False) + ": " + _dump(v, indent, level + 1)
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(pad + s for s in items) + "\n" + end + "}"
    raise TypeError(type(obj))


def write_json(name, obj):
    path = os.path.join(FIXTURES, name)
    text = _dump(obj, 1, 0) + "\n"
    json.loads(text)  # sanity
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path} ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)


# --------------------------------------------------------------------------
# Common metadata


def base_meta(model_sha):
    return {
        "generator": "tools/reference/generate.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "llama_cpp_python_build": "pip install llama-cpp-python==0.3.36 from PyPI (sdist), CMAKE_ARGS=-DGGML_NATIVE=ON, CPU only",
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "model_file": os.path.basename(MODEL),
        "model_sha256": model_sha,
    }


def context_meta(logits_all_note):
    return {
        "n_threads": N_THREADS,
        "n_threads_batch": N_THREADS,
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "n_ubatch": N_UBATCH,
        "seed": SEED,
        "flash_attn": "disabled (LLAMA_FLASH_ATTN_TYPE_DISABLED)" if not FLASH_ATTN else "enabled",
        "type_k": "f16",
        "type_v": "f16",
        "n_gpu_layers": 0,
        "use_mmap": True,
        "logits_all": logits_all_note,
    }


# --------------------------------------------------------------------------
# Tokenizer fixture

TOKENIZER_TEXTS = [
    # plain
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    # unicode
    "日本語のテキストを分割します。",
    "中文分词测试：我们今天去公园散步。",
    "한국어 문장도 토큰화합니다.",
    "Emoji: 😀🎉👍🏽",
    "Family ZWJ: 👨‍👩‍👧‍👦 and flag 🏳️‍🌈 and 🇳🇴",
    "Café naïve résumé façade Ångström",
    "Combining: e\u0301 a\u0308 n\u0303 (decomposed)",
    "Ελληνικά και Кириллица вместе",
    "مرحبا بالعالم",
    "עברית: שלום עולם",
    "Mixed: English, 日本語, العربية, русский, and 😀 in one line.",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    '{"name": "coordgen", "version": [0, 1, 2], "ok": true, "ratio": 0.25}',
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    # whitespace
    "two  spaces   three    four",
    "\ttab\t\ttwo tabs",
    "line one\nline two\n\nafter blank\n\n\n",
    "mixed \t \n \r\n whitespace",
    "        eight leading spaces",
    "trailing spaces and newline   \n",
    "   ",
    "\n",
    # digits
    "1 12 123 1234 12345 123456",
    "3.14159265358979323846",
    "The year 2024 had 366 days; 1,000,000 people; 0.001%.",
    "9876543210987654321098765432109876543210",
    # contractions
    "it's don't they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D",
    "It'S dOn'T",
    # punctuation
    "Wait... what?!?! (really) [yes] {no} <maybe>",
    "---===***!!!???;;;:::",
    "email@example.com https://example.org/path?q=1&x=y#frag",
    # special tokens written in text
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more text",
    "<|im_end|>",
    # empty
    "",
]

# Texts with special tokens are also recorded with parse_special=False; a few
# others with both settings so the flag's effect (none) is pinned too.
SPECIAL_TEXT_MARK = "<|"


def tokenizer_cases(vocab):
    cases = []
    for i, text in enumerate(TOKENIZER_TEXTS):
        combos = [(False, False)]
        if SPECIAL_TEXT_MARK in text:
            combos = [(False, True), (False, False), (True, True), (True, False)]
        elif i % 4 == 0 or text == "":
            combos = [(False, False), (True, False), (True, True)]
        for add_special, parse_special in combos:
            ids = vocab.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            cases.append({
                "text": text,
                "add_special": add_special,
                "parse_special": parse_special,
                "ids": [int(t) for t in ids],
            })
    return cases


# --------------------------------------------------------------------------
# Prompts


def read_demo_context():
    with open(DEMO_CONTEXT, encoding="utf-8") as f:
        return f.read().strip()


CODE_SNIPPET = '''```python
import json
import urllib.request

def fetch_prices(symbols):
    prices = {}
    for s in symbols:
        url = "https://api.example.com/quote?symbol=" + s
        data = urllib.request.urlopen(url).read()
        quote = json.loads(data)
        prices[s] = quote["price"]
    return prices

def portfolio_value(holdings):
    prices = fetch_prices(list(holdings.keys()))
    total = 0
    for symbol, shares in holdings.items():
        total += prices[symbol] * shares
    return total

if __name__ == "__main__":
    print(portfolio_value({"ACME": 10, "GLOBEX": 4, "INITECH": 25}))
```'''


def logits_prompts(doc):
    return [
        {
            "name": "doc_summarize",
            "messages": [
                {"role": "user", "content": "Summarize this report in five short bullet points. Keep the key numbers.\n\n" + doc},
            ],
        },
        {
            "name": "code_request",
            "messages": [
                {"role": "system", "content": "You are a careful senior Python developer. Answer with code first, then a short explanation."},
                {"role": "user", "content": "Here is a small script that computes the value of a stock portfolio.\n\n" + CODE_SNIPPET +
                 "\n\nPlease improve it: add a timeout to the HTTP requests, retry each request up to three times with a short "
                 "delay, skip symbols whose quote has no price instead of crashing, and add type hints and docstrings. "
                 "Keep the same public functions."},
            ],
        },
        {
            "name": "multi_turn",
            "messages": [
                {"role": "system", "content": "You are a friendly travel assistant who gives practical, concise advice."},
                {"role": "user", "content": "I am planning a week in Portugal in late September. I like walking, old towns and seafood, but I don't want to rent a car. Where should I base myself?"},
                {"role": "assistant", "content": "Late September is a great time: the summer crowds are gone and the sea is still warm. Without a car, I would split the week between Lisbon (four nights) and Porto (three nights). Both have good public transport, walkable old quarters and excellent seafood, and the train between them takes about three hours."},
                {"role": "user", "content": "That sounds good. What day trips can I do from Lisbon by train or bus?"},
                {"role": "assistant", "content": "From Lisbon you can easily reach Sintra (40 minutes by train from Rossio) for its palaces and forest walks, Cascais (40 minutes along the coast) for beaches and a seaside promenade, and Évora (about 90 minutes by bus) for its Roman temple and medieval walls."},
                {"role": "user", "content": "Great. Now give me a simple day-by-day plan for the whole week, including the train to Porto, and tell me which restaurants or dishes I should look for in each city."},
            ],
        },
        {
            "name": "long_instruction",
            "messages": [
                {"role": "user", "content": (
                    "Write a product description for a new reusable water bottle called the Fjordline 750. Follow all of these rules carefully. "
                    "First, start with a one-sentence headline in capital letters. Second, write exactly three paragraphs after the headline. "
                    "The first paragraph must describe the design: it holds 750 millilitres, it is made of double-walled stainless steel, "
                    "it weighs 340 grams, and it comes in four colours named Glacier, Moss, Basalt and Sunrise. "
                    "The second paragraph must explain the performance: it keeps drinks cold for 24 hours and hot for 12 hours, the lid is leak-proof, "
                    "and the bottle fits in standard car cup holders. The third paragraph must talk about sustainability: one Fjordline bottle "
                    "replaces hundreds of plastic bottles a year, the packaging is recycled cardboard, and the company plants a tree for every bottle sold. "
                    "Do not use exclamation marks. Do not mention any competitor. Use a warm but professional tone, avoid technical jargon, "
                    "and keep the whole description under 200 words. End with a short call to action that mentions the price of 34 euros."
                )},
            ],
        },
        {
            "name": "email_draft",
            "messages": [
                {"role": "system", "content": "You help people write clear, polite emails."},
                {"role": "user", "content": (
                    "Please draft an email from me, Jonas Berg, to my landlord, Mrs. Helen Carter. The situation: the heating in my flat "
                    "(number 4B, 17 Alder Street) stopped working on Monday, 3 November. I reported it by phone the same day and was told a "
                    "technician would come within 48 hours, but nobody has come and it is now Friday. The temperature inside is about 14 degrees "
                    "at night, and I work from home, so this is a real problem. I would like the repair to happen by Monday at the latest. "
                    "If that is not possible, I would like her to provide an electric heater in the meantime and to discuss a reduction of this "
                    "month's rent. Mention that I have always paid the rent on time and that I appreciate her help in the past with the broken window. "
                    "The email should be firm but friendly, not angry, and not longer than about 200 words. Add a clear subject line."
                )},
            ],
        },
    ]


SHORT_CONTEXT = (
    "The Lumen Street bakery opened in 1987 and is run by Ada Novak and her son Pavel. "
    "It bakes about 600 loaves a day, opens at 6 a.m. and closes at 2 p.m., and is closed on Mondays. "
    "Its best seller is a rye bread with caraway seeds, which costs 4.20 euros."
)


def greedy_prompts():
    return [
        {"name": "short_question", "messages": [{"role": "user", "content": "Why is the sky blue during the day but red at sunset?"}]},
        {"name": "context_qa", "messages": [{"role": "user", "content": "Read the text and answer the questions.\n\n" + SHORT_CONTEXT + "\n\nWho runs the bakery, when is it closed, and what is its best seller? Then describe the bakery in detail."}]},
        {"name": "list_request", "messages": [{"role": "user", "content": "List ten tips for staying productive when working from home. Explain each tip in one sentence."}]},
        {"name": "code_python", "messages": [{"role": "user", "content": "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation. Include a docstring and a few examples."}]},
        {"name": "translation", "messages": [{"role": "user", "content": "Translate the following text into French:\n\nThe weather was cold this morning, so we stayed at home, drank hot chocolate and read books by the window. In the afternoon the sun came out and we went for a long walk along the river."}]},
        {"name": "story_start", "messages": [{"role": "user", "content": "Write the beginning of a story about a lighthouse keeper who finds a message in a bottle."}]},
        {"name": "explain_concept", "messages": [{"role": "system", "content": "You are a patient teacher."}, {"role": "user", "content": "Explain how photosynthesis works to a twelve-year-old."}]},
        {"name": "recipe", "messages": [{"role": "user", "content": "Give me a simple recipe for pancakes with the ingredients and the steps."}]},
        {"name": "compare", "messages": [{"role": "user", "content": "Compare trains and airplanes for travelling 500 kilometres. Discuss cost, time, comfort and the environment."}]},
        {"name": "email_short", "messages": [{"role": "user", "content": "Write a short email to my team announcing that the office will be closed next Friday for maintenance."}]},
        {"name": "history", "messages": [{"role": "user", "content": "Tell me about the history of the printing press and why it was important."}]},
        {"name": "rewrite", "messages": [{"role": "user", "content": "Rewrite this paragraph to be more formal:\n\nHey, so we kinda messed up the order last week and the boxes got sent to the wrong place. Sorry about that! We're fixing it and you'll get your stuff by Tuesday, promise."}]},
    ]


# --------------------------------------------------------------------------
# Model helpers


class Chat:
    def __init__(self, vocab):
        template = vocab.metadata["tokenizer.chat_template"]
        eos = vocab._model.token_get_text(vocab.token_eos())
        bos = vocab._model.token_get_text(vocab.token_bos())
        self.fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        self.vocab = vocab
        # llama.cpp's common_tokenize(..., add_special=true, parse_special=true):
        # add_special lets the vocab decide; this GGUF has add_bos_token=false,
        # so no BOS is prepended (the template starts with <|im_start|>).
        self.add_special = True

    def render(self, messages):
        return self.fmt(messages=messages).prompt

    def tokenize(self, rendered):
        return [int(t) for t in self.vocab.tokenize(rendered.encode("utf-8"), add_bos=self.add_special, special=True)]


def make_model(logits_all):
    return Llama(
        model_path=MODEL,
        n_gpu_layers=0,
        seed=SEED,
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_ubatch=N_UBATCH,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=logits_all,
        flash_attn=FLASH_ATTN,
        type_k=TYPE_K,
        type_v=TYPE_V,
        verbose=False,
    )


def last_logits(model):
    """Logits of the last output row of the latest llama_decode (decode path)."""
    n_vocab = model.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(model.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()


def greedy_decode(model, prompt_tokens, n_new, stop_at_eos, batched):
    """Greedy continuation (argmax, first index on ties, like llama.cpp's greedy
    sampler). The prompt goes in one llama_decode. Then:
    - batched=False: llama.cpp's decode path, one token per llama_decode;
    - batched=True: llama.cpp's batched (prompt-processing) path at every step:
      the new token is evaluated together with the previous one (which is
      dropped from the KV cache and recomputed), so every llama_decode has
      n_tokens >= 2 and llama.cpp uses its prompt kernels (llamafile sgemm is
      skipped below 2 tokens). check_batched_greedy() verifies that this equals
      re-evaluating the whole sequence in one batch."""
    eos = model.token_eos()
    model.reset()
    model.eval(prompt_tokens)
    tokens, margins = [], []
    for step in range(n_new):
        logits = last_logits(model)
        top2 = np.argsort(-logits, kind="stable")[:2]
        tok = int(top2[0])
        tokens.append(tok)
        margins.append(r4(logits[top2[0]] - logits[top2[1]]))
        if stop_at_eos and tok == eos:
            break
        if step + 1 < n_new:
            if batched:
                prev = model.input_ids[model.n_tokens - 1]
                model.n_tokens -= 1
                model.eval([int(prev), tok])
            else:
                model.eval([tok])
    return tokens, margins


def check_batched_greedy(model, prompt_tokens, steps=8):
    """Asserts that the two-token re-evaluation of greedy_decode(batched=True)
    gives bitwise the logits of one llama_decode over the whole sequence."""
    toks, _ = greedy_decode(model, prompt_tokens, steps, False, batched=True)
    for i in range(1, len(toks)):
        full = full_batch_last_logits(model, prompt_tokens + toks[:i])
        model.reset()
        model.eval(prompt_tokens)
        for t in toks[:i]:
            prev = model.input_ids[model.n_tokens - 1]
            model.n_tokens -= 1
            model.eval([int(prev), t])
        if not np.array_equal(full, last_logits(model)):
            raise SystemExit(f"two-token re-evaluation differs from a full batch at step {i}")


def full_batch_last_logits(model, tokens):
    """Logits after the last token, from one llama_decode of the whole sequence."""
    model.reset()
    model.eval(tokens)
    return last_logits(model)


def sequential_logits(model, tokens):
    """Logits at every position, feeding one token per llama_decode."""
    model.reset()
    out = np.empty((len(tokens), model.n_vocab()), dtype=np.float32)
    for i, t in enumerate(tokens):
        model.eval([t])
        out[i] = last_logits(model)
    return out


def batch_logits(model_all, tokens):
    """Teacher-forced logits at every position from ONE llama_decode call."""
    assert len(tokens) <= N_BATCH and len(tokens) <= N_UBATCH
    model_all.reset()
    model_all.eval(tokens)
    return np.array(model_all.scores[: len(tokens), :], dtype=np.float32)


def top_k_rows(logits, k):
    rows = []
    for row in logits:
        idx = np.argpartition(-row, k)[:k]
        # order by logit descending, then token id ascending (stable for ties)
        idx = sorted((int(i) for i in idx), key=lambda i: (-float(row[i]), i))
        rows.append([[i, r4(row[i])] for i in idx])
    return rows


def detok(vocab, tokens):
    return vocab.detokenize(tokens, special=True).decode("utf-8", "replace")


# --------------------------------------------------------------------------


def main():
    global FIXTURES
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=FIXTURES, help="output directory")
    ap.add_argument("--only", choices=["tokenizer", "logits", "greedy"], action="append")
    args = ap.parse_args()
    FIXTURES = os.path.abspath(args.out)
    os.makedirs(FIXTURES, exist_ok=True)
    only = set(args.only or ["tokenizer", "logits", "greedy"])

    model_sha = sha256(MODEL)
    vocab = Llama(model_path=MODEL, vocab_only=True, verbose=False)
    chat = Chat(vocab)
    t0 = time.time()

    if "tokenizer" in only:
        cases = tokenizer_cases(vocab)
        meta = base_meta(model_sha)
        meta["how"] = {
            "ids": "Llama(model_path, vocab_only=True).tokenize(text.encode('utf-8'), add_bos=add_special, special=parse_special)",
            "add_special": "passed as add_bos; llama_tokenize's add_special. This GGUF has tokenizer.ggml.add_bos_token=false, so it adds nothing",
            "parse_special": "passed as special; when true, special-token text such as <|im_start|> maps to its single id",
        }
        meta["n_cases"] = len(cases)
        write_json("tokenizer.json", {"meta": meta, "cases": cases})

    if "logits" in only or "greedy" in only:
        model = make_model(logits_all=False)

    if "logits" in only:
        model_all = make_model(logits_all=True)
        doc = read_demo_context()
        cases = []
        noise = []
        sq_sum, abs_sum, n_el, max_abs = 0.0, 0.0, 0, 0.0
        for p in logits_prompts(doc):
            rendered = chat.render(p["messages"])
            prompt = chat.tokenize(rendered)
            assert len(prompt) >= 200, (p["name"], len(prompt))
            cont, margins = greedy_decode(model, prompt, LOGITS_CONTINUATION, False, batched=False)
            full = prompt + cont
            assert len(full) <= N_CTX
            bl = batch_logits(model_all, full)
            # batched argmax vs decode-path continuation
            n_prompt = len(prompt)
            batch_argmax = [int(np.argmax(bl[n_prompt - 1 + j])) for j in range(len(cont))]
            disagree = [j for j in range(len(cont)) if batch_argmax[j] != cont[j]]
            # llama.cpp's own noise: batched vs one-token-at-a-time logits
            sl = sequential_logits(model, full)
            d = (bl - sl).astype(np.float64)
            rec = {
                "name": p["name"],
                "positions": len(full),
                "rms": r4(np.sqrt(np.mean(d * d))),
                "mean_abs": r4(np.mean(np.abs(d))),
                "max_abs": r4(np.max(np.abs(d))),
                "argmax_agreement": r4(np.mean(np.argmax(bl, 1) == np.argmax(sl, 1))),
            }
            noise.append(rec)
            sq_sum += float(np.sum(d * d))
            abs_sum += float(np.sum(np.abs(d)))
            n_el += d.size
            max_abs = max(max_abs, float(np.max(np.abs(d))))
            print(f"{p['name']}: prompt {len(prompt)} tokens; self-noise rms {rec['rms']} max {rec['max_abs']}; "
                  f"continuation/batch-argmax disagreements {disagree}", file=sys.stderr)
            cases.append({
                "name": p["name"],
                "messages": p["messages"],
                "rendered": rendered,
                "prompt_tokens": prompt,
                "continuation": cont,
                "continuation_text": detok(vocab, cont),
                "continuation_margins": margins,
                "batch_argmax_disagreements": disagree,
                "top10": top_k_rows(bl, TOP_K),
            })
        meta = base_meta(model_sha)
        meta.update(context_meta("false for the decode-path context, true for the teacher-forced context"))
        meta["how"] = {
            "rendered": "llama_cpp.llama_chat_format.Jinja2ChatFormatter with the GGUF's tokenizer.chat_template, eos/bos token texts from the vocab, add_generation_prompt=True",
            "prompt_tokens": "tokenize(rendered, add_special=True (vocab adds no BOS: add_bos_token=false), parse_special=True)",
            "continuation": "greedy decode path: prompt in one llama_decode, then one token per llama_decode; next token = argmax of the last logits (first index on ties = llama.cpp greedy sampler); 32 tokens, EOS not treated as a stop",
            "continuation_margins": "per continuation step, top-1 logit minus top-2 logit on the decode path",
            "top10": "teacher-forced: prompt_tokens+continuation evaluated in ONE llama_decode (n_batch=n_ubatch=2048, logits_all=True); row i = the 10 highest [token_id, logit] of the logits at position i (predicting token i+1), sorted by logit desc then id asc; one row per position incl. the last",
            "batch_argmax_disagreements": "continuation steps j where argmax of top10 row (n_prompt-1+j) differs from continuation[j] (llama.cpp batch-vs-decode noise)",
            "self_noise": "llama.cpp's own batched-vs-decode difference: the same prompt+continuation evaluated (a) in one batch (b) one token per llama_decode; over all positions and the whole vocab",
            "floats": "rounded to 4 decimals",
        }
        meta["self_noise"] = {
            "all_prompts": {
                "positions": int(n_el // vocab.n_vocab()),
                "rms": r4(np.sqrt(sq_sum / n_el)),
                "mean_abs": r4(abs_sum / n_el),
                "max_abs": r4(max_abs),
            },
            "per_prompt": noise,
        }
        write_json("logits.json", {"meta": meta, "cases": cases})
        del model_all

    if "greedy" in only:
        eos = vocab.token_eos()
        cases = []
        for p in greedy_prompts():
            rendered = chat.render(p["messages"])
            prompt = chat.tokenize(rendered)
            if not cases:
                check_batched_greedy(model, prompt)
            toks, margins = greedy_decode(model, prompt, GREEDY_TOKENS, True, batched=True)
            decode_toks, _ = greedy_decode(model, prompt, GREEDY_TOKENS, True, batched=False)
            same = next((i for i, (a, b) in enumerate(zip(toks, decode_toks)) if a != b), None)
            case = {
                "name": p["name"],
                "messages": p["messages"],
                "prompt_tokens": prompt,
                "tokens": toks,
                "margins": margins,
                "decode_path_tokens": decode_toks,
                "decode_path_first_difference": same,
                "text": detok(vocab, toks),
                "hit_eos": bool(toks and toks[-1] == eos),
            }
            if case["hit_eos"]:
                case["note"] = f"EOS (id {eos}) generated at step {len(toks)}; generation stopped there"
            print(f"{p['name']}: prompt {len(prompt)}, generated {len(toks)}, eos {case['hit_eos']}, "
                  f"min margin {min(margins):.4f}", file=sys.stderr)
            cases.append(case)
        meta = base_meta(model_sha)
        meta.update(context_meta(False))
        meta["how"] = {
            "prompt_tokens": "Jinja2ChatFormatter(GGUF tokenizer.chat_template, add_generation_prompt=True), tokenized with add_special=True (no BOS for this vocab), parse_special=True",
            "tokens": f"greedy on llama.cpp's batched (prompt-processing) path, the same path as logits.json: prompt in one llama_decode, then each new token re-evaluated together with the previous one (n_tokens=2, bitwise equal to re-evaluating the whole sequence in one batch); argmax of last logits (first index on ties); {GREEDY_TOKENS} tokens, or fewer if EOS (id {eos}) comes first (then EOS is the last token and hit_eos=true)",
            "margins": "at each generated step of `tokens`, top-1 logit minus top-2 logit (0 means an exact tie); small margins flag near-ties where a conforming engine may legitimately differ",
            "decode_path_tokens": "for information: llama.cpp's one-token-per-llama_decode greedy continuation, which uses other kernels (no llamafile sgemm below 2 tokens) and so differs from its batched path at near-ties",
            "decode_path_first_difference": "first index where decode_path_tokens differs from tokens (null: identical)",
            "text": "detokenize(tokens, special=True)",
            "floats": "rounded to 4 decimals",
        }
        write_json("greedy.json", {"meta": meta, "cases": cases})

    print(f"done in {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
