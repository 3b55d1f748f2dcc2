#!/usr/bin/env python3
"""RULER-style prompts (Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context
Language Models?", arXiv 2404.06654), deterministic and without downloads: needles in a noise
haystack (single, multi-key, multi-value, multi-query), variable tracking, common and frequent
word extraction, and QA over provided paragraphs, at a chosen context length in tokens of the
model's tokenizer.

Each sample records the expected answers and the **answer spans**: character ranges of the
context holding the facts the question needs, known because the generator placed them (never
found by searching text), and their token positions under the tokenizer given.

    python tools/ruler_suite.py --tokenizer model.gguf --tasks niah_single vt --samples 3 \\
        --context-tokens 4096 --seed 0 -o suite/

writes one JSON file per sample (suite/<task>-<i>.json), which `tools/record_trace.py --sample`
records. Same arguments, same files, byte for byte.
"""
import argparse
import json
import os
import random
import sys

# Keys, values and words. Pseudo-words are made of syllables so that any number of distinct
# words exists without a word list to download.
NOUNS = ("apple river candle garden window mirror engine pillow basket ladder forest island rocket violin "
         "pencil saddle anchor lantern harbor meadow castle bridge feather helmet jacket kettle magnet "
         "needle orchard parrot quarry ribbon saucer tunnel umbrella valley wagon yacht zebra badger "
         "cabinet dolphin falcon glacier hammer igloo jungle kitten lemon marble napkin oyster pepper "
         "quilt rabbit spider tomato unicorn velvet walnut bucket cactus dragon ember fossil goblet").split()
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
NOISE = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."]
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa")


def pseudo_words(rng, count, syllables=3):
    words, seen = [], set()
    while len(words) < count:
        word = "".join(rng.choice(SYLLABLES) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class Sample:
    """One prompt: context, question, expected answers, answer spans (character ranges of the
    context), and the RULER metric that scores it ('all': every answer must appear in the
    prediction; 'part': any one)."""

    def __init__(self, task, context, question, answers, spans, metric):
        self.task, self.context, self.question = task, context, question
        self.answers, self.spans, self.metric = answers, spans, metric

    def to_json(self, token_spans):
        return {"task": self.task, "context": self.context, "question": self.question, "answers": self.answers,
                "metric": self.metric, "spans": [list(s) for s in self.spans], "token_spans": [list(s) for s in token_spans]}


class Builder:
    """Concatenates pieces with single spaces, remembering the character range of marked ones."""

    def __init__(self):
        self.parts, self.length, self.spans = [], 0, []

    def add(self, text, marked=False):
        if self.parts:
            self.parts.append(" ")
            self.length += 1
        if marked:
            self.spans.append((self.length, self.length + len(text)))
        self.parts.append(text)
        self.length += len(text)

    def text(self):
        return "".join(self.parts)


def token_spans(offsets, spans):
    """Token positions [first, end) of each character span: the tokens whose characters overlap it."""
    result = []
    for start, end in spans:
        hit = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        if not hit:
            raise ValueError(f"span [{start}, {end}) covers no token")
        result.append((hit[0], hit[-1] + 1))
    return result


def fit(build, count_tokens, target):
    """The largest filler size n (>= 0) whose build(n) has at most `target` tokens (binary search;
    the token count grows with n). build(n) returns a Sample."""
    low, high = 0, 1
    while count_tokens(build(high).context) <= target:
        low, high = high, high * 2
        if high > 1 << 24:
            raise ValueError("the prompt does not grow with its filler")
    while high - low > 1:
        middle = (low + high) // 2
        if count_tokens(build(middle).context) <= target:
            low = middle
        else:
            high = middle
    return build(low)


def haystack_with(needles, n_noise, depths):
    """n_noise noise sentences with needle i (text, marked) inserted before sentence round(depth_i * n_noise)."""
    at = {}
    for needle, depth in zip(needles, depths):
        at.setdefault(round(depth * n_noise), []).append(needle)
    b = Builder()
    for i in range(n_noise + 1):
        for text, marked in at.get(i, []):
            b.add(text, marked)
        if i < n_noise:
            b.add(NOISE[i % len(NOISE)])
    return b


def needle(key, value):
    return f"One of the special magic numbers for {key} is: {value}."


def niah(task, rng):
    """Needle tasks: returns build(n) for the filler size n."""
    keys = rng.sample(NOUNS, 4)
    values = [str(rng.randrange(1000000, 10000000)) for _ in range(4)]
    depths = [rng.random() for _ in range(4)]
    if task == "niah_single":
        needles, asked, answers = [(needle(keys[0], values[0]), True)], [keys[0]], values[:1]
    elif task == "niah_multikey":  # three distractor keys, one asked
        needles = [(needle(k, v), i == 0) for i, (k, v) in enumerate(zip(keys, values))]
        asked, answers = [keys[0]], values[:1]
    elif task == "niah_multivalue":  # one key, four values, all asked
        needles, asked, answers = [(needle(keys[0], v), True) for v in values], [keys[0]], values
    else:  # niah_multiquery: four keys, all asked
        needles = [(needle(k, v), True) for k, v in zip(keys, values)]
        asked, answers = keys, values
    what = "numbers" if task == "niah_multivalue" else "number"
    question = (f"What are all the special magic {what} for {', '.join(asked)} mentioned in the provided text?"
                if len(asked) > 1 or task == "niah_multivalue" else
                f"What is the special magic number for {asked[0]} mentioned in the provided text?")

    def build(n):
        b = haystack_with(needles, n, depths)
        return Sample(task, b.text(), question, answers, b.spans, "all")
    return build


def variable_tracking(rng, hops=4):
    names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(hops + 1)]
    value = str(rng.randrange(10000, 100000))
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(hops)]
    depths = sorted(rng.random() for _ in chain)  # in order: each assignment after the one it reads
    question = f"Find all variables that are assigned the value {value} in the text above."

    def build(n):
        b = haystack_with([(c, True) for c in chain], n, depths)
        return Sample("vt", b.text(), question, names, b.spans, "all")
    return build


