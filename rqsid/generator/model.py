"""The generative retriever: a causal transformer over a user's items + an autoregressive SID head.

Design (and why):
- One transformer position per history ITEM, not per SID token. An item's input vector is the sum of
  its SID token embeddings (levels have separate vocabularies, so a token also says its level;
  pruned SIDs simply have fewer terms) plus a learned position embedding (and, optionally, a hashed
  user-bucket embedding). Sequences are 5x shorter than TIGER's token-level encoder input, which is
  what makes training fit 2 CPU cores.
- The encoder is causal, so position t sees items 0..t only, and the loss is taken at EVERY position
  (prefix 0..t predicts item t+1, as in SASRec): about 7 targets per Beauty user per pass, not 1.
  Raw item ids are never features (P5's ids encode time).
- The SID head decodes the next item token by token from the position's hidden state h:
      s_0 = LN(h [+ W q])            q: the projected 384-d query embedding (search variant)
      s_j = LN(s_{j-1} + e(tok_{j-1}) + depth_j)       teacher forcing during training
      logits_j = LN(s_j + MLP(s_j)) . E^T + b          E: token embeddings, tied with the input
  Logits are restricted to the tokens the prefix trie allows after tok_<j (a constrained softmax),
  in training as in beam search, so the model is trained on exactly the decisions it makes when
  decoding; this also restricts each step to the right level's vocabulary, including after a
  pruned layer-2 token. The SID ends with the end token (eos), which the head predicts like any token.
  Cost: logits are only computed against the tokens that occur at that depth, and steps where the
  trie leaves a single choice (probability 1 under the constrained softmax) are skipped in training.
"""

from __future__ import annotations

import torch
from torch import nn

from rqsid.config import GeneratorConfig
from rqsid.generator.data import SidVocab


class GenerativeRetriever(nn.Module):
    def __init__(self, vocab: SidVocab, cfg: GeneratorConfig, query_dim: int = 0, item_text: torch.Tensor | None = None):
        super().__init__()
        d = cfg.d_model
        self.vocab_size = vocab.vocab_size
        self.max_history = cfg.max_history
        self.sid_len = vocab.max_len
        self.pad = vocab.vocab_size  # embedding row of padding tokens (stays zero)
        tokens = torch.as_tensor(vocab.tokens)
        item_input = torch.where((tokens >= 0) & (tokens != vocab.eos), tokens, torch.full_like(tokens, self.pad))
        self.register_buffer("item_tokens", tokens, persistent=True)
        # tokens that occur at each SID depth: a step's softmax only ever involves these
        self.depth_candidates = [torch.unique(tokens[:, j][tokens[:, j] >= 0]) for j in range(tokens.shape[1])]
        self.register_buffer("item_input_tokens", item_input, persistent=False)

        self.token_emb = nn.Embedding(vocab.vocab_size + 1, d, padding_idx=self.pad)
        self.pos_emb = nn.Embedding(cfg.max_history, d)
        self.user_emb = nn.Embedding(cfg.user_buckets, d) if cfg.user_buckets > 1 else None
        self.input_norm = nn.LayerNorm(d)
        self.input_drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, dim_feedforward=cfg.ffn_mult * d, dropout=cfg.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d)
        self.query_proj = nn.Linear(query_dim, d) if query_dim else None
        # optional item-vector parts beside the SID-token sum (see item_vectors)
        self.n_items = len(tokens)
        if cfg.item_text and item_text is None:
            raise ValueError("generator.item_text needs the items' text embeddings")
        self.register_buffer("item_text", item_text.float() if cfg.item_text else None, persistent=True)
        self.text_proj = nn.Linear(item_text.shape[1], d, bias=False) if cfg.item_text else None
        self.id_emb = nn.Embedding(self.n_items, d) if cfg.item_ids else None
        self.id_dropout = cfg.item_id_dropout

        self.head_in_norm = nn.LayerNorm(d)
        self.head_step_norm = nn.LayerNorm(d)
        self.depth_emb = nn.Embedding(self.sid_len, d)
        self.head_mlp = nn.Sequential(nn.Linear(d, cfg.head_mult * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.head_mult * d, d))
        self.head_out_norm = nn.LayerNorm(d)
        self.out_bias = nn.Parameter(torch.zeros(vocab.vocab_size))
        self.item_out_norm = nn.LayerNorm(d)
        self.register_buffer("causal_mask", torch.triu(torch.full((cfg.max_history, cfg.max_history), float("-inf")), 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for emb in (self.token_emb, self.pos_emb, self.depth_emb, self.user_emb, self.id_emb):
            if emb is None:
                continue
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.token_emb.weight[self.pad].zero_()

    # ------------------------------------------------------------ encoder

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(..., ) item rows (-1 = padding) -> (..., d): the sum of their SID token embeddings
        [+ a projection of their text embedding] [+ a learned per-item embedding]."""
        safe = items.clamp_min(0)
        vec = self.token_emb(self.item_input_tokens[safe]).sum(dim=-2)
        if self.text_proj is not None:
            vec = vec + self.text_proj(self.item_text[safe])
        if self.id_emb is not None:
            ids = self.id_emb(safe)
            if self.training and self.id_dropout > 0:
                ids = ids * (torch.rand(ids.shape[:-1] + (1,)) >= self.id_dropout)
            vec = vec + ids
        return vec * (items >= 0).unsqueeze(-1)

    def all_item_vectors(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.n_items))

    def item_logits(self, hidden: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """(N, d) hidden states -> (N, n_items) item-level scores against the (tied) item vectors."""
        vectors = self.all_item_vectors() if vectors is None else vectors
        return self.item_out_norm(hidden) @ vectors.T

    def encode(self, history: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P) left-aligned item rows (-1 after the history) -> (B, P, d) causal hidden states."""
        P = history.shape[1]
        x = self.item_vectors(history) + self.pos_emb.weight[:P]
        if self.user_emb is not None and users is not None:
            x = x + self.user_emb(users).unsqueeze(1)
        x = self.input_drop(self.input_norm(x))
        # right padding + a causal mask: real positions never attend to padding
        h = self.encoder(x, mask=self.causal_mask[:P, :P], is_causal=True)
        return self.final_norm(h)

    # ------------------------------------------------------------ SID head

    def context(self, hidden: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """A position's hidden state, plus the projected query vector when the model is query-conditioned."""
        if self.query_proj is not None and query is not None:
            hidden = hidden + self.query_proj(query)
        return hidden

    def head_start(self, context: torch.Tensor) -> torch.Tensor:
        """Initial SID-head state from a position's context (see `context`)."""
        return self.head_in_norm(context + self.depth_emb.weight[0])

    def head_advance(self, state: torch.Tensor, token: torch.Tensor, depth: int) -> torch.Tensor:
        """State after emitting `token` at `depth` (0-based) -> the state that predicts depth+1."""
        return self.head_step_norm(state + self.token_emb(token) + self.depth_emb.weight[depth + 1])

    def head_logits(self, state: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Next-token logits: over the whole vocabulary, or over the tokens that occur at `depth`."""
        out = self.head_out_norm(state + self.head_mlp(state))
        if depth is None:
            return out @ self.token_emb.weight[: self.vocab_size].T + self.out_bias
        cand = self.depth_candidates[depth]
        return out @ self.token_emb.weight[cand].T + self.out_bias[cand]
