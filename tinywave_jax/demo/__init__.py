"""The built-in end-to-end demo (`tinywave demo`) and its teacher (`tinywave demo-teacher`):
spoken stories -> units -> pretrained teacher -> distilled student, baseline and ablation rows ->
benchmarks with intervals -> Hugging Face export.

    world     the stories: a town of scenes, cloze endings, word / non-word pairs
    synth     espeak-ng synthesis (several syntheses per voice) with word timings by construction
    speech    which audio exists: pretraining, distillation, held-out and benchmark folders
    tokens    tokenizer, token layout, corpora
    training  run configs: teacher pretraining and correction, the student rows and their sweep
    teacher   `tinywave demo-teacher`: pretrain, evaluate and package the teacher; hash checks
    vocoder   `tinywave demo-vocoder`: train, evaluate and package the demo's unit vocoder
    evaluate  scoring, paired-bootstrap intervals (eval/bootstrap.py), the export check
    results   results.md / results.json
    plots     loss curves and attention maps
    stages    a work folder of cached stages;  pipeline  the demo's stages, `run_demo`
"""

from .._lazy import lazy_exports

# lazily, so that `tinywave --help` (demo/commands.py lives in this package) loads no jax
__getattr__, __all__ = lazy_exports(
    __name__,
    {"pipeline": ["STAGES", "Demo", "run_demo"], "settings": ["DemoSettings", "demo_settings"]},
)
