#!/usr/bin/env python3
"""Record a kvsim trace (format v1, traces/FORMAT.md) from a Hugging Face causal LM.

The model runs unchanged: kvsim registers its own attention function through transformers'
AttentionInterface, which calls the model's own eager attention and keeps, per selected
layer, the post-RoPE queries, keys and values exactly as that function received them, and
its per-head output before o_proj. The prompt (context, then question) is prefilled in
chunks, then the model decodes greedily; the generated tokens' Q/K/V are recorded too.

    python tools/record_trace.py --model HuggingFaceTB/SmolLM2-135M-Instruct \\
        --context book.txt --question "Who ...?" --chat-template --generate 64 -o trace.h5

--model takes a hub name, a local folder, or a .gguf file (loaded through transformers'
GGUF support). Errors are one line on stderr and a non-zero exit; the output file is
written under a temporary name and renamed only when complete.
"""
import argparse
import contextlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ruler_suite  # noqa: E402  (tools/, pure Python)

SUPPORTED_ARCHITECTURES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}
FORMAT_VERSION = 1
ATTENTION_NAME = "kvsim_record"


def fail(message):
    print(f"record_trace: error: {message}", file=sys.stderr)
    sys.exit(1)


def parse_layers(text, num_layers):
    if text in (None, "", "all"):
        return list(range(num_layers))
    layers = []
    try:
        for part in text.split(","):
            if "-" in part:
                first, last = (int(x) for x in part.split("-"))
                layers.extend(range(first, last + 1))
            else:
                layers.append(int(part))
    except ValueError:
        fail(f"bad --layers '{text}' (expected e.g. 0,2,5-7 or all)")
    for layer in layers:
        if not 0 <= layer < num_layers:
            fail(f"--layers: layer {layer} is outside [0, {num_layers}) for this model")
    return sorted(set(layers))


