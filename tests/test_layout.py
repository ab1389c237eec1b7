"""Token layout: SpiritLM's id table, token strings, dedup and the expressive time merge."""

import re
from fractions import Fraction

import numpy as np
import pytest
from data_fixtures import make_tokenizer

from tinywave_jax.config import from_dict
from tinywave_jax.data.layout import (
    LayoutConfig,
    TokenLayout,
    dedup,
    ids_to_string,
    join_spans,
    load_tokenizer,
    merge_streams,
    parse_token_string,
    preset_layout,
)
from tinywave_jax.errors import ConfigError, InputError

EXPRESSIVE_EXAMPLE = "[St71][Pi39][Hu99][Hu49][Hu38][Hu149][Hu71][Pi48][Hu423]"
INTERLEAVED_EXAMPLE = "[Hu338][Text] and they went out together[Speech][Hu431][Pi0][Hu457]"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_presets_match_spiritlm_id_table():
    # Numbers straight from SpiritLM's table (reference §3).
    ex = preset_layout("spiritlm_expressive")
    assert (ex.text_marker_id, ex.speech_marker_id, ex.vocab_size) == (32000, 32001, 32768)
    assert [
        ex.str_to_id(t) for t in ("[Hu0]", "[Hu500]", "[Pi0]", "[Pi63]", "[St0]", "[St99]")
    ] == [32002, 32502, 32503, 32566, 32567, 32666]
    base = preset_layout("spiritlm_base")
    assert (base.vocab_size, base.str_to_id("[Hu500]"), base.used_size) == (32512, 32502, 32503)
    with pytest.raises(ValueError, match="Pi"):
        base.str_to_id("[Pi0]")
    with pytest.raises(ValueError, match="hubert unit 501"):
        ex.str_to_id("[Hu501]")
    assert ex.id_to_str(32700) == "[Unused32700]" and ex.str_to_id("[Unused32700]") == 32700
    with pytest.raises(ValueError, match="32768"):
        ex.id_to_str(32768)


def test_custom_layout_padding_and_config_errors():
    lay = from_dict(
        LayoutConfig,
        {"preset": None, "text_vocab_size": 100, "num_units": 50, "num_pitch": 8, "num_style": 4},
    ).build()
    assert lay.used_size == 164 and lay.vocab_size == 256
    assert lay.offset("hubert") == 102 and lay.offset("pitch") == 152 and lay.offset("style") == 160
    lay8 = from_dict(
        LayoutConfig,
        {"preset": None, "text_vocab_size": 100, "num_units": 50, "pad_to_multiple": 8},
    ).build()
    assert lay8.vocab_size == 152 and not lay8.is_expressive
    with pytest.raises(ConfigError, match="either `preset` or the custom"):
        from_dict(LayoutConfig, {"num_units": 10})
    with pytest.raises(ConfigError, match="needs text_vocab_size"):
        from_dict(LayoutConfig, {"preset": None, "num_units": 10})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(LayoutConfig, {"preset": "spiritlm_large"})
    with pytest.raises(ConfigError, match="vocab_size 150"):
        from_dict(
            LayoutConfig,
            {"preset": None, "text_vocab_size": 100, "num_units": 50, "vocab_size": 150},
        )


