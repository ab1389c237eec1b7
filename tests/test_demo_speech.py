"""The demo's natural speech and its story test, against independent checks: the espeak-ng
command-line tool, word lists of the texts, and the stories' own words."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from tinywave_jax.demo import world as world_text
from tinywave_jax.demo.espeak import ESPEAK_RATE, EspeakError, check_voices, synthesize
from tinywave_jax.demo.speech import Cast, Speaker
from tinywave_jax.demo.synth import RATE, TARGET_VOICE, join, speak
from tinywave_jax.demo.teacher import PACKAGE_DIRS, teacher_world, verify_teacher
from tinywave_jax.eval.references import copy_score


def _binding_world():
    return world_text.make_world(
        world_text.WorldSplits(test=48, validation=12, train=600, kind="binding")
    )


def test_binding_sSC_endings_differ_in_one_word_the_story_mentions():
    """The wrong ending is the right one with one word swapped for the *other* binding's value
    (or person): both words occur in the context, in the same position of a sentence of the
    same shape, so copying from the context cannot tell the endings apart."""
    world = _binding_world()
    assert world == _binding_world()
    texts = {k: {s.text for s in v} for k, v in world.items()}
    assert not texts["train"] & (texts["test"] | texts["validation"])
    vocab = {w: i for i, w in enumerate(world_text.vocabulary())}
    for s in world["test"] + world["train"][:200]:
        right, wrong = world_text.words_of(s.ending), world_text.words_of(s.wrong)
        head = next(i for i, (r, w) in enumerate(zip(right, wrong)) if r != w)
        tail = next(i for i, (r, w) in enumerate(zip(right[::-1], wrong[::-1])) if r != w)
        swapped = (
            " ".join(right[head : len(right) - tail]),
            " ".join(wrong[head : len(wrong) - tail]),
        )
        assert swapped[1] == " ".join(world_text.words_of(s.decoy)), s.id
        flat = " " + " ".join(w for c in s.context for w in world_text.words_of(c)) + " "
        for phrase in swapped:  # each swapped word is in the story, once
            assert flat.count(f" {phrase} ") == 1, (s.id, phrase)
        # word-level copy rule: endings of equal length copy equally much of the context
        ids = np.array([vocab[w] for w in flat.split()])
        assert len(right) != len(wrong) or copy_score(
            ids, np.array([vocab[w] for w in right])
        ) == pytest.approx(copy_score(ids, np.array([vocab[w] for w in wrong]))), s.id
    # held-out stories cycle through the six templates; the asked person is first or second
    assert Counter(s.template for s in world["test"]) == dict.fromkeys(range(6), 8)
    asked_first = [
        world_text.words_of(s.ending)[0 if s.template % 2 else 1] == s.people[0].lower()
        or s.people[0].lower() in world_text.words_of(s.ending)
        for s in world["train"]
    ]
    assert 0.4 < np.mean(asked_first) < 0.6


def test_scene_sSC_endings_differ_only_in_words_the_story_never_says():
    """A scene story's wrong ending is the right one with the words its context does not say
    taken from another scene: neither ending's differing words occur in the story, so copying
    cannot tell them apart, and the other scene's words are a real scene's, in its slot."""
    splits = world_text.WorldSplits(test=48, validation=12, train=600, kind="scene")
    world = world_text.make_world(splits)
    assert world == world_text.make_world(splits)
    texts = {k: {s.text for s in v} for k, v in world.items()}
    assert not texts["train"] & (texts["test"] | texts["validation"])
    scene_of = {w: i for i, sc in enumerate(world_text.SCENES) for w in sc}
    for s in world["test"] + world["train"][:200]:
        right, wrong = world_text.words_of(s.ending), world_text.words_of(s.wrong)
        said = set(world_text.words_of(" ".join(s.context)))
        head = next(i for i, (r, w) in enumerate(zip(right, wrong)) if r != w)
        tail = next(i for i, (r, w) in enumerate(zip(right[::-1], wrong[::-1])) if r != w)
        ours, theirs = right[head : len(right) - tail], wrong[head : len(wrong) - tail]
        assert not (set(ours) | set(theirs)) & said, s.id
        assert theirs == world_text.words_of(s.decoy), s.id
        other = scene_of[s.decoy]  # one slot differs in every template
        assert other != s.scene and " ".join(ours) in world_text.SCENES[s.scene], s.id
    # the ending names no scene word its context says (else the endings alone would differ in
    # coherence): templates 5 and 6 ("met the worker at the place") are left out
    assert world_text.SCENE_TEMPLATES == (0, 1, 2, 3, 4, 7)
    assert Counter(s.template for s in world["test"]) == dict.fromkeys((0, 1, 2, 3, 4, 7), 8)


def test_a_scene_storys_mirror_swaps_which_ending_is_right():
    """The mirror tells the story of the wrong ending's scene with the same template, people
    and time: its right ending is the story's wrong one and the reverse, it fills every scene
    slot from that scene, and it is kept only where its text is no story of any split."""
    world = world_text.make_world(world_text.WorldSplits(test=48, validation=12, train=2000))
    texts = {s.text for v in world.values() for s in v}
    mirrors = world_text.mirrored(world, "test", "scene")
    assert world_text.mirrored(world, "test", "stranger") is None
    kept = [(s, m) for s, m in zip(world["test"], mirrors) if m is not None]
    assert len(kept) > 0.7 * len(mirrors)
    scene_words = {w for sc in world_text.SCENES for x in sc for w in world_text.words_of(x)}
    for s, m in kept:
        assert (m.ending, m.wrong) == (s.wrong, s.ending) and m.text not in texts
        assert (m.template, m.people) == (s.template, s.people) and m.scene != s.scene
        mine = {w for x in world_text.SCENES[m.scene] for w in world_text.words_of(x)}
        said = set(world_text.words_of(m.text)) & scene_words
        assert said <= mine | set(world_text.words_of(" ".join(world_text.TIMES))), m.id
        # the same sentences but the scene's words: the story's time of day is kept
        strip = lambda t, sc: [w for w in world_text.words_of(t) if w not in sc]  # noqa: E731
        theirs = {w for x in world_text.SCENES[s.scene] for w in world_text.words_of(x)}
        assert strip(" ".join(m.context), mine) == strip(" ".join(s.context), theirs), m.id
    for s, m in zip(world["test"], mirrors):
        if m is None:  # dropped only for a repeated text or the story's scene word said
            full = world_text.mirror(s)
            said = set(world_text.words_of(" ".join(full.context)))
            assert full.text in texts or said & set(world_text.words_of(full.decoy)), s.id


def test_a_mirrored_sSC_folder_gives_both_endings_the_same_audio(tmp_path):
    """In a scene world's sSC each story comes with its mirror: four files, the story's pair
    and the mirror's, whose endings are the same two waveforms with right and wrong swapped;
    a story without a mirror has no sSC pair (tSC keeps every story)."""
    import soundfile as sf

    from tinywave_jax.demo.speech import write_bench

    world = world_text.make_world(world_text.WorldSplits(test=6, validation=2, train=50))
    mirrors = world_text.mirrored(world, "test", "scene")
    mirrors[1] = None
    cast = Cast(natural=True)
    counts = write_bench(tmp_path, world["test"], "b", (), False, cast, False, mirrors)
    items = json.loads((tmp_path / "b" / "items.json").read_text())
    kept = [m for m in mirrors if m is not None]
    assert counts == {"ssc": 2 * len(kept), "tsc": 6} and len(kept) >= 4
    folder = tmp_path / "b" / "ssc"
    assert len(list(folder.glob("*.wav"))) == 4 * len(kept)
    for story_pair, mirror_pair in zip(items["ssc"][::2], items["ssc"][1::2]):
        assert mirror_pair["story"] == story_pair["story"] + "m"
        assert (mirror_pair["positive"], mirror_pair["negative"]) == (
            story_pair["negative"],
            story_pair["positive"],
        )
        endings = []
        for pair in (story_pair, mirror_pair):
            for name in pair["files"]:
                wav, rate = sf.read(folder / name)
                endings.append(wav[int(pair["ending_start"] * rate) :])
        # story right == mirror wrong, story wrong == mirror right (same samples)
        np.testing.assert_array_equal(endings[0], endings[3])
        np.testing.assert_array_equal(endings[1], endings[2])
        assert not np.array_equal(endings[0][: len(endings[1])], endings[1][: len(endings[0])])


def test_the_shipped_teachers_worlds_are_still_generated():
    """Packages from before story kinds read as name-swap worlds and reproduce their hash."""
    from tinywave_jax.config import from_dict

    for folder in PACKAGE_DIRS.values():
        prov = verify_teacher(folder)
        splits = from_dict(world_text.WorldSplits, teacher_world(prov), prefix="world")
        assert splits.kind == "stranger"
        assert world_text.world_hash(world_text.make_world(splits)) == prov["world_hash"]


def test_natural_sentences_match_the_cli_and_carry_word_times():
    """A sentence from the library equals espeak-ng's command-line output for the same voice,
    speed and pitch (the library needs a fresh synthesiser per request for that); word times
    follow the text's words in order and stay inside the audio."""
    import subprocess

    import soundfile as sf

    text = "Later Lucy came back from the post office."
    lib = synthesize(text, TARGET_VOICE.espeak, TARGET_VOICE.speed, TARGET_VOICE.pitch)
    again = synthesize(text, TARGET_VOICE.espeak, TARGET_VOICE.speed, TARGET_VOICE.pitch)
    np.testing.assert_array_equal(lib.wav, again.wav)
    cli = subprocess.run(
        ["espeak-ng", "--stdout", "-v", TARGET_VOICE.espeak, "-s", str(TARGET_VOICE.speed)]
        + ["-p", str(TARGET_VOICE.pitch), text],
        capture_output=True,
        check=True,
    ).stdout
    import io

    ref, rate = sf.read(io.BytesIO(cli), dtype="int16")
    assert rate == ESPEAK_RATE
    np.testing.assert_array_equal(np.round(lib.wav * 32768).astype(np.int16), ref[: len(lib.wav)])

    ((wav, words),) = speak([text], TARGET_VOICE)
    assert [w for w, _, _ in words] == world_text.words_of(text)
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts) and all(s < e for _, s, e in words)
    assert 0 <= words[0][1] and words[-1][2] <= len(wav)
    assert abs(len(wav) - len(lib.wav) * RATE / ESPEAK_RATE) <= 2


