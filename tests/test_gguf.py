"""`tinywave export-gguf`: llama.cpp itself (llama-cpp-python) runs the exported file.

References: the JAX model (models/llama.py forward, models/decode.py greedy generation) on the
same random weights; the `tokenizers` library and data/layout.py for the token strings; gguf's
own reader for what the file holds. f32 must match JAX (greedy continuation token for token,
log-probs within 1e-3 over a 340-token sequence, RoPE included); f16 / bf16 / q8_0 / q4_0 must
stay within log-prob gaps measured on this model (docs/benchmarks.md records the measurement).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinywave_jax import cli
from tinywave_jax.checkpoint import save_model
from tinywave_jax.convert.gguf_export import GGUF_TYPES, export_gguf, write_gguf
from tinywave_jax.data.layout import TokenLayout
from tinywave_jax.errors import (
    ConfigError,
    ConversionError,
    MissingInputError,
    OutputExistsError,
)
from tinywave_jax.eval.gguf_run import (
    llama_cpp_greedy,
    llama_cpp_logprobs,
    load_llama_cpp,
)
from tinywave_jax.models import decode
from tinywave_jax.models.config import LlamaConfig, RopeScaling
from tinywave_jax.models.llama import Llama
from tinywave_jax.models.param_layout import flatten, param_shapes, set_path

VOCAB = 256
# 100 text ids, [Text]=100, [Speech]=101, HuBERT 102..201, pitch 202..221, style 222..251,
# [Unused252]..[Unused255]
LAYOUT = TokenLayout(
    text_vocab_size=100, num_units=100, num_pitch=20, num_style=30, vocab_size=VOCAB, name="t"
)
LAYOUT_JSON = {
    "preset": None,
    "text_vocab_size": 100,
    "num_units": 100,
    "num_pitch": 20,
    "num_style": 30,
    "vocab_size": VOCAB,
}
PROMPT_LEN, NEW = 300, 40
# Measured on this model (seed 0, 340 tokens, llama.cpp with an f32 KV cache, AVX2 build):
# per-token |log p_gguf - log p_jax_f32|, mean / max: f16 0.0027 / 0.0097, bf16 0.019 / 0.081,
# q8_0 0.068 / 0.31, q4_0 0.68 / 3.3 (a small random model with peaked logits is sensitive:
# JAX itself on the file's dequantized weights is 0.048 / 0.21 off at q8_0, 0.67 / 3.2 at
# q4_0). Bounds: about 1.5x the measurement (docs/benchmarks.md, "GGUF export").
GAP_BOUNDS = {
    "f16": (5e-3, 2e-2),
    "bf16": (3e-2, 0.15),
    "q8_0": (0.12, 0.5),
    "q4_0": (1.0, 5.0),
}


def tiny_config(**kw) -> LlamaConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
    )
    return LlamaConfig(**{**base, **kw})


def random_params(config: LlamaConfig, seed: int = 0) -> dict:
    """Weights with unit-scale activations and peaked logits (so greedy choices are clear)."""
    rs = np.random.RandomState(seed)
    params: dict = {}
    for path, shape in flatten(param_shapes(config)).items():
        if path[-1] == "scale":
            a = 1.0 + 0.2 * rs.standard_normal(shape)
        elif path[-1] == "bias":
            a = 0.3 * rs.standard_normal(shape)
        elif path[0] == "embed_tokens":
            a = rs.standard_normal(shape)
        else:  # kernels [L?, in, out]
            fan_in = shape[-2]
            gain = 4.0 if path[0] == "lm_head" else 1.0
            a = gain * rs.standard_normal(shape) / np.sqrt(fan_in)
        set_path(params, path, a.astype(np.float32))
    return params


def word_tokenizer(n_text: int) -> dict:
    """A WordLevel tokenizer.json (like the demo teacher's) with <unk>, <s>, </s> + words."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, n_text)})
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def make_ckpt(root, config, seed=0, tokenizer=True):
    params = random_params(config, seed)
    tok_dir = None
    if tokenizer:
        tok_dir = root / "tok"
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / "tokenizer.json").write_text(json.dumps(word_tokenizer(100)))
    save_model(root / "ckpt", params, config, tokenizer_dir=tok_dir)
    return root / "ckpt", params


