"""The built-in end-to-end demo (`tinywave demo`): spoken stories -> units -> teacher ->
distilled student and baseline -> benchmarks -> Hugging Face export.

    stories   the bundled stories (correct / wrong endings) and word / non-word pairs
    synth     espeak-ng synthesis with word timings known by construction
    corpus    stages 1-2: speech, units, tokenizer, layout, corpora
    training  stages 3-4: run configs for `tinywave train` / `tinywave distill`
    evaluate  stages 5-6: benchmarks, results table, export and generation check
    plots     loss curves and attention maps
    pipeline  the stages, cached in a work folder; `run_demo`
"""
from .pipeline import STAGES, Demo, run_demo
from .settings import DemoSettings, demo_settings

__all__ = ["STAGES", "Demo", "DemoSettings", "demo_settings", "run_demo"]
