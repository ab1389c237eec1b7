"""Token layout, tokenized speech corpus (ArrayRecord via TFDS) and grain training pipelines.

    layout         TokenLayout / LayoutConfig, a model's layout (resolve_layout), token strings,
                   dedup and the expressive merge
    streams        record -> token sequence (speech, expressive, interleaved, text)
    corpus_inputs  manifest / audio folder -> items, their splits; a units line -> record
    corpus_audio   audio -> unit record through the extractor; per-speaker mean log-F0
    corpus_build   `tinywave corpus build` (one host, or a host's share) / `finalize`: staged
                   shards -> TFDS ArrayRecord; summary
    corpus_format  the stored record: CorpusError, TFDS features, encode / decode
    corpus_read    version_dir, CorpusSource (a grain data source of one split)
    batches        the batch contract (contract_batch, pack_sequences), no grain needed
    synthetic      SyntheticDataConfig, SyntheticIterator: bigram-walk documents, no corpus
    pipeline       DataConfig, make_train_iterator (grain; packing, hosts, state)

Names are imported lazily so that `tinywave --help` does not pay for grain and TFDS.
"""

from .._lazy import lazy_exports

_NAMES = {
    "layout": [
        "LayoutConfig",
        "TokenLayout",
        "dedup",
        "ids_to_string",
        "join_spans",
        "load_tokenizer",
        "merge_streams",
        "parse_token_string",
        "preset_layout",
        "resolve_layout",
    ],
    "streams": ["PATTERNS", "BadRecord", "interleave", "sequence_for"],
    "corpus_format": ["CorpusError"],
    "corpus_read": ["CorpusSource"],
    "corpus_build": ["build_corpus"],
    "batches": ["contract_batch", "pack_sequences"],
    "synthetic": ["SyntheticDataConfig", "SyntheticIterator"],
    "pipeline": ["DataConfig", "TrainIterator", "make_dataset", "make_train_iterator"],
}
__getattr__, __all__ = lazy_exports(__name__, _NAMES)