def jax_logprobs(params, config, ids) -> np.ndarray:
    logits = Llama(config).apply({"params": params}, jnp.asarray([ids], jnp.int32)).logits[0]
    lp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), np.float64)
    return lp[np.arange(len(ids) - 1), ids[1:]]


def jax_greedy(params, config, prompt, n) -> list[int]:
    return decode.greedy(params, config, prompt, n)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    config = tiny_config()
    ckpt, params = make_ckpt(root, config)
    (root / "layout.json").write_text(json.dumps(LAYOUT_JSON))
    files = {}
    for t in GGUF_TYPES:
        files[t] = export_gguf(ckpt, root / f"m.{t}.gguf", t, layout=str(root / "layout.json"))
    rs = np.random.RandomState(1)
    prompt = [1, 101] + rs.randint(0, VOCAB, PROMPT_LEN - 2).tolist()
    cont = jax_greedy(params, config, prompt, NEW)
    seq = prompt + cont
    return {
        "root": root,
        "ckpt": ckpt,
        "params": params,
        "config": config,
        "files": files,
        "prompt": prompt,
        "cont": cont,
        "seq": seq,
        "jax_lp": jax_logprobs(params, config, seq),
    }


def test_f32_greedy_and_logprobs_equal_jax(model):
    llm = load_llama_cpp(model["files"]["f32"].path, f32_kv_cache=True)
    cont = llama_cpp_greedy(llm, model["prompt"], NEW)
    assert len(set(model["cont"])) > 5  # a real continuation, not one repeated token
    assert cont == model["cont"]
    fast = load_llama_cpp(model["files"]["f32"].path, f32_kv_cache=True, logits_all=False)
    assert llama_cpp_greedy(fast, model["prompt"], NEW) == model["cont"]
    (lp,) = llama_cpp_logprobs(llm, [model["seq"]])
    gap = np.abs(lp - model["jax_lp"])
    assert lp.shape == (PROMPT_LEN + NEW - 1,)
    assert gap.max() < 1e-3, gap.max()
    # the greedy choices are clear: a tie-level numeric difference could not flip them
    logits = llama_cpp_logits_sorted(llm, model["seq"])
    assert (logits[PROMPT_LEN - 1 : -1, -1] - logits[PROMPT_LEN - 1 : -1, -2]).min() > 1e-2


# The /proc/cpuinfo flags (the kernel's view: cpuid and what the OS enabled) behind each
# instruction set that ggml's CPU backend reports compiling in.
CPUINFO_FLAGS = {
    "SSE3": {"pni"},
    "SSSE3": {"ssse3"},
    "AVX": {"avx"},
    "AVX2": {"avx2"},
    "F16C": {"f16c"},
    "FMA": {"fma"},
    "BMI2": {"bmi2"},
    "AVX_VNNI": {"avx_vnni"},
    "AVX512": {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"},
    "AVX512_VBMI": {"avx512vbmi"},
    "AVX512_VNNI": {"avx512_vnni"},
    "AVX512_BF16": {"avx512_bf16"},
    "AMX_INT8": {"amx_int8"},
}


def test_llama_cpp_runs_the_best_cpu_library_this_cpu_allows_and_never_amx(model):
    """The Makefile's build (GGML_BACKEND_DL, one ggml-cpu library per instruction-set level):
    the library loaded uses only instruction sets /proc/cpuinfo lists, includes AVX2 / AVX-512
    (VNNI, BF16) wherever the CPU has them, and no installed library holds AMX code (the SIGILL
    where the OS does not enable tiles); running llama.cpp alone never imports JAX (so
    bench/gguf.py's peak RSS is llama.cpp's). In a child process, so an illegal instruction fails the
    test instead of killing pytest."""
    code = (
        "import json, sys\n"
        "from tinywave_jax.eval.gguf_run import llama_cpp_cpu_backend, llama_cpp_greedy, "
        "load_llama_cpp\n"
        "llm = load_llama_cpp(sys.argv[1], f32_kv_cache=True)\n"
        "cont = llama_cpp_greedy(llm, json.loads(sys.argv[2]), 8)\n"
        "print(json.dumps({'cpu': llama_cpp_cpu_backend(), 'cont': cont, "
        "'jax': 'jax' in sys.modules}))\n"
    )
    path = [str(Path(__file__).resolve().parents[1]), *sys.path]  # the llama_cpp this process has
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    args = [str(model["files"]["f32"].path), json.dumps(model["prompt"])]
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])  # SIGILL: -4
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cont"] == model["cont"][:8]  # the f32 file continues as JAX does
    assert not out["jax"], "running llama.cpp alone imported JAX (its RSS is ~290 MB)"
    cpu = out["cpu"]
    assert cpu["variant"], f"a one-level llama.cpp build, not the Makefile's: {cpu['library']}"
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    isa = {f for f in cpu["features"] if f in CPUINFO_FLAGS}
    assert isa >= {"AVX", "SSE3"}, cpu  # the reporting itself works
    for f in isa:
        assert CPUINFO_FLAGS[f] <= flags, (cpu["variant"], f, "not on this CPU")
    for f in ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16"):
        if CPUINFO_FLAGS[f] <= flags:
            assert f in isa, (cpu["variant"], f, "on this CPU but not used")
    assert "AMX_INT8" not in isa
    # amx.cpp's message exists only where AMX kernels were compiled in
    libs = sorted(Path(cpu["library"]).parent.glob("libggml-cpu*.so*"))
    assert len(libs) > 1, libs
    amx = [p.name for p in libs if b"AMX is not ready to be used" in p.read_bytes()]
    assert not amx, amx


