"""Speech out: a unit HiFi-GAN vocoder (CodeHiFiGAN, SpiritLM's decoder) in JAX.

config.py      the typed config (speech-resynthesis's config.json keys), receptive field
model.py       the Flax generator and duration predictor
synthesis.py   units -> waveform: id checks, durations, batches, exact chunked streaming
checkpoint.py  vocoder folders; importing a PyTorch generator.pt (weight norm folded)
commands.py    `tinywave import-vocoder`
"""
