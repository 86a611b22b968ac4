"""The generative retriever (TIGER-style): user history (+ query) -> the next item's SID, decoded by
constrained beam search over the SID prefix trie. See model.py for the design."""

from rqsid.generator.beam import beam_search, recommend, sid_log_probs
from rqsid.generator.data import SidVocab, Sequences, derive_queries, embed_queries, sequences_from_interactions
from rqsid.generator.evaluate import format_table, head_item_mask, popularity_ranking, split_metrics
from rqsid.generator.model import GenerativeRetriever
from rqsid.generator.train import TrainedGenerator, evaluate_split, load_generator, save_generator, train_generator

__all__ = [
    "GenerativeRetriever", "SidVocab", "Sequences", "TrainedGenerator", "beam_search", "derive_queries",
    "embed_queries", "evaluate_split", "format_table", "head_item_mask", "load_generator", "popularity_ranking",
    "recommend", "save_generator", "sequences_from_interactions", "sid_log_probs", "split_metrics", "train_generator",
]