def common_words(rng, n_common=10, freq_common=30, freq_rare=3):
    """A numbered list of words: n_common words appear freq_common times each, the rest freq_rare."""
    vocab = pseudo_words(rng, 4000)
    common, rare_pool = vocab[:n_common], vocab[n_common:]
    question = f"What are the {n_common} most common words in the above list?"
    order_seed = rng.random()

    def build(n_rare):
        if n_rare > len(rare_pool):
            raise ValueError(f"cwe: more than {len(rare_pool)} rare words needed; ask for a shorter context")
        words = [(w, True) for w in common for _ in range(freq_common)] + \
                [(w, False) for w in rare_pool[:n_rare] for _ in range(freq_rare)]
        random.Random(order_seed).shuffle(words)
        b = Builder()
        b.add("Below is a numbered list of words. In these words, some appear more often than others.")
        for i, (w, marked) in enumerate(words):
            b.add(f"{i + 1}.")
            b.add(w, marked)
        return Sample("cwe", b.text(), question, common, b.spans, "all")
    return build


def frequent_words(rng, alpha=2.0, n_vocab=800):
    """Coded words drawn with Zipf counts count_i = floor(scale / (i+1)^alpha); the three most frequent asked."""
    vocab = pseudo_words(rng, n_vocab, syllables=3)
    order_seed = rng.random()
    question = "What are the three most frequently appeared coded words in the above text?"

    def build(scale):
        scale += 20  # the top three must be distinct in count: floor(s), floor(s/4), floor(s/9) > floor(s/16) for s >= 20
        words = [(w, i < 3) for i, w in enumerate(vocab) for _ in range(int(scale / (i + 1) ** alpha))]
        random.Random(order_seed).shuffle(words)
        b = Builder()
        b.add("Read the following coded text and track the frequency of each coded word.")
        for w, marked in words:
            b.add(w, marked)
        return Sample("fwe", b.text(), question, vocab[:3], b.spans, "all")
    return build


def question_answering(rng, paragraphs):
    """The gold paragraph among distractor paragraphs (the other entries, in a seeded order); the
    span is the answer's occurrence in the gold paragraph, at the offset the entry gives."""
    if len(paragraphs) < 2:
        raise ValueError("qa needs at least two paragraphs (one gold, the others distractors)")
    gold_index = rng.randrange(len(paragraphs))
    gold = paragraphs[gold_index]
    others = [p for i, p in enumerate(paragraphs) if i != gold_index]
    rng.shuffle(others)
    depth = rng.random()

    def build(n):
        distractors = [others[i % len(others)] for i in range(n)]
        position = round(depth * n)
        b = Builder()
        for i in range(n + 1):
            if i == position:
                start = b.length + (1 if b.parts else 0)
                b.add(f"Document: {gold['context']}")
                offset = start + len("Document: ") + gold["answer_start"]
                b.spans.append((offset, offset + len(gold["answer"])))
            if i < n:
                b.add(f"Document: {distractors[i]['context']}")
        return Sample("qa", b.text(), gold["question"], [gold["answer"]], b.spans, "part")
    return build


