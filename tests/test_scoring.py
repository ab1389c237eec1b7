"""`tinywave score` against log-probabilities computed directly with the transformers torch model."""

import json

import numpy as np
import pytest
import torch
from hf_reference import make_hf_model

from tinywave_jax import cli, scoring
from tinywave_jax.convert import import_hf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    model = make_hf_model(seed=11, num_key_value_heads=2, vocab_size=300)
    model.save_pretrained(root / "hf")
    import_hf(root / "hf", root / "ckpt")
    return model, root


def test_score_matches_torch_logprobs_and_passes_other_keys(ckpt):
    model, root = ckpt
    rs = np.random.RandomState(0)
    lengths = [1, 2, 17, 40, 300, 33]  # several buckets, one single-token sequence
    seqs = [rs.randint(0, 300, n).tolist() for n in lengths]
    (root / "in.jsonl").write_text(
        "".join(json.dumps({"ids": s, "name": f"s{i}"}) + "\n" for i, s in enumerate(seqs))
    )
    assert (
        cli.main(
            [
                "score",
                str(root / "ckpt"),
                str(root / "in.jsonl"),
                str(root / "out.jsonl"),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    out = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    assert [o["name"] for o in out] == [f"s{i}" for i in range(len(seqs))]
    for s, o in zip(seqs, out):
        with torch.no_grad():
            logits = model(torch.tensor([s])).logits[0].double()
        ref = (
            torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(s[1:])[:, None])[:, 0].numpy()
        )
        assert len(o["logprobs"]) == len(s) - 1
        np.testing.assert_allclose(o["logprobs"], ref, atol=1e-4)
        assert o["sum_logprob"] == pytest.approx(ref.sum(), abs=1e-3)
        if len(s) > 1:
            assert o["mean_logprob"] == pytest.approx(ref.mean(), abs=1e-4)
        else:
            assert o["mean_logprob"] is None


def test_one_compile_per_bucket(ckpt):
    _, root = ckpt
    from tinywave_jax.checkpoint import load_model

    params, config, _ = load_model(root / "ckpt")
    fn = scoring._logprob_fn(config)
    before = fn._cache_size()
    rs = np.random.RandomState(1)
    scoring.score_sequences(
        params,
        config,
        [rs.randint(0, 300, n).tolist() for n in (5, 9, 16, 3, 70, 100, 128)],
        batch_size=2,
    )
    assert fn._cache_size() - before <= 2  # buckets 16 and 128 (16 may be cached already)


@pytest.mark.parametrize(
    "line, needle",
    [
        ('{"ids": [1, 2, 300]}', "300"),
        ('{"ids": [1, -1]}', "-1"),
        ('{"tokens": [1]}', "in.jsonl:1"),
        ("not json", "in.jsonl:1"),
    ],
)
def test_bad_input_is_named(ckpt, line, needle, capsys):
    _, root = ckpt
    (root / "in.jsonl").write_text(line + "\n")
    (root / "bad_out.jsonl").write_text("keep me\n")
    assert (
        cli.main(["score", str(root / "ckpt"), str(root / "in.jsonl"), str(root / "bad_out.jsonl")])
        == 2
    )
    err = capsys.readouterr().err
    assert needle in err and "in.jsonl" in err
    assert (root / "bad_out.jsonl").read_text() == "keep me\n"  # nothing half-written replaced it
