"""`tinywave generate` / `generate_tokens`: greedy output equals transformers `generate` on our
exported checkpoint, seeded sampling is reproducible, modality bans hold on a model biased
toward the banned tokens, and bad prompts are named."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from hf_reference import make_hf_model

from tinywave_jax import cli
from tinywave_jax.checkpoint import load_model
from tinywave_jax.convert import export_hf, import_hf
from tinywave_jax.generation import generate_tokens

VOCAB = 300
# 100 text ids, [Text]=100, [Speech]=101, HuBERT 102..201, pitch 202..241, style 242..299
LAYOUT = {
    "preset": None,
    "text_vocab_size": 100,
    "num_units": 100,
    "num_pitch": 40,
    "num_style": 58,
    "vocab_size": VOCAB,
}
TEXT_END, HU, PI, ST = 100, 102, 202, 242


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    make_hf_model(seed=31, vocab_size=VOCAB, num_key_value_heads=2, init_std=0.1).save_pretrained(
        root / "hf"
    )
    import_hf(root / "hf", root / "ckpt")
    export_hf(root / "ckpt", root / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        root / "export", dtype=torch.float32
    ).eval()
    hf.generation_config.eos_token_id = None
    (root / "layout.json").write_text(json.dumps(LAYOUT))
    from tinywave_jax.data import resolve_layout

    return {"root": root, "hf": hf, "layout": resolve_layout(str(root / "layout.json"), VOCAB)}


def test_greedy_cli_matches_hf_generate_on_the_export(model):
    root = model["root"]
    rs = np.random.RandomState(0)
    id_prompts = [rs.randint(0, VOCAB, 50).tolist(), rs.randint(0, VOCAB, 23).tolist()]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"ids": p}) + "\n" for p in id_prompts))
    string_prompt = "[Speech][Hu3][Hu7][Pi2][St0][Hu99]"
    assert (
        cli.main(
            [
                "generate",
                str(root / "ckpt"),
                "--prompts",
                str(root / "prompts.jsonl"),
                "--prompt",
                string_prompt,
                "--greedy",
                "--max-new-tokens",
                "64",
                "--no-stop",
                "--layout",
                str(root / "layout.json"),
                "--out",
                str(root / "out.json"),
            ]
        )
        == 0
    )
    doc = json.loads((root / "out.json").read_text())
    outs = doc["outputs"]
    # --prompt strings come first (bos prepended), then the file's id lists (as given)
    assert outs[0]["prompt_ids"] == [1, 101, HU + 3, HU + 7, PI + 2, ST + 0, HU + 99]
    assert len(outs) == 3
    for out, prompt in zip(outs, [outs[0]["prompt_ids"]] + id_prompts):
        assert out["prompt_ids"] == prompt
        with torch.no_grad():
            ref = (
                model["hf"]
                .generate(
                    torch.tensor([prompt]), max_new_tokens=64, do_sample=False, pad_token_id=0
                )[0, len(prompt) :]
                .tolist()
            )
        assert out["ids"] == ref
        assert len(out["tokens"]) == 64 and not out["stopped"]
        for i, tok in zip(out["ids"], out["tokens"]):  # token strings follow the layout
            assert tok == (f"<{i}>" if i < TEXT_END else model["layout"].id_to_str(i))


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    params, config, _ = load_model(model["root"] / "ckpt")
    rs = np.random.RandomState(1)
    prompts = [rs.randint(0, VOCAB, n).tolist() for n in (5, 9, 14, 3)]

    def run(**kw):
        outs = generate_tokens(
            (params, config), prompts, layout=model["layout"], max_new_tokens=32, stop_ids=(), **kw
        )
        return [o["ids"] for o in outs]

    a, b, c = run(seed=7), run(seed=7), run(seed=8)
    assert a == b and a != c
    assert run(seed=3, top_k=1, temperature=1.0, top_p=1.0) == run(greedy=True)


@pytest.mark.parametrize(
    "modality, biased_to, allowed",
    [
        ("speech", (0, TEXT_END), (HU, PI)),
        ("expressive", (0, TEXT_END), (HU, VOCAB)),
        ("text", (HU, VOCAB), (0, TEXT_END)),
    ],
)
def test_banned_tokens_never_appear(model, modality, biased_to, allowed):
    params, config, _ = load_model(model["root"] / "ckpt")
    kernel = np.array(params["lm_head"]["kernel"])
    kernel[:, biased_to[0] : biased_to[1]] *= 30.0  # some banned logit dominates every step
    old = params["lm_head"]["kernel"]  # same placement as the loaded params: no recompilation
    params = dict(params, lm_head={"kernel": jax.device_put(kernel, old.sharding)})
    rs = np.random.RandomState(2)
    prompts = [rs.randint(0, VOCAB, 8).tolist() for _ in range(4)]

    def sample(modality, seed):
        outs = generate_tokens(
            (params, config),
            prompts,
            layout=model["layout"],
            modality=modality,
            max_new_tokens=32,
            seed=seed,
            stop_ids=(),
        )
        return np.array([o["ids"] for o in outs])

    free = sample("any", 0)
    in_bias = (free >= biased_to[0]) & (free < biased_to[1])
    assert in_bias.mean() > 0.8  # unconstrained, the biased model mostly picks banned ids
    for seed in range(3):
        ids = sample(modality, seed)
        assert ids.shape == (4, 32)
        assert np.all((ids >= allowed[0]) & (ids < allowed[1])), np.unique(ids)


def test_stop_token_ends_a_row(model):
    params, config, _ = load_model(model["root"] / "ckpt")
    rs = np.random.RandomState(4)
    prompts = [rs.randint(0, VOCAB, n).tolist() for n in (12, 7, 16, 3)]
    full = generate_tokens(
        (params, config),
        prompts,
        layout=model["layout"],
        greedy=True,
        max_new_tokens=32,
        stop_ids=(),
    )
    stop = full[0]["ids"][10]
    outs = generate_tokens(
        (params, config),
        prompts,
        layout=model["layout"],
        greedy=True,
        max_new_tokens=32,
        stop_ids=(stop,),
    )
    for f, o in zip(full, outs):
        if stop in f["ids"]:
            cut = f["ids"].index(stop)
            assert o["ids"] == f["ids"][:cut] and o["stopped"] and o["stop_id"] == stop
        else:
            assert o["ids"] == f["ids"] and not o["stopped"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--prompt", "[Speech][Hu3][Hu150]"], ["[Hu150]", "outside"]),
        (["--prompt", "[Speech] hello"], ["tokenizer"]),
        (["--prompts", "{bad}"], ["prompts.jsonl:1", "300", "999"]),
    ],
)
def test_bad_prompts_are_named(model, tmp_path, args, needles, capsys):
    root = model["root"]
    if "{bad}" in args:
        (tmp_path / "prompts.jsonl").write_text(json.dumps({"ids": [1, 5, 300, 999]}) + "\n")
        args = [a.replace("{bad}", str(tmp_path / "prompts.jsonl")) for a in args]
    assert (
        cli.main(
            [
                "generate",
                str(root / "ckpt"),
                *args,
                "--layout",
                str(root / "layout.json"),
                "--max-new-tokens",
                "4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err


def test_split_layer_decode_equals_the_stacked_model_path(model):
    """decode.generate's default per-layer step against the plain `Llama` cache path, sampling
    with top-k/top-p and a stop id, so every branch of the step is compared."""
    import jax.numpy as jnp

    from tinywave_jax.models import decode

    params, config, _ = load_model(model["root"] / "ckpt")
    rs = np.random.RandomState(6)
    ids, mask = decode.left_pad([rs.randint(0, VOCAB, n).tolist() for n in (11, 4)])
    kw = dict(
        max_new_tokens=16,
        greedy=False,
        temperature=0.8,
        top_k=50,
        top_p=0.9,
        stop_ids=(7,),
        banned=jnp.zeros(VOCAB, bool).at[:TEXT_END].set(True),
    )
    split, stacked = (
        np.asarray(
            decode.generate(
                params,
                config,
                jnp.asarray(ids),
                jnp.asarray(mask),
                jax.random.key(3),
                split_layers=s,
                **kw,
            )
        )
        for s in (True, False)
    )
    np.testing.assert_array_equal(split, stacked)
    assert split.min() >= TEXT_END


def _small_tokenizer(directory):
    """A WordLevel tokenizer of 5 ids (<unk>=0, <s>=1, </s>=2, hello, world): fits 100 text ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(str(directory))
    return str(directory)


