"""Audio -> speech units: phonetic ("hubert"), pitch and style token streams.

wav = read_audio("a.flac")                    # float32 mono, 16 kHz
ext = load_extractor("units/")                # folder from `tinywave units fit` / `hubert-spec`
streams = ext.extract(wav, f0_mean=None)      # {"hubert": (ids, start_s), "pitch": ..., ...}

Names are imported lazily so that `tinywave --help` does not pay for soundfile and scipy.
"""

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "extractor": ["UnitExtractor", "load_extractor"],
        "io": ["SAMPLE_RATE", "list_audio", "read_audio"],
        "pitch": ["estimate_f0", "mean_log_f0"],
    },
)
