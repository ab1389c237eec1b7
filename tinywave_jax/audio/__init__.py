"""Audio -> speech units: phonetic ("hubert"), pitch and style token streams.

wav = read_audio("a.flac")                    # float32 mono, 16 kHz
ext = load_extractor("units/")                # folder from `tinywave units fit` / `hubert-spec`
streams = ext.extract(wav, f0_mean=None)      # {"hubert": (ids, start_s), "pitch": ..., ...}
"""

from .extractor import UnitExtractor, load_extractor
from .io import SAMPLE_RATE, list_audio, read_audio
from .pitch import estimate_f0, mean_log_f0

__all__ = [
    "SAMPLE_RATE",
    "UnitExtractor",
    "estimate_f0",
    "list_audio",
    "load_extractor",
    "mean_log_f0",
    "read_audio",
]