def checked_paragraphs(entries, where="qa"):
    """QA entries {context, question, answer[, answer_start]} (SQuAD's fields), copied with
    answer_start filled in: without it, the answer's first occurrence in its own paragraph."""
    checked = []
    for i, e in enumerate(entries):
        for field in ("context", "question", "answer"):
            if not isinstance(e.get(field), str) or not e[field]:
                raise ValueError(f"{where}: entry {i} has no '{field}' string")
        start = e.get("answer_start", e["context"].find(e["answer"]))
        if not isinstance(start, int) or start < 0 or e["context"][start:start + len(e["answer"])] != e["answer"]:
            raise ValueError(f"{where}: entry {i}: the answer is not at answer_start in its context")
        checked.append(dict(e, answer_start=start))
    return checked


def load_paragraphs(path):
    with open(path, encoding="utf-8") as f:
        return checked_paragraphs(json.load(f), path)


def make_sample(task, count_tokens, context_tokens, seed, index, paragraphs=None):
    """Sample `index` of `task` for this seed, with a context of at most context_tokens tokens
    (as close as the task's unit allows). count_tokens(text) -> number of tokens."""
    rng = random.Random(f"kvsim-ruler:{seed}:{task}:{index}")  # str seeds hash with SHA-512: stable across runs
    if task.startswith("niah_"):
        build = niah(task, rng)
    elif task == "vt":
        build = variable_tracking(rng)
    elif task == "cwe":
        build = common_words(rng)
    elif task == "fwe":
        build = frequent_words(rng)
    elif task == "qa":
        if paragraphs is None:
            raise ValueError("qa needs paragraphs (--qa-file)")
        build = question_answering(rng, checked_paragraphs(paragraphs))
    else:
        raise ValueError(f"unknown task '{task}' (one of {', '.join(TASKS)})")
    sample = fit(build, count_tokens, context_tokens)
    if count_tokens(sample.context) > context_tokens:
        raise ValueError(f"task {task}: the smallest prompt exceeds {context_tokens} tokens")
    return sample


def score(sample_answers, metric, prediction):
    """RULER's string match: 'all' = share of the answers found in the prediction (case-insensitive),
    'part' = 1 if any is found."""
    found = [a.lower() in prediction.lower() for a in sample_answers]
    return float(any(found)) if metric == "part" else sum(found) / len(found)


def hf_offsets(tokenizer):
    """offsets(text) -> [(start, end)] per token, from a Hugging Face fast tokenizer, no special tokens."""
    def offsets(text):
        return [tuple(o) for o in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    return offsets


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer: a folder, hub name or .gguf file")
    p.add_argument("--tasks", nargs="+", default=["niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe"], choices=TASKS)
    p.add_argument("--samples", type=int, default=3, help="samples per task")
    p.add_argument("--context-tokens", type=int, default=4096, help="context length in tokens (at most)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qa-file", help="JSON list of {context, question, answer[, answer_start]} for the qa task")
    p.add_argument("-o", "--output", required=True, help="folder for the sample files")
    args = p.parse_args(argv)
    if args.samples < 1 or args.context_tokens < 16:
        sys.exit("ruler_suite: error: --samples must be >= 1 and --context-tokens >= 16")
    try:
        paragraphs = load_paragraphs(args.qa_file) if args.qa_file else None
        import transformers
        path, gguf = args.tokenizer, None
        if path.endswith(".gguf"):
            path, gguf = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
        offsets = hf_offsets(tokenizer)
        os.makedirs(args.output, exist_ok=True)
        for task in args.tasks:
            for i in range(args.samples):
                sample = make_sample(task, lambda t: len(offsets(t)), args.context_tokens, args.seed, i, paragraphs)
                record = sample.to_json(token_spans(offsets(sample.context), sample.spans))
                with open(os.path.join(args.output, f"{task}-{i}.json"), "w", encoding="utf-8") as f:
                    json.dump(record, f, indent=1, ensure_ascii=False)
                    f.write("\n")
                print(f"ruler_suite: {task}-{i}: {len(offsets(sample.context))} tokens, {len(sample.spans)} spans", file=sys.stderr)
    except (ValueError, OSError, ImportError) as e:
        sys.exit(f"ruler_suite: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