def test_word_times_stay_ordered_when_the_first_word_has_no_event():
    """Said after two sentences by one synthesiser in this voice, espeak-ng reports no word event
    for "Hugo" and a stray one (text position 0) at the sentence's end; the words still follow
    the text in order, inside the audio, and the first starts where the sound does (found as a
    pretraining record whose word starts went back)."""
    from tinywave_jax.demo.espeak import synthesize_many
    from tinywave_jax.demo.synth import PRETRAIN_VOICES

    texts = [
        "Ruby and Hugo walked to the cafe on Sunday.",
        "They stayed there until dark.",
        "Hugo carried the coffee all the way home.",
    ]
    voice = PRETRAIN_VOICES[2]
    events = synthesize_many(texts, voice.espeak, voice.speed, voice.pitch)[2].words
    assert min(events)[0] < 0 and 0 not in [c for c, _ in events]  # the case this test is for
    for text, (wav, words) in zip(texts, speak(texts, voice)):
        assert [w for w, _, _ in words] == world_text.words_of(text)
        starts = [s for _, s, _ in words]
        assert starts == sorted(starts) and all(s < e for _, s, e in words)
        assert 0 <= words[0][1] < words[1][1] and words[-1][2] <= len(wav)


def test_a_cloze_pair_shares_its_context_audio():
    """Natural synthesis of a pair: the context sentences are said once, so both files hold the
    same context samples, and the ending starts at the same time."""
    st = _binding_world()["test"][0]
    sp = Speaker(TARGET_VOICE, True, (*st.sentences, st.wrong))
    pos, pos_words = sp.say([*st.context, st.ending])
    neg, neg_words = sp.say([*st.context, st.wrong])
    n_context = sum(len(world_text.words_of(c)) for c in st.context)
    cut = int(pos_words[n_context][1] * RATE)
    assert pos_words[:n_context] == neg_words[:n_context]
    np.testing.assert_array_equal(pos[:cut], neg[:cut])
    assert not np.array_equal(pos[cut:], neg[cut:][: len(pos) - cut])


