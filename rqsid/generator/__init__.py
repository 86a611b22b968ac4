"""The generative retriever (TIGER-style): user history (+ query) -> the next item's SID, decoded by
constrained beam search over the SID prefix trie. See model.py for the design.

Names are imported lazily (PEP 562) so that `rqsid --help` and the CLI's library commands do not pay
for importing torch."""

from importlib import import_module

_EXPORTS = {
    "beam_search": "beam", "recommend": "beam", "sid_log_probs": "beam",
    "SidVocab": "data", "Sequences": "data", "derive_queries": "data", "embed_queries": "data",
    "sequences_from_interactions": "data",
    "format_table": "evaluate", "head_item_mask": "evaluate", "popularity_ranking": "evaluate",
    "split_metrics": "evaluate",
    "GenerativeRetriever": "model",
    "TrainedGenerator": "train", "evaluate_split": "train", "load_generator": "train",
    "save_generator": "train", "train_generator": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rqsid.generator' has no attribute {name!r}")
    return getattr(import_module(f"rqsid.generator.{_EXPORTS[name]}"), name)