def test_spiritlm_strings_round_trip(tokenizer_dir):
    lay = preset_layout("spiritlm_expressive")
    tok = load_tokenizer(tokenizer_dir, lay)
    ids = parse_token_string(EXPRESSIVE_EXAMPLE, lay)
    assert ids.tolist() == [
        32567 + 71,
        32503 + 39,
        32002 + 99,
        32002 + 49,
        32002 + 38,
        32002 + 149,
        32002 + 71,
        32503 + 48,
        32002 + 423,
    ]
    assert ids_to_string(ids, lay) == EXPRESSIVE_EXAMPLE
    ids = parse_token_string(INTERLEAVED_EXAMPLE, lay, tok, add_bos=True)
    text = tok("and they went out together", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == [1, 32002 + 338, 32000, *text, 32001, 32002 + 431, 32503, 32002 + 457]
    assert ids_to_string(ids, lay, tok) == INTERLEAVED_EXAMPLE
    with pytest.raises(ValueError, match="tokenizer"):
        parse_token_string(INTERLEAVED_EXAMPLE, lay)  # text without a tokenizer


def test_tokenizer_must_fit_the_layout(tokenizer_dir):
    small = TokenLayout(text_vocab_size=50, num_units=10, vocab_size=64)
    with pytest.raises(ValueError, match="reserves only 50"):
        load_tokenizer(tokenizer_dir, small)
    other_bos = TokenLayout(text_vocab_size=200, num_units=10, vocab_size=256, bos_id=5)
    with pytest.raises(ValueError, match="bos id 1"):
        load_tokenizer(tokenizer_dir, other_bos)


def test_dedup_keeps_first_time_of_each_run():
    u, t = dedup([5, 5, 5, 2, 2, 5, 7], np.arange(7) * 0.04)
    assert u.tolist() == [5, 2, 5, 7]
    np.testing.assert_allclose(t, [0.0, 0.12, 0.2, 0.24])


def test_expressive_merge_reproduces_spiritlm_example():
    # HuBERT at 25 Hz, pitch at 12.5 Hz, style at 1 Hz, per frame (not deduplicated).
    lay = preset_layout("spiritlm_expressive")
    hubert = [99, 49, 38, 149, 149, 71, 423]
    pitch = [39, 39, 39, 48]
    streams = {
        "hubert": (hubert, np.arange(7) * 0.04),
        "pitch": (pitch, np.arange(4) * 0.08),
        "style": ([71], [0.0]),
    }
    ids, times = merge_streams(lay, streams)
    assert ids_to_string(ids, lay) == EXPRESSIVE_EXAMPLE
    assert np.all(np.diff(times) >= 0)


def _reference_merge(hubert, pitch, style):
    """SpiritLM's rule written naively with exact rational times: per frame, drop a HuBERT/pitch
    frame equal to the previous one, then sort by (time, style < pitch < HuBERT)."""
    out = []
    for name, frames, rate, rank, prefix in (
        ("hubert", hubert, 25, 2, "Hu"),
        ("pitch", pitch, Fraction(25, 2), 1, "Pi"),
        ("style", style, 1, 0, "St"),
    ):
        prev = None
        for i, u in enumerate(frames):
            if name != "style" and u == prev:
                continue
            prev = u
            out.append((Fraction(i) / rate, rank, f"[{prefix}{u}]"))
    return "".join(tok for _, _, tok in sorted(out, key=lambda x: (x[0], x[1])))


@pytest.mark.parametrize("seed", range(5))
def test_expressive_merge_matches_naive_reference(seed):
    rng = np.random.default_rng(seed)
    lay = preset_layout("spiritlm_expressive")
    n = int(rng.integers(50, 400))
    hubert = np.repeat(rng.integers(0, 501, n), rng.integers(1, 5, n))[:n]
    pitch = np.repeat(rng.integers(0, 64, n // 2), rng.integers(1, 5, n // 2))[: n // 2]
    style = rng.integers(0, 100, max(1, n // 25))
    # times as an extractor computes them in float64 (i * 0.04 is not exactly i * 0.08 / 2)
    streams = {
        "hubert": (hubert, np.arange(n) * 0.04),
        "pitch": (pitch, np.arange(n // 2) * 0.08),
        "style": (style, np.arange(len(style)) * 1.0),
    }
    ids, _ = merge_streams(lay, streams)
    assert ids_to_string(ids, lay) == _reference_merge(
        hubert.tolist(), pitch.tolist(), style.tolist()
    )


def test_unit_outside_layout_is_an_error_naming_the_record():
    lay = preset_layout("spiritlm_base")
    with pytest.raises(ValueError, match=r"rec7: hubert unit 501 is outside"):
        merge_streams(lay, {"hubert": ([3, 501], [0.0, 0.04])}, where="rec7")
    with pytest.raises(ValueError, match="pitch"):
        merge_streams(lay, {"pitch": ([3], [0.0])}, where="rec7")  # base has no pitch tokens


def test_markers_at_modality_changes_only():
    lay = preset_layout("spiritlm_base")
    ids = join_spans(
        lay,
        [("speech", [32010, 32011]), ("speech", [32012]), ("text", [7, 8]), ("speech", [32013])],
    )
    assert ids.tolist() == [1, 32001, 32010, 32011, 32012, 32000, 7, 8, 32001, 32013]
    ids = join_spans(lay, [("text", [7]), ("speech", [32013])], leading_marker=False)
    assert ids.tolist() == [1, 7, 32001, 32013]


@pytest.mark.parametrize(
    "token, nearest",
    [
        ("[Hux]", "[HuN] (N in 0..500)"),
        ("[Foo]", None),
        ("[Hu-1]", "[HuN] (N in 0..500)"),
        ("[HU12]", "[Hu12]"),
        ("[Hu012]", "[Hu12]"),
        ("[Speach]", "[Speech]"),
        ("[text]", "[Text]"),
        ("[pi3]", "[Pi3]"),
    ],
)
def test_malformed_tokens_are_errors_naming_the_nearest_form(tokenizer_dir, token, nearest):
    """Anything in brackets must be a layout token exactly; with a tokenizer it used to become
    text (<unk>, id 0) silently."""
    lay = preset_layout("spiritlm_expressive")
    tok = load_tokenizer(tokenizer_dir, lay)
    with pytest.raises(InputError, match=re.escape(token)) as e:
        parse_token_string(f"[Speech][Hu3]{token}[Hu4] hello", lay, tok)
    assert "nearest: " + (nearest or "[") in str(e.value), str(e.value)
    assert "[UnusedN]" in str(e.value) and "\n" not in str(e.value)
    # the exact forms still parse, text around them still tokenises
    ids = parse_token_string("[Speech][Hu12][Text] hello[Unused32700]", lay, tok)
    assert ids.tolist() == [32001, 32002 + 12, 32000, *tok("hello")["input_ids"], 32700]