def test_join_puts_sentences_in_order_with_pauses():
    parts = speak(["Anna went to the bakery.", "It was in the evening."], TARGET_VOICE)
    wav, words = join(parts)
    assert [w for w, _, _ in words] == world_text.words_of(
        "Anna went to the bakery. It was in the evening."
    )
    gap = words[5][1] - words[4][2]
    assert gap == pytest.approx(0.30, abs=1e-3)
    assert len(wav) / RATE >= words[-1][2] + 0.09


@pytest.mark.parametrize("roster", ["accents", "us"])
def test_cast_voices_exist_and_a_missing_voice_is_named(roster):
    cast = Cast(natural=True, roster=roster)
    check_voices([v.espeak for v in cast.voices()])
    assert len(cast.distill) >= 4 and cast.unseen and cast.distill[0].name == "target"
    assert len({v.name for v in cast.voices()}) == len(cast.voices())
    # no model hears the unseen voice's espeak voice under another name
    trained = {v.espeak for v in (*cast.distill, *cast.pretrain)}
    assert not trained & {v.espeak for v in cast.unseen}
    if roster == "us":  # one accent: every voice a variant of US English, each variant once
        assert all(v.espeak.startswith("en-us+") for v in cast.voices())
        assert len({v.espeak for v in cast.voices()}) == len(cast.voices())
    with pytest.raises(EspeakError, match="no-such-voice"):
        check_voices(["en-us", "no-such-voice"])


def test_a_bad_voice_roster_is_named():
    from tinywave_jax.demo.settings import TeacherSettings
    from tinywave_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="voices: 'uk' is not 'accents' or 'us'"):
        dataclasses.replace(TeacherSettings(), voices="uk").validate()
