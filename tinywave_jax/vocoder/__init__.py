"""Speech out: a unit HiFi-GAN vocoder (CodeHiFiGAN, SpiritLM's decoder) in JAX.

config.py      the typed config (speech-resynthesis's config.json keys), receptive field
model.py       the Flax generator and duration predictor
synthesis.py   units -> waveform: id checks, durations, batches, exact chunked streaming
checkpoint.py  vocoder folders; importing a PyTorch generator.pt (weight norm folded)
speak.py       `tinywave speak`: audio prompt -> units -> LM -> vocoder -> wav
corpus.py      the utterances training and eval read (path, speaker, transcript)
train.py       `tinywave vocoder train` (discriminators.py, losses.py)
quality.py     `tinywave vocoder eval`: pocketsphinx WER, STOI, unit agreement with intervals
commands.py    `tinywave import-vocoder`, `speak`, `vocoder train`, `vocoder eval`
"""