def llama_cpp_logits_sorted(llm, ids):
    from tinywave_jax.eval.gguf_run import llama_cpp_logits

    return np.sort(llama_cpp_logits(llm, ids), axis=-1)


@pytest.mark.parametrize("gguf_type", ["f16", "bf16", "q8_0", "q4_0"])
def test_reduced_precision_logprob_gap(model, gguf_type):
    llm = load_llama_cpp(model["files"][gguf_type].path, f32_kv_cache=True)
    (lp,) = llama_cpp_logprobs(llm, [model["seq"]])
    gap = np.abs(lp - model["jax_lp"])
    mean_bound, max_bound = GAP_BOUNDS[gguf_type]
    print(f"{gguf_type}: log-prob gap mean {gap.mean():.5f} max {gap.max():.5f}")
    assert gap.mean() < mean_bound and gap.max() < max_bound, (gap.mean(), gap.max())
    assert gap.max() > 0  # really another precision than f32


def test_llama_cpp_runs_exactly_the_weights_the_q4_0_file_holds(model):
    """gguf's reader dequantizes the file's q4_0 blocks; JAX on those weights (q/k rows put back
    in rotate_half order) is close to llama.cpp, far closer than either is to the f32 model: the
    blocks, scales and the q/k permutation are laid out as llama.cpp reads them. What is left
    is llama.cpp quantizing activations to 8 bits in its q4_0 / q8_0 products."""
    config = model["config"]
    reader = gguf.GGUFReader(model["files"]["q4_0"].path)
    data = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(
            [int(d) for d in t.shape[::-1]]
        )
        for t in reader.tensors
    }

    def rotate_half_rows(w, n_head):  # llama.cpp's (0, h, 1, h+1, ...) rows -> HF's order
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)

    blk = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}
    mlp = {"gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
    L = config.num_hidden_layers

    def stack(name, fix=lambda w: w):
        return np.stack([fix(data[f"blk.{i}.{name}.weight"]).T for i in range(L)])

    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
    params = {
        "embed_tokens": {"embedding": data["token_embd.weight"]},
        "norm": {"scale": data["output_norm.weight"]},
        "lm_head": {"kernel": data["output.weight"].T},
        "layers": {
            "self_attn": {
                f"{p}_proj": {
                    "kernel": stack(n, (lambda w, h=heads[p]: rotate_half_rows(w, h)))
                    if p in heads
                    else stack(n)
                }
                for p, n in blk.items()
            },
            "mlp": {f"{p}_proj": {"kernel": stack(n)} for p, n in mlp.items()},
            "input_layernorm": {"scale": stack("attn_norm")},
            "post_attention_layernorm": {"scale": stack("ffn_norm")},
        },
    }
    dequantized = jax_logprobs(params, config, model["seq"])
    llm = load_llama_cpp(model["files"]["q4_0"].path, f32_kv_cache=True)
    (lp,) = llama_cpp_logprobs(llm, [model["seq"]])
    to_file = np.abs(lp - dequantized).mean()
    to_f32 = np.abs(lp - model["jax_lp"]).mean()
    print(f"q4_0: llama.cpp vs JAX on the file's weights {to_file:.4f}, vs f32 {to_f32:.4f}")
    assert to_file < 0.1 and to_f32 > 5 * to_file


def test_file_contents_metadata_types_and_token_strings(model):
    from tokenizers import Tokenizer

    reader = gguf.GGUFReader(model["files"]["q4_0"].path)
    f = {k: v.contents() for k, v in reader.fields.items()}
    c = model["config"]
    assert f["general.architecture"] == "llama"
    assert f["llama.context_length"] == 512 and f["llama.block_count"] == 3
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    assert f["tokenizer.ggml.bos_token_id"] == 1 and f["tokenizer.ggml.eos_token_id"] == 2
    tokens = f["tokenizer.ggml.tokens"]
    ref = Tokenizer.from_file(str(model["root"] / "tok" / "tokenizer.json"))
    assert tokens[:100] == [ref.id_to_token(i) for i in range(100)]
    assert tokens[100:] == [LAYOUT.id_to_str(i) for i in range(100, VOCAB)]
    assert tokens[100:104] == ["[Text]", "[Speech]", "[Hu0]", "[Hu1]"]
    assert tokens[202] == "[Pi0]" and tokens[222] == "[St0]" and tokens[255] == "[Unused255]"
    assert json.loads(f["tokenizer.huggingface.json"])["model"]["type"] == "WordLevel"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["output.weight"] == "Q8_0"  # q4_0 keeps the output projection at q8_0
    sizes = {t: model["files"][t].bytes for t in GGUF_TYPES}
    assert sizes["f32"] > sizes["f16"] == sizes["bf16"] > sizes["q8_0"] > sizes["q4_0"]
    # llama.cpp itself reads the strings: the layout tokens parse from text to their ids
    llm = load_llama_cpp(model["files"]["q8_0"].path)
    assert llm.tokenize(b"[Speech][Hu3][Pi2][St0]", add_bos=False, special=True) == [
        101,
        105,
        204,
        222,
    ]
    assert llm.detokenize([102, 221]) == b"[Hu0][Pi19]"


def test_without_tokenizer_or_layout_tokens_are_named_generically(tmp_path):
    config = tiny_config(vocab_size=96, num_hidden_layers=1)
    ckpt, _ = make_ckpt(tmp_path, config, tokenizer=False)
    r = export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    assert any("[Tok<id>]" in n and "no token layout" in n for n in r.notes)
    tokens = gguf.GGUFReader(r.path).fields["tokenizer.ggml.tokens"].contents()
    assert tokens[:4] == ["[Tok0]", "<s>", "</s>", "[Tok3]"] and tokens[95] == "[Tok95]"
    assert len(tokens) == 96


@pytest.mark.parametrize(
    "kw",
    [
        {"rope_scaling": RopeScaling("linear", factor=2.0)},
        {
            "rope_scaling": RopeScaling(
                "llama3", 8.0, 1.0, 4.0, original_max_position_embeddings=64
            ),
            "rope_theta": 500000.0,
        },
        {"tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True},
        {"head_dim": 32},
    ],
    ids=["rope-linear", "rope-llama3", "tied", "biases", "head-dim-32"],
)
def test_variants_match_jax_in_llama_cpp(tmp_path, kw):
    config = tiny_config(num_hidden_layers=2, **kw)
    ckpt, params = make_ckpt(tmp_path, config, seed=2)
    r = export_gguf(ckpt, tmp_path / "m.gguf", "f32")
    rs = np.random.RandomState(3)
    seq = [1] + rs.randint(0, VOCAB, 319).tolist()
    (lp,) = llama_cpp_logprobs(load_llama_cpp(r.path, f32_kv_cache=True), [seq])
    gap = np.abs(lp - jax_logprobs(params, config, seq))
    assert gap.max() < 1e-3, gap.max()


# ---- bad input ----------------------------------------------------------------------------------
def test_unknown_type_lists_the_valid_ones(model, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    with pytest.raises(ConfigError, match="f32, f16, bf16, q8_0, q4_0"):
        export_gguf(model["ckpt"], out, "q5_k")
    assert cli.main(["export-gguf", str(model["ckpt"]), str(out), "--type", "int8"]) == 2
    err = capsys.readouterr().err
    assert "'int8' is not one of f32, f16, bf16, q8_0, q4_0" in err
    assert not out.exists()


def test_existing_output_kept_unless_overwrite_and_never_inside_the_checkpoint(model, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=r"\(pass overwrite=True to replace it\)"):
        export_gguf(model["ckpt"], out, "q8_0")
    assert out.read_bytes() == b"precious"
    assert cli.main(["export-gguf", str(model["ckpt"]), str(out), "--type", "q8_0"]) == 2
    assert out.read_bytes() == b"precious"
    argv = ["export-gguf", str(model["ckpt"]), str(out), "--type", "q8_0", "--overwrite"]
    argv += ["--layout", str(model["root"] / "layout.json")]
    assert cli.main(argv) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert out.stat().st_size == model["files"]["q8_0"].bytes
    for inside in (model["ckpt"] / "m.gguf", model["ckpt"] / "params" / "m.gguf"):
        with pytest.raises(ConfigError, match="lies inside the input"):
            export_gguf(model["ckpt"], inside, overwrite=True)
        assert not inside.exists()
    with pytest.raises(OutputExistsError, match="is a folder"):
        export_gguf(model["ckpt"], tmp_path, overwrite=True)
    with pytest.raises(MissingInputError):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(model, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")

    def fail(done, total, done_bytes, total_bytes):
        if done == 5:
            raise KeyboardInterrupt

    from tinywave_jax.checkpoint import load_model

    params, config, _ = load_model(model["ckpt"], as_numpy=True)
    with pytest.raises(KeyboardInterrupt):
        write_gguf(params, config, out, "q4_0", overwrite=True, progress=fail)
    assert out.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


def test_inexpressible_rope_fails_naming_the_field_before_writing(model, tmp_path):
    config = model["config"].replace(rope_scaling=RopeScaling("yarn", factor=4.0))
    with pytest.raises(ConversionError, match="rope_scaling.rope_type 'yarn'"):
        write_gguf(model["params"], config, tmp_path / "m.gguf")
    # the same in a checkpoint's config.json is refused when the config is read
    ckpt = tmp_path / "ckpt"
    save_model(ckpt, model["params"], model["config"])
    hf = json.loads((ckpt / "config.json").read_text())
    hf["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (ckpt / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match="yarn"):
        export_gguf(ckpt, tmp_path / "m.gguf")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_token_string_used_twice_is_refused(tmp_path):
    config = tiny_config(num_hidden_layers=1)
    ckpt, _ = make_ckpt(tmp_path, config)
    tok = word_tokenizer(100)
    tok["model"]["vocab"] = {k: v for k, v in tok["model"]["vocab"].items() if v != 50}
    tok["model"]["vocab"]["[Speech]"] = 50  # a text token spelled like the layout's marker
    (ckpt / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConversionError, match=r"'\[Speech\]' names both id 50 and id 101"):
        export_gguf(ckpt, tmp_path / "m.gguf", layout=LAYOUT, verify=False)
    assert not (tmp_path / "m.gguf").exists()


def test_a_projector_in_the_params_is_named(model, tmp_path):
    params = {**model["params"], "projector": {"kernel": np.zeros((1, 64, 64), np.float32)}}
    with pytest.raises(ConversionError, match="projector/kernel"):
        write_gguf(params, model["config"], tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_a_layout_larger_than_the_vocabulary_is_refused(model, tmp_path):
    big = {**LAYOUT_JSON, "num_units": 500, "vocab_size": 700}
    (tmp_path / "big.json").write_text(json.dumps(big))
    with pytest.raises(ConfigError, match="uses 652 ids"):
        export_gguf(model["ckpt"], tmp_path / "m.gguf", layout=str(tmp_path / "big.json"))


def test_cli_help_names_every_type():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    text = commands.choices["export-gguf"].format_help()
    for t in GGUF_TYPES:
        assert t in text


def test_export_gguf_and_compare_reports_what_llama_cpp_scores_and_continues(model, tmp_path):
    """The demo's check: pairwise accuracy and greedy continuation in llama.cpp next to JAX."""
    from tinywave_jax.eval.gguf_run import export_gguf_and_compare
    from tinywave_jax.eval.pairwise import PairItem, pairwise_accuracy
    from tinywave_jax.eval.sequences import checked_seq

    rs = np.random.RandomState(5)

    def seq(name):
        return checked_seq([1, 101] + rs.randint(102, 202, 40).tolist(), name, score_from=2)

    items = [PairItem(seq(f"p{i}"), seq(f"n{i}"), name=f"pair{i}") for i in range(8)]
    prompt = model["prompt"][:120]
    doc = export_gguf_and_compare(
        model["ckpt"],
        tmp_path / "student.q8_0.gguf",
        "q8_0",
        items=items,
        prompt=prompt,
        new_tokens=32,
        layout=LAYOUT,
        log=lambda msg: None,
    )
    assert doc["type"] == "q8_0" and (tmp_path / "student.q8_0.gguf").stat().st_size == doc["bytes"]
    p = doc["pairwise"]
    jax_acc = pairwise_accuracy(model["params"], model["config"], items)["accuracy"]
    assert p["jax_accuracy"] == jax_acc and p["n_pairs"] == 8
    assert p["llama_cpp_accuracy"] == jax_acc and p["outcome_agreement"] == 1.0
    assert 0 < p["logprob_gap_mean"] < GAP_BOUNDS["q8_0"][0]
    c = doc["continuation"]
    assert c["jax"] == jax_greedy(model["params"], model["config"], prompt, 32)
    assert c["llama_cpp"] == c["jax"] and c["common_prefix"] == 32


def test_a_killed_exports_leftover_is_removed_by_the_next_export(model, tmp_path):
    import subprocess
    import sys

    from tinywave_jax.convert.gguf_export import _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free: the leftover's writer is gone
    leftover = tmp_path / f".m.gguf.tmp-{_host()}-{dead.pid}-0123abcd"
    alive = tmp_path / f".m.gguf.tmp-{_host()}-{os.getpid()}-4567cdef"  # a live writer's file
    leftover.write_bytes(b"half a file")
    alive.write_bytes(b"being written")
    export_gguf(model["ckpt"], tmp_path / "m.gguf", "q4_0", layout=LAYOUT)
    assert sorted(os.listdir(tmp_path)) == [alive.name, "m.gguf"]


def test_compare_gguf_scores_tasks_as_llama_cpp_and_jax_do(model):
    """The demo's q8_0 row: each task scored in llama.cpp (pairs and perplexity) beside the JAX
    model's per-item scores, given or computed, with the pairs decided alike counted."""
    from tinywave_jax.eval import bootstrap
    from tinywave_jax.eval.gguf_run import (
        compare_gguf,
        llama_cpp_pairwise_accuracy,
        llama_cpp_perplexity,
    )
    from tinywave_jax.eval.harness import TaskInputs, run_task
    from tinywave_jax.eval.pairwise import PairItem
    from tinywave_jax.eval.sequences import checked_seq

    rs = np.random.RandomState(6)

    def seq(name):
        return checked_seq([1, 101] + rs.randint(102, 202, 30).tolist(), name, score_from=2)

    inputs = {
        "ssc": TaskInputs("ssc", pairs=[PairItem(seq(f"p{i}"), seq(f"n{i}")) for i in range(6)]),
        "ppl": TaskInputs("ppl", seqs=[seq(f"s{i}") for i in range(3)]),
    }
    params, config = model["params"], model["config"]
    jax = {t: bootstrap.task_scores(t, run_task(params, config, inp)) for t, inp in inputs.items()}
    llm = load_llama_cpp(model["files"]["q4_0"].path)
    computed = compare_gguf(llm, params, config, inputs=inputs)["tasks"]
    given = compare_gguf(llm, inputs=inputs, jax_scores=jax)["tasks"]  # no JAX model needed
    pairs = llama_cpp_pairwise_accuracy(llm, inputs["ssc"].pairs)
    ppl = llama_cpp_perplexity(llm, inputs["ppl"].seqs)
    for got in (computed, given):
        s, p = got["ssc"], got["ppl"]
        assert s["result"] == pairs and list(s["scores"]) == [q["outcome"] for q in pairs["pairs"]]
        assert s["jax_accuracy"] == pytest.approx(jax["ssc"].mean())
        assert s["llama_cpp_accuracy"] == pairs["accuracy"]
        agree = int((jax["ssc"] == s["scores"]).sum())
        assert s["agreeing_pairs"] == agree and s["outcome_agreement"] == agree / 6
        assert p["llama_cpp_ppl"] == ppl["ppl"] and list(p["scores"][0]) == ppl["sequence_nll"]
        assert p["jax_ppl"] == pytest.approx(np.exp(jax["ppl"][0].sum() / jax["ppl"][1].sum()))
