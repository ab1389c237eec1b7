"""espeak-ng as a library (ctypes): whole sentences synthesised in one call, with the synthesiser's
own word events, so natural (coarticulated) speech still has word timings.

The command-line tool prints audio only; the library's synthesis callback also reports a WORD
event at the start of each word (its character position in the text and its sample position in
the audio). That is what interleaving needs to switch modality at word boundaries. The library
keeps global state, so one process synthesises one utterance at a time (`Speaker` holds it);
callers parallelise over processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import pickle
import threading
import warnings

import numpy as np

from ..errors import InputError

ESPEAK_RATE = 22050  # the library's output rate
_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the audio is done
_EVENT_WORD, _EVENT_LIST_TERMINATED, _EVENT_SAMPLERATE = 1, 0, 8
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: report a missing data folder, do not exit()


class EspeakError(InputError):
    """espeak-ng's library is missing, lacks word events, or does not know a voice."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)
_LIB = None
_LOCK = threading.Lock()  # the library is one global synthesiser per process


def _library():
    """The loaded libespeak-ng (once per process); EspeakError when it is not installed."""
    global _LIB
    if _LIB is not None:
        return _LIB
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise EspeakError(
            f"espeak-ng's library ({name}) cannot be loaded ({e}): natural synthesis needs its "
            "word events; run `make espeak` (apt-get install espeak-ng)"
        ) from None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _DONT_EXIT)
    if rate != ESPEAK_RATE:
        raise EspeakError(
            f"espeak-ng's library started at {rate} Hz (expected {ESPEAK_RATE}); "
            "its data folder may be missing"
        )
    _LIB = lib
    return lib


@dataclasses.dataclass(frozen=True)
class Utterance:
    wav: np.ndarray  # float32 in [-1, 1] at ESPEAK_RATE
    words: list[tuple[int, int]]  # per WORD event: (character offset in the text, start sample)


def synthesize(text: str, voice: str, speed: int, pitch: int, pitch_range: int = 50) -> Utterance:
    """One espeak-ng call for `text` (plain text, no SSML) in `voice` at `speed` wpm and
    `pitch` 0-99; returns the audio and the synthesiser's word events."""
    return synthesize_many([text], voice, speed, pitch, pitch_range)[0]


def synthesize_many(
    texts: list[str], voice: str, speed: int, pitch: int, pitch_range: int = 50
) -> list[Utterance]:
    """`synthesize` for each text in turn, by one fresh synthesiser: a child process forked for
    this call. The library carries state from one synthesis to the next (its noise generator,
    flutter phase, echo buffer), so only the same requests to a fresh synthesiser give the same
    audio, as the command-line tool does. Call it from a process without other threads (the
    demo's spawned workers)."""
    _library()  # loaded and initialised here, before the fork, but never used to synthesise
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python warns on fork in a threaded process (jax's, in tests): the child here only runs
        # espeak-ng, pickle and os.write, and glibc makes malloc usable after fork, so no lock
        # another thread held at the fork is ever taken in the child.
        warnings.simplefilter("ignore", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # child: synthesise, send, exit without running the parent's clean-up
        code = 0
        try:
            os.close(r)
            done = [_synthesize_here(t, voice, speed, pitch, pitch_range) for t in texts]
            payload = pickle.dumps(("ok", done))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            payload, code = pickle.dumps(("error", e)), 1
        with os.fdopen(w, "wb") as f:
            f.write(payload)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise EspeakError(f"espeak-ng's synthesis process died on {texts[0][:60]!r} ({voice!r})")
    status, value = pickle.loads(data)  # our own child's output, never outside data
    if status == "error":
        raise value
    return value


def _synthesize_here(text: str, voice: str, speed: int, pitch: int, pitch_range: int) -> Utterance:
    lib = _library()
    chunks: list[np.ndarray] = []
    events: list[tuple[int, int]] = []
    total = [0]

    def on_audio(wav, n, ev):
        k = 0
        while ev[k].type != _EVENT_LIST_TERMINATED:
            if ev[k].type == _EVENT_WORD:
                # `sample` is the event's sample position; audio_position (ms) is coarser
                events.append((ev[k].text_position - 1, int(ev[k].sample)))
            k += 1
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
            total[0] += n
        return 0

    callback = _CALLBACK(on_audio)
    data = text.encode("utf-8")
    with _LOCK:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")
        for param, value in ((_RATE, speed), (_PITCH, pitch), (_RANGE, pitch_range)):
            lib.espeak_SetParameter(param, int(value), 0)
        lib.espeak_SetSynthCallback(callback)
        err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0:
        raise EspeakError(f"espeak-ng failed (error {err}) on {text[:60]!r} in voice {voice!r}")
    wav = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not events:
        raise EspeakError(
            f"espeak-ng reported no word events for {text[:60]!r}: this build cannot give "
            "word timings"
        )
    return Utterance(wav, events)


def check_voices(voices) -> None:
    """Preflight: the library loads, reports word events and knows every voice (names the first
    one it lacks)."""
    for v in voices:
        synthesize("one two", v, 175, 50)