@pytest.mark.parametrize(
    "bad, nearest",
    [
        ("[Hux]", "[HuN] (N in 0..99)"),
        ("[Foo]", "["),
        ("[Hu-1]", "[HuN] (N in 0..99)"),
        ("[HU12]", "[Hu12]"),
        ("[Speach]", "[Speech]"),
    ],
)
def test_malformed_prompt_tokens_exit_2_naming_the_nearest_form(
    model, tmp_path, capsys, bad, nearest
):
    """With a tokenizer these used to become text (<unk>, id 0) and exit 0."""
    root = model["root"]
    args = ["generate", str(root / "ckpt"), "--layout", str(root / "layout.json")]
    args += ["--tokenizer", _small_tokenizer(tmp_path / "tok"), "--max-new-tokens", "2"]
    assert cli.main([*args, "--prompt", f"[Speech][Hu3]{bad} hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"prompt 0 '[Speech][Hu3]{bad} hello': {bad} is not a token" in err, err
    assert f"nearest: {nearest}" in err, err
    assert cli.main([*args, "--prompt", "[Speech][Hu3][Text] hello", "--stop", bad]) == 2
    assert f"--stop '{bad}'" in capsys.readouterr().err


def test_stop_token_string_adds_only_the_named_id(model):
    """`--stop '[Text]'` used to add bos too, which lifted the speech ban on bos."""
    from tinywave_jax.commands import _parse_stop
    from tinywave_jax.generation import allowed_ids

    layout = model["layout"]
    stop = _parse_stop(["[Text]", "[Hu5][St1]", "7"], layout, None)
    assert stop == [TEXT_END, HU + 5, ST + 1, 7]
    allowed = allowed_ids(layout, VOCAB, "speech", _parse_stop(["[Text]"], layout, None))
    assert not allowed[layout.bos_id] and allowed[TEXT_END]
    assert allowed.sum() == 100 + 1  # HuBERT units + the stop id