EXTRA_PASSES = {"kvzip", "kvcompose"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub name, local folder, or .gguf file")
    p.add_argument("--gguf-file", help="GGUF file name inside --model (a folder or hub repo)")
    p.add_argument("--context", help="text file holding the context")
    p.add_argument("--sample", help="a RULER-style sample (tools/ruler_suite.py JSON): its context and question, and its answer "
                                   "spans and expected answers recorded in the trace")
    p.add_argument("--question", default="", help="question asked after the context")
    p.add_argument("--question-file", help="read the question from this file instead")
    p.add_argument("--chat-template", action="store_true", help="wrap context + question in the model's chat template")
    p.add_argument("--generate", type=int, default=64, help="at most this many tokens generated greedily (the decode segment)")
    p.add_argument("--no-stop-at-eos", dest="stop_at_eos", action="store_false",
                   help="generate all --generate tokens even past the end-of-turn token (default: stop there)")
    p.add_argument("--layers", default="all", help="layers to record, e.g. 0,14,29 or 0-3 (default: all)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="storage dtype")
    p.add_argument("--model-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="dtype the model runs in (auto: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--max-context-tokens", type=int, help="truncate the context to this many tokens")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="prompt tokens per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument("--with-oproj", action="store_true", help="also store each layer's o_proj weight")
    p.add_argument("--with-hidden-states", action="store_true", help="also store each layer's attention input")
    p.add_argument("--extra-passes", default="",
                   help="also run and record the extra forward passes presses need, comma-separated: kvzip (KVzip's context "
                        "reconstruction), kvcompose (KVCompose's second pass over the context)")
    p.add_argument("--kvzip-chunk-size", type=int, default=2048, help="context tokens each KVzip repeat pass reconstructs (kvpress: 2048)")
    p.add_argument("--compress", action="store_true", help="gzip-compress the datasets (smaller, slower to read)")
    p.add_argument("--model-name", help="name stored in the trace (default: the model's config name or --model)")
    p.add_argument("-o", "--output", required=True, help="trace file to write")
    args = p.parse_args(argv)
    if (args.context is None) == (args.sample is None):
        fail("give exactly one of --context and --sample")
    if args.sample and (args.question or args.question_file):
        fail("--sample brings its own question: drop --question / --question-file")
    if args.generate < 0:
        fail("--generate must be >= 0")
    if args.prefill_chunk < 1:
        fail("--prefill-chunk must be >= 1")
    if args.kvzip_chunk_size < 1:
        fail("--kvzip-chunk-size must be >= 1")
    args.extra_passes = [name for name in args.extra_passes.split(",") if name]
    unknown = sorted(set(args.extra_passes) - EXTRA_PASSES)
    if unknown:
        fail(f"--extra-passes: unknown pass {', '.join(unknown)} (known: {', '.join(sorted(EXTRA_PASSES))})")
    return args


def is_hub_name(name):
    """'org/model' or 'model': what transformers looks up on the Hugging Face hub."""
    parts = name.split("/")
    return len(parts) <= 2 and all(part and not part.startswith((".", "~")) for part in parts) and not name.startswith("/")


def load_model(args, torch, transformers):
    path, gguf = args.model, args.gguf_file
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            fail(f"GGUF file {path} does not exist")
        path, gguf = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    elif not os.path.exists(path) and not is_hub_name(path):
        fail(f"model folder {path} does not exist (and it is not a hub name such as HuggingFaceTB/SmolLM2-135M-Instruct)")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = args.model_dtype
    if dtype_name == "auto":
        dtype_name = "float32" if device == "cpu" else "bfloat16"
    kwargs = {"dtype": getattr(torch, dtype_name)}
    if gguf:
        kwargs["gguf_file"] = gguf
    started = time.time()
    print(f"record_trace: loading the tokenizer of {args.model}", file=sys.stderr)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as e:
        fail(f"cannot load the tokenizer of {args.model}: {str(e).splitlines()[0]}")
    if args.chat_template and not tokenizer.chat_template:  # before the (long) model load
        fail(f"--chat-template: the tokenizer of {args.model} has no chat template")
    print(f"record_trace: loading the model ({time.time() - started:.1f}s)", file=sys.stderr)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        fail(f"cannot load model {args.model}: {str(e).splitlines()[0]}")
    print(f"record_trace: model loaded ({time.time() - started:.1f}s)", file=sys.stderr)
    model.to(device).eval()
    return model, tokenizer, device


def check_architecture(model, n_tokens, layers):
    config = model.config
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_ARCHITECTURES:
        fail(f"architecture '{model_type}' is not supported (supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})")
    modules = getattr(getattr(model, "model", None), "layers", None)
    if modules is None or not all(hasattr(layer, "self_attn") and hasattr(layer.self_attn, "q_proj") for layer in modules):
        fail(f"cannot find the attention modules (model.model.layers[i].self_attn) of this '{model_type}' model")
    if getattr(config, "attn_logit_softcapping", None):
        fail("attention logit softcapping is not replayable by kvsim (softmax(q.k/sqrt(d)) is assumed)")
    window = getattr(config, "max_position_embeddings", None)
    if window and n_tokens > window:
        fail(f"the prompt plus generated tokens ({n_tokens}) exceed the model's window ({window} positions)")
    for layer in layers:
        attention = model.model.layers[layer].self_attn
        if abs(attention.scaling - attention.head_dim ** -0.5) > 1e-6:
            fail(f"layer {attention.layer_idx} scales logits by {attention.scaling}, not 1/sqrt(head_dim); kvsim cannot replay it")


def rope_of_layer(model, layer):
    """(rope parameters, inv_freq, attention_scaling) of one layer. Models with a RoPE per layer
    type (Gemma 3: sliding layers theta 1e4, full ones 1e6) keep one per type."""
    config, rotary = model.config, model.model.rotary_emb
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    layer_types = getattr(config, "layer_types", None)
    if layer_types and all(isinstance(rope.get(t), dict) for t in set(layer_types)):
        kind = layer_types[layer]
        return rope[kind], getattr(rotary, f"{kind}_inv_freq"), float(getattr(rotary, f"{kind}_attention_scaling", 1.0))
    return rope, rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0))


def end_of_turn_ids(model, tokenizer):
    """The token ids that end a turn: the generation config's eos ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def tokenize(args, tokenizer, context, question):
    """Token ids of the context and of the question segment (kvpress' split), and each context
    token's character range in `context` (the template's prefix before it ends at or below 0)."""
    if args.chat_template:
        if not tokenizer.chat_template:
            fail("--chat-template: this tokenizer has no chat template")
        separator = "\n\n" if question else ""
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": context + separator + question}],
                                                 add_generation_prompt=True, tokenize=False)
        start = rendered.index(context)  # where the template put the context
        cut = start + len(context)
        encoded = tokenizer(rendered[:cut], add_special_tokens=False, return_offsets_mapping=True)
        question_ids = tokenizer(rendered[cut:], add_special_tokens=False)["input_ids"]
    else:
        start = 0
        encoded = tokenizer(context, add_special_tokens=True, return_offsets_mapping=True)
        question_ids = tokenizer("\n\n" + question, add_special_tokens=False)["input_ids"] if question else []
    context_ids = encoded["input_ids"]
    offsets = [(a - start, b - start) if b > a else (-1, -1) for a, b in encoded["offset_mapping"]]  # special tokens: no characters
    if args.max_context_tokens and len(context_ids) > args.max_context_tokens:
        context_ids, offsets = context_ids[: args.max_context_tokens], offsets[: args.max_context_tokens]
    if not context_ids:
        fail("the context is empty")
    return context_ids, question_ids, offsets


def answer_tokens(tokenizer, generated, answers):
    """Generated tokens up to the end of the last expected answer found in the generated text
    (the model's answer), or all of them when none is found."""
    text = tokenizer.decode(generated)
    ends = [text.lower().rfind(a.lower()) + len(a) for a in answers if a.lower() in text.lower()]
    if not ends:
        return len(generated)
    for count in range(1, len(generated) + 1):
        if len(tokenizer.decode(generated[:count])) >= max(ends):
            return count
    return len(generated)


def record_answer(f, fixed, np, sample, spans, generated_text, n_answer):
    """The sample's answer spans and expected answers, and how the greedy answer scored (traces/FORMAT.md)."""
    f.create_dataset("answer_spans", data=np.array(spans, dtype=np.int32).reshape(-1, 2))
    f.attrs["task"] = fixed(sample["task"])
    f.attrs["expected_answers"] = fixed(json.dumps(sample["answers"], ensure_ascii=False))
    f.attrs["answer_metric"] = fixed(sample["metric"])
    score = ruler_suite.score(sample["answers"], sample["metric"], generated_text)
    f.attrs["answer_score"] = float(score)
    f.attrs["answer_correct"] = int(score == 1.0)
    f.attrs["answer_tokens"] = int(n_answer)
    return score


def load_sample(path):
    try:
        with open(path, encoding="utf-8") as f:
            sample = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read sample {path}: {e}")
    for field, kind in (("task", str), ("context", str), ("question", str), ("answers", list), ("metric", str), ("spans", list)):
        if not isinstance(sample.get(field), kind):
            fail(f"sample {path}: missing or malformed '{field}'")
    for span in sample["spans"]:
        if not (isinstance(span, list) and len(span) == 2 and 0 <= span[0] < span[1] <= len(sample["context"])):
            fail(f"sample {path}: span {span} is not a character range of its context")
    return sample


def fixed_string(h5py, np):
    """Strings as fixed-length UTF-8: variable-length ones live in HDF5's global heap, which has
    no checksum and crashes libhdf5 1.10.8 when damaged (tests/fuzz/README.md)."""
    def fixed(value):
        data = str(value).encode("utf-8")
        return np.array(data, dtype=h5py.string_dtype("utf-8", max(1, len(data))))
    return fixed


class TraceFile:
    """Trace v1 written slice by slice, under a temporary name until close()."""

    def __init__(self, h5py, np, path, storage_dtype, compress):
        self.h5py, self.np = h5py, np
        self.path, self.partial = path, path + ".partial"
        # HDF5 1.10 formats checksum the metadata; Fletcher32 below checksums every chunk.
        self.file = h5py.File(self.partial, "w", libver=("v110", "v110"))
        # Set when HDF5 failed to write (a full disk). libhdf5 1.10 cannot close such a file:
        # closing it again, or its clean-up at exit, crashes (HDFGroup/hdf5#2291).
        self.failed = False
        self.unclosable = []
        self.storage_dtype = storage_dtype
        self.compress = compress
        if storage_dtype == "bfloat16":  # HDF5 custom float: sign 15, exponent 7..14, mantissa 0..6
            self.bf16 = h5py.h5t.IEEE_F32LE.copy()
            self.bf16.set_fields(15, 7, 8, 0, 7)
            self.bf16.set_size(2)
            self.bf16.set_ebias(127)

    @contextlib.contextmanager
    def _failing_marks(self, dataset=None):
        """An h5py error inside marks the file failed, and the dataset, if any, unclosable: it is
        kept and never deallocated, since closing it would fail again."""
        try:
            yield
        except (OSError, RuntimeError):  # h5py's errors
            self.failed = True
            if dataset is not None:
                self.unclosable.append(dataset)
            raise

    def create(self, name, shape):
        with self._failing_marks():
            return self._create(name, shape)

    def _create(self, name, shape):
        chunks = (1, min(shape[1], 1024), shape[2]) if len(shape) == 3 else tuple(shape)
        options = {"compression": "gzip", "shuffle": True} if self.compress else {}
        # Per-token datasets can shrink to the tokens actually generated (stop at end of turn).
        maxshape = (shape[0], None, shape[2]) if len(shape) == 3 else tuple(shape)
        if self.storage_dtype != "bfloat16":
            return self.file.create_dataset(name, shape=shape, maxshape=maxshape, dtype=self.storage_dtype, chunks=chunks,
                                            fletcher32=True, **options)
        dcpl = self.h5py.h5p.create(self.h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(chunks)
        if self.compress:
            dcpl.set_shuffle()
            dcpl.set_deflate(4)
        dcpl.set_fletcher32()
        group, _, leaf = name.rpartition("/")
        parent = self.file.require_group(group or "/")
        space = self.h5py.h5s.create_simple(shape, tuple(self.h5py.h5s.UNLIMITED if m is None else m for m in maxshape))
        dataset_id = self.h5py.h5d.create(parent.id, leaf.encode(), self.bf16, space, dcpl=dcpl)
        return self.h5py.Dataset(dataset_id)

    def write(self, dataset, tensor, start):
        """Writes tensor ([heads, n, d] or [rows, cols]) at token offset `start` (dim 1 for 3-D)."""
        with self._failing_marks(dataset):
            self._write(dataset, tensor, start)

    def write_whole(self, name, tensor):
        """A dataset written at once. Flushed, so that a failed write surfaces here and not when
        the dataset is deallocated, where h5py can only print it."""
        dataset = self.create(name, tuple(tensor.shape))
        with self._failing_marks(dataset):
            self._write(dataset, tensor, 0)
            dataset.flush()

    def write_array(self, name, array):
        """A numpy array stored in its own dtype (not the trace's), checksummed, written at once
        and flushed as write_whole."""
        with self._failing_marks():
            dataset = self.file.create_dataset(name, shape=array.shape, dtype=array.dtype, fletcher32=True)
        with self._failing_marks(dataset):
            dataset[...] = array
            dataset.flush()

    def _write(self, dataset, tensor, start):
        torch_tensor = tensor.detach().cpu()
        if self.storage_dtype != "bfloat16":
            array = torch_tensor.float().numpy().astype(self.storage_dtype)
            if array.ndim == 3:
                dataset[:, start:start + array.shape[1], :] = array
            else:
                dataset[...] = array
            return
        import torch
        raw = torch_tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(self.np.uint16)
        file_space = dataset.id.get_space()
        offset = (0, start, 0) if raw.ndim == 3 else (0, 0)
        file_space.select_hyperslab(offset, raw.shape)
        dataset.id.write(self.h5py.h5s.create_simple(raw.shape), file_space, raw, mtype=self.bf16)

    def close(self):
        hook, sys.unraisablehook = sys.unraisablehook, lambda _: None  # h5py's own reports of the same failure
        try:
            self.file.close()
        except Exception:
            self.failed = True
            raise
        finally:
            sys.unraisablehook = hook
        os.replace(self.partial, self.path)

    def abandon(self):
        """Removes the partial file; after a failed write the file is left unclosed (see failed)."""
        try:
            if not self.failed:
                self.file.close()
        finally:
            if os.path.exists(self.partial):
                os.remove(self.partial)


def fail_writing(path, error):
    """After HDF5 failed to write the trace (TraceFile.failed): one line, and an exit that skips
    libhdf5's clean-up at exit, which would crash on the file it cannot close."""
    detail = " ".join(str(error).split())  # HDF5's messages span lines
    print(f"record_trace: error: cannot write {path} ({detail}): is the disk full?", file=sys.stderr, flush=True)
    os._exit(1)


class Recorder:
    """Attention function that runs the model's own eager attention and keeps its inputs and output."""

    def __init__(self, trace, layers, datasets, sys_modules):
        self.trace, self.layers, self.datasets = trace, set(layers), datasets
        self.sys_modules = sys_modules
        self.position = 0  # first token of the current forward pass
        self.captured = None  # {layer: [(queries, keys)]} while an extra pass runs, else None

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        eager = self.sys_modules[type(module).__module__].eager_attention_forward
        output, weights = eager(module, query, key, value, attention_mask, **kwargs)
        layer = module.layer_idx
        if layer in self.layers and self.captured is not None:  # an extra pass: its tokens' queries and keys only
            n = query.shape[2]
            self.captured.setdefault(layer, []).append((query[0].detach().float().cpu(), key[0, :, -n:].detach().float().cpu()))
        elif layer in self.layers:
            n = query.shape[2]
            sets = self.datasets[layer]
            self.trace.write(sets["q"], query[0], self.position)
            self.trace.write(sets["k"], key[0, :, -n:], self.position)  # the cache holds earlier tokens too
            self.trace.write(sets["v"], value[0, :, -n:], self.position)
            self.trace.write(sets["attn_out"], output[0].transpose(0, 1), self.position)  # [n, H, d] -> [H, n, d]
        return output, weights


def kvzip_prompts(args, tokenizer, context_ids, prev_postfix_size=8):
    """KVzip's repeat prompts, as kvpress KVzipPress.__call__ and prepare build them: the chat
    template's prefix (left out of the chunks) and suffix, then per chunk of --kvzip-chunk-size
    context tokens "Repeat the previous context exactly." (first chunk) or "Repeat the part of the
    previous context exactly, starting with" + the previous chunk's last 8 tokens, the suffix and
    the chunk. Returns [(context_begin, context_end, repeat_ids)]."""
    if args.chat_template:
        dummy = "dummy context"
        separator = "\n" + "#" * len(dummy)
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": dummy + separator}], add_generation_prompt=True,
                                                 tokenize=False, enable_thinking=False)
        before, suffix_text = rendered.split(separator)
        prefix_text = before.split(dummy)[0]
    else:  # kvpress's choice for a tokenizer without a chat template
        prefix_text, suffix_text = "", "\n"
    prefix_length = len(tokenizer.encode(prefix_text, add_special_tokens=False))
    suffix_ids = tokenizer.encode(suffix_text, add_special_tokens=False)
    if prefix_length >= len(context_ids):
        fail(f"--extra-passes kvzip: the context ({len(context_ids)} tokens) holds no token after the chat template's prefix")
    size = args.kvzip_chunk_size
    chunks = [context_ids[start:start + size] for start in range(prefix_length, len(context_ids), size)]
    prompts, begin = [], prefix_length
    for i, chunk in enumerate(chunks):
        if i == 0:
            instruction = tokenizer.encode("\n\nRepeat the previous context exactly.", add_special_tokens=False)
        else:
            instruction = tokenizer.encode("\n\nRepeat the part of the previous context exactly, starting with",
                                           add_special_tokens=False) + chunks[i - 1][-prev_postfix_size:]
        prompts.append((begin, begin + len(chunk), instruction + suffix_ids + chunk))
        begin += len(chunk)
    return prompts


def record_kvzip_passes(args, torch, np, model, tokenizer, trace, recorder, past, context_ids, layers, device):
    """Runs KVzip's repeat passes over the context's cache (cropped back to the context before
    each, as kvpress drops the repeat tokens' keys and values after each pass) and stores their
    queries, keys and attention inputs' norms (traces/FORMAT.md, "KVzip's extra passes")."""
    if any(getattr(layer.self_attn, "sliding_window", None) for layer in model.model.layers):
        fail("--extra-passes kvzip: sliding-window layers are not supported (kvpress refuses KVzip on Gemma 3 too)")
    prompts = kvzip_prompts(args, tokenizer, context_ids)
    n_context = len(context_ids)
    norms = {}

    def keep_norm(module, args_, kwargs):
        states = kwargs.get("hidden_states", args_[0] if args_ else None)
        norms.setdefault(module.layer_idx, []).append(states[0].detach().float().norm(dim=-1).cpu())
    hooks = [model.model.layers[layer].self_attn.register_forward_pre_hook(keep_norm, with_kwargs=True) for layer in layers]
    recorder.captured = {}
    started = time.time()
    try:
        with torch.no_grad():
            for i, (begin, end, repeat_ids) in enumerate(prompts):
                crop_to_context(past, n_context)
                model(torch.tensor([repeat_ids], device=device), past_key_values=past, use_cache=True)
                print(f"record_trace: KVzip pass {i + 1}/{len(prompts)} (context [{begin}, {end}), {len(repeat_ids)} repeat tokens, "
                      f"{time.time() - started:.1f}s)", file=sys.stderr)
    finally:
        for hook in hooks:
            hook.remove()
        captured, recorder.captured = recorder.captured, None
    trace.file.create_dataset("kvzip_chunks", data=np.array([[b, e, len(r)] for b, e, r in prompts], dtype=np.int32))
    trace.file.create_dataset("kvzip_tokens", data=np.array([t for _, _, r in prompts for t in r], dtype=np.int32))
    trace.file.attrs["kvzip_chunk_size"] = args.kvzip_chunk_size
    for layer in layers:
        queries = torch.cat([q for q, _ in captured[layer]], dim=1)
        keys = torch.cat([k for _, k in captured[layer]], dim=1)
        for name, tensor in (("kvzip_q", queries), ("kvzip_k", keys)):
            trace.write_whole(f"layers/{layer}/{name}", tensor)
        trace.write_array(f"layers/{layer}/kvzip_hidden_norm", torch.cat(norms[layer]).numpy().astype(np.float32))


def crop_to_context(past, n_context):
    """Drops the cache's entries after the context (question, generated or extra-pass tokens)."""
    excess = past.get_seq_length() - n_context
    if excess > 0:
        past.crop(-excess)  # this transformers crops by a negative count of tokens to drop


def record_kvcompose_pass(args, torch, model, trace, recorder, past, context_ids, layers, device):
    """Feeds the context a second time after its own cache, as kvpress KVComposePress does (eager
    attention, positions n_context ... 2 n_context - 1; in --prefill-chunk pieces, which changes
    nothing: each piece sees the cache and the pieces before it), and stores the pass's queries and
    keys (traces/FORMAT.md, "KVCompose's second pass")."""
    if any(getattr(layer.self_attn, "sliding_window", None) for layer in model.model.layers):
        fail("--extra-passes kvcompose: sliding-window layers are not supported (kvpress tests KVCompose on Llama and Qwen only)")
    n_context = len(context_ids)
    crop_to_context(past, n_context)
    recorder.captured = {}
    started = time.time()
    try:
        with torch.no_grad():
            for start in range(0, n_context, args.prefill_chunk):
                piece = context_ids[start:start + args.prefill_chunk]
                model(torch.tensor([piece], device=device), past_key_values=past, use_cache=True)
                print(f"record_trace: KVCompose pass {start + len(piece)}/{n_context} tokens ({time.time() - started:.1f}s)", file=sys.stderr)
    finally:
        captured, recorder.captured = recorder.captured, None
    crop_to_context(past, n_context)
    for layer in layers:
        for name, index in (("kvcompose_q", 0), ("kvcompose_k", 1)):
            tensor = torch.cat([pair[index] for pair in captured[layer]], dim=1)
            trace.write_whole(f"layers/{layer}/{name}", tensor)


def exit_on_sigterm(signum, _frame):
    """SIGTERM ends the recorder like an exception: the trace being written is removed."""
    raise SystemExit(128 + signum)


def main(argv):
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    args = parse_args(argv)
    sample = load_sample(args.sample) if args.sample else None
    if sample:
        context, question = sample["context"], sample["question"]
    else:
        if not os.path.isfile(args.context):
            fail(f"context file {args.context} does not exist")
        question = args.question
        if args.question_file:
            if not os.path.isfile(args.question_file):
                fail(f"question file {args.question_file} does not exist")
            question = open(args.question_file, encoding="utf-8").read().strip()
        context = open(args.context, encoding="utf-8").read()
    try:
        import h5py
        import numpy as np
        import torch
        import transformers
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError as e:
        fail(f"{e.name} is not installed: run scripts/setup_recorder.sh (pins in tools/requirements.txt)")

    model, tokenizer, device = load_model(args, torch, transformers)
    context_ids, question_ids, context_offsets = tokenize(args, tokenizer, context, question)
    if sample:  # the characters the generator marked, as token positions of this prompt
        try:
            spans = ruler_suite.token_spans(context_offsets, sample["spans"])
        except ValueError as e:
            fail(f"sample {args.sample}: {e} (cut by --max-context-tokens?)")
    n_context, n_question, n_generated = len(context_ids), len(question_ids), args.generate
    total = n_context + n_question + n_generated
    config = model.config
    num_layers = config.num_hidden_layers
    layers = parse_layers(args.layers, num_layers)
    check_architecture(model, total, layers)
    attention0 = model.model.layers[0].self_attn
    H, Hkv, d = config.num_attention_heads, config.num_key_value_heads, attention0.head_dim
    rope, inv_freq, attention_scaling = rope_of_layer(model, layers[0])  # the file's; layers that differ carry their own
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_theta is None:
        fail("cannot find the model's RoPE theta (config.rope_parameters / rope_theta)")
    scaled = rope.get("rope_type", "default") != "default"

    trace = TraceFile(h5py, np, args.output, args.dtype, args.compress)
    try:
        f = trace.file
        f.attrs["kvsim_format_version"] = FORMAT_VERSION
        fixed = fixed_string(h5py, np)
        f.attrs["model_name"] = fixed(args.model_name or getattr(config, "_name_or_path", None) or args.model)
        f.attrs["num_hidden_layers"] = num_layers
        f.attrs["num_attention_heads"] = H
        f.attrs["num_key_value_heads"] = Hkv
        f.attrs["head_dim"] = d
        f.attrs["hidden_size"] = config.hidden_size
        f.attrs["rope_theta"] = float(rope_theta)
        f.attrs["rope_scaling"] = fixed(json.dumps(rope) if scaled else "")
        f.attrs["attention_scaling"] = attention_scaling
        f.attrs["dtype"] = fixed(args.dtype)
        f.attrs["n_context"] = n_context
        f.attrs["n_question"] = n_question
        f.attrs["n_generated"] = n_generated
        f.create_dataset("recorded_layers", data=np.array(layers, dtype=np.int32))
        f.create_dataset("rope_inv_freq", data=inv_freq.detach().double().cpu().numpy())
        f.create_dataset("text", data=fixed(context + ("\n\n" + question if question else "")))
        datasets = {}
        for layer in layers:
            attention = model.model.layers[layer].self_attn
            datasets[layer] = {name: trace.create(f"layers/{layer}/{name}", (heads, total, d))
                               for name, heads in (("q", H), ("k", Hkv), ("v", Hkv), ("attn_out", H))}
            window = getattr(attention, "sliding_window", None)
            if window:  # the model's mask: query p sees keys j with p - j < window
                trace.file.require_group(f"layers/{layer}").attrs["sliding_window"] = int(window)
            _, layer_inv_freq, layer_scaling = rope_of_layer(model, layer)
            if not torch.equal(layer_inv_freq, inv_freq) or layer_scaling != attention_scaling:
                group = trace.file.require_group(f"layers/{layer}")
                group.create_dataset("rope_inv_freq", data=layer_inv_freq.detach().double().cpu().numpy())
                group.attrs["attention_scaling"] = layer_scaling
            if args.with_oproj:
                weight = attention.o_proj.weight
                trace.write_whole(f"layers/{layer}/o_proj_weight", weight)

        recorder = Recorder(trace, layers, datasets, sys.modules)
        AttentionInterface.register(ATTENTION_NAME, recorder)
        AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
        model.set_attn_implementation(ATTENTION_NAME)
        hidden = {}
        if args.with_hidden_states:
            def keep_input(module, args_, kwargs):
                states = kwargs.get("hidden_states", args_[0] if args_ else None)
                hidden.setdefault(module.layer_idx, []).append(states[0].detach().float().cpu())
            for layer in layers:
                model.model.layers[layer].self_attn.register_forward_pre_hook(keep_input, with_kwargs=True)

        prompt = torch.tensor([context_ids + question_ids], device=device)
        tokens = context_ids + question_ids
        started = time.time()
        with torch.no_grad():
            past = None
            for start in range(0, prompt.shape[1], args.prefill_chunk):
                recorder.position = start
                chunk = prompt[:, start:start + args.prefill_chunk]
                out = model(chunk, past_key_values=past, use_cache=True)
                past = out.past_key_values
                print(f"record_trace: prefill {start + chunk.shape[1]}/{prompt.shape[1]} tokens "
                      f"({time.time() - started:.1f}s)", file=sys.stderr)
            next_token = out.logits[0, -1].argmax()
            stop_ids = end_of_turn_ids(model, tokenizer) if args.stop_at_eos else set()
            for step in range(n_generated):
                if int(next_token) in stop_ids:  # the end-of-turn token is not fed back: nothing to record
                    print(f"record_trace: end of turn after {step} generated tokens (--no-stop-at-eos generates on)",
                          file=sys.stderr)
                    break
                tokens.append(int(next_token))
                recorder.position = n_context + n_question + step
                out = model(next_token.view(1, 1), past_key_values=past, use_cache=True)
                past = out.past_key_values
                next_token = out.logits[0, -1].argmax()
                if (step + 1) % 16 == 0 or step + 1 == n_generated:
                    print(f"record_trace: generated {step + 1}/{n_generated} tokens ({time.time() - started:.1f}s)",
                          file=sys.stderr)
        if len(tokens) < total:  # stopped at the end of turn: the per-token datasets end there too
            n_generated = len(tokens) - n_context - n_question
            f.attrs["n_generated"] = n_generated
            for sets in datasets.values():
                for dataset in sets.values():
                    dataset.resize(len(tokens), axis=1)
        f.create_dataset("tokens", data=np.array(tokens, dtype=np.int32))
        if args.with_hidden_states:
            for layer in layers:
                states = torch.cat(hidden[layer], dim=0)
                trace.write_whole(f"layers/{layer}/hidden_states", states)
        if "kvzip" in args.extra_passes:
            record_kvzip_passes(args, torch, np, model, tokenizer, trace, recorder, past, context_ids, layers, device)
        if "kvcompose" in args.extra_passes:
            record_kvcompose_pass(args, torch, model, trace, recorder, past, context_ids, layers, device)
        generated_text = tokenizer.decode(tokens[n_context + n_question:])
        f.attrs["generated_text"] = fixed_string(h5py, np)(generated_text)
        if sample:
            generated = tokens[n_context + n_question:]
            score = record_answer(f, fixed, np, sample, spans, generated_text, answer_tokens(tokenizer, generated, sample["answers"]))
        trace.close()
    except BaseException as e:
        trace.abandon()
        if trace.failed:
            fail_writing(args.output, e)
        raise
    print(f"record_trace: wrote {args.output}: {len(layers)} layers, {n_context} context + {n_question} question + "
          f"{n_generated} generated tokens; generated: {generated_text!r}", file=sys.stderr)
    if sample:
        print(f"record_trace: expected {sample['answers']}: score {score:g}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
