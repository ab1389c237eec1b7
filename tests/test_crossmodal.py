"""Cross-modal story cloze (`tinywave eval --task cloze_ss|cloze_st|cloze_ts|cloze_tt`) against the
transformers torch model loaded from our EXPORTED checkpoint: the reference builds every sequence
by hand from the rule in docs/evaluation.md (bos, context marker, context, switch marker, ending;
scored on the ending) with the tokenizer and the extractor called directly."""

import json

import numpy as np
import pytest
import torch
import transformers
from data_fixtures import make_tokenizer
from hf_reference import make_hf_model
from speech_fixtures import synthesize

from tinywave_jax import cli
from tinywave_jax.convert import export_hf, import_hf
from tinywave_jax.errors import InputError, MissingInputError
from tinywave_jax.eval import evaluate

VOCAB = 300
# custom layout: 150 text ids, [Text]=150, [Speech]=151, 16 HuBERT units from 152
LAYOUT = {"preset": None, "text_vocab_size": 150, "num_units": 16, "vocab_size": VOCAB}
BOS, TEXT, SPEECH, HU0 = 1, 150, 151, 152
STORIES = [
    ("he went out and she was with him", "they went home", "it was not for you"),
    ("we went to the world", "hello world", "she is he"),
    ("she was at the a", "that is it", "you and we"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossmodal")
    make_hf_model(seed=31, vocab_size=VOCAB, num_key_value_heads=2).save_pretrained(root / "hf")
    import_hf(root / "hf", root / "ckpt")
    export_hf(root / "ckpt", root / "export")
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        root / "export", dtype=torch.float32
    ).eval()
    (root / "layout.json").write_text(json.dumps(LAYOUT))
    tok = make_tokenizer(root / "tok")
    for k, text in enumerate(["the cat sat on the mat", "a dog ran in the park"]):
        synthesize(root / "fit" / f"{k}.wav", text)
    args = ["units", "fit", str(root / "fit"), str(root / "units"), "--units", "16"]
    assert cli.main([*args, "--pitch-bins", "0", "--style-classes", "0"]) == 0
    lines = []
    for k, (context, pos, neg) in enumerate(STORIES):
        rec = {"group": "g"}
        for part, text in (("context", context), ("positive", pos), ("negative", neg)):
            synthesize(root / "audio" / f"{k}_{part}.wav", text)
            rec[part] = {"text": text, "audio": f"audio/{k}_{part}.wav"}
        lines.append(json.dumps(rec))
    (root / "cloze.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "torch": torch_model, "tok": tok}


def _reference_tokens(setup, modality, text, audio):
    from tinywave_jax.audio import load_extractor, read_audio

    if modality == "text":
        tok = transformers.AutoTokenizer.from_pretrained(setup["tok"])
        return tok(text, add_special_tokens=False)["input_ids"]
    units = load_extractor(setup["root"] / "units").extract(read_audio(audio))["hubert"][0]
    units = units[np.r_[True, units[1:] != units[:-1]]]
    return (units + HU0).tolist()


def _reference_score(model, ids, score_from):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return lp.numpy()[score_from - 1 :].mean()


@pytest.mark.parametrize(
    ("task", "ctx_mod", "end_mod"),
    [
        ("cloze_ss", "speech", "speech"),
        ("cloze_st", "speech", "text"),
        ("cloze_ts", "text", "speech"),
        ("cloze_tt", "text", "text"),
    ],
)
def test_cross_modal_cloze_matches_sequences_built_by_hand(setup, task, ctx_mod, end_mod):
    root = setup["root"]
    doc = evaluate(
        root / "ckpt",
        task,
        root / "cloze.jsonl",
        extractor=root / "units",
        layout=str(root / "layout.json"),
        tokenizer=setup["tok"],
        log=lambda m: None,
    )["result"]
    marker = {"speech": SPEECH, "text": TEXT}
    outcomes = []
    for k, (context, pos, neg) in enumerate(STORIES):
        ctx = _reference_tokens(setup, ctx_mod, context, root / "audio" / f"{k}_context.wav")
        scores = []
        for part, text in (("positive", pos), ("negative", neg)):
            end = _reference_tokens(setup, end_mod, text, root / "audio" / f"{k}_{part}.wav")
            switch = [marker[end_mod]] if end_mod != ctx_mod else []
            ids = [BOS, marker[ctx_mod], *ctx, *switch, *end]
            scores.append(_reference_score(setup["torch"], ids, len(ids) - len(end)))
        pair = doc["pairs"][k]
        np.testing.assert_allclose(pair["positive"], scores[0], rtol=2e-5, err_msg=task)
        np.testing.assert_allclose(pair["negative"], scores[1], rtol=2e-5, err_msg=task)
        outcomes.append(1.0 if scores[0] > scores[1] else 0.0)
    assert doc["accuracy"] == pytest.approx(np.mean(outcomes))
    assert doc["n_pairs"] == len(STORIES)


def test_missing_transcript_or_audio_is_named_before_scoring(setup):
    root = setup["root"]
    rec = json.loads((root / "cloze.jsonl").read_text().splitlines()[0])
    del rec["positive"]["text"]
    bad = root / "no_text.jsonl"  # beside the audio its paths are relative to
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(InputError, match=r"no_text.jsonl:1: cloze_st needs positive.text"):
        evaluate(root / "ckpt", "cloze_st", bad, layout=str(root / "layout.json"), log=print)
    rec = json.loads((root / "cloze.jsonl").read_text().splitlines()[0])
    rec["negative"]["audio"] = "audio/missing.wav"
    bad = root / "no_audio.jsonl"
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(MissingInputError, match=r"no_audio.jsonl:1: negative.audio .*missing.wav"):
        evaluate(root / "ckpt", "cloze_ts", bad, layout=str(root / "layout.json"), log=print)


def test_missing_span_tokenizers_are_named_as_parameters():
    """From Python the error names evaluate's `extractor` / `tokenizer`; the CLI writes the flag."""
    from tinywave_jax.errors import ConfigError
    from tinywave_jax.eval.crossmodal import cloze_pairs

    with pytest.raises(ConfigError, match="^cloze_ss: speech spans need extractor") as e:
        cloze_pairs([], "cloze_ss", None)
    assert e.value.param == (None, "extractor")
    with pytest.raises(ConfigError, match="^cloze_tt: text spans need tokenizer") as e:
        cloze_pairs([], "cloze_tt", None)
    assert e.value.param == (None, "tokenizer")
