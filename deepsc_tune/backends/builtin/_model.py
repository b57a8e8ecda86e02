"""The built-in classifiers: plain :class:`torch.nn.Module` s over a dense cells x genes tensor.

Nothing here knows AnnData, files of data or settings dicts: a model takes ``x`` of shape
``(batch, n_genes)`` (float32, already normalised by :mod:`deepsc_tune.data._prepare`) and returns logits
``(batch, n_classes)``. Every model has two children, ``encoder`` (cells -> embedding) and
``head`` (embedding -> logits), so ``finetune_mode: head_only`` can freeze the encoder
(:meth:`CellClassifier.freeze_encoder`) and a pretrained encoder can be loaded from
``init_checkpoint`` (:func:`load_init_checkpoint`).

:class:`GeneTransformerClassifier` is a small DeepSC/scGPT-like encoder over gene tokens. Its
tokenisation (:func:`tokenize`) runs on the batch tensor on the model's device, so the training
data stays one dense matrix and no collate step or DataLoader is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from deepsc_tune.errors import FinetuneError


class CellClassifier(nn.Module):
    """Base class: ``forward(x) = head(encoder(x))``; the encoder may be frozen."""

    encoder: nn.Module
    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.encoder_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def freeze_encoder(self) -> None:
        """Train the head only (``finetune_mode: head_only``).

        Encoder parameters stop requiring gradients and the encoder stays in eval mode (no
        dropout) even when the model is put in training mode, as in linear probing.
        """
        self.encoder_frozen = True
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> CellClassifier:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self


class MLPClassifier(CellClassifier):
    """Multi-layer perceptron on the expression vector.

    Parameters
    ----------
    n_genes, n_classes
        Input and output widths.
    hidden
        Widths of the hidden layers (``Linear -> ReLU -> Dropout`` each). Empty: the encoder is
        the identity and the model is multinomial logistic regression.
    dropout
        Dropout after every hidden layer.
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        *,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_genes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.encoder = nn.Sequential(*layers) if layers else nn.Identity()
        self.head = nn.Linear(width, n_classes)
        self.n_genes, self.n_classes, self.embedding_dim = n_genes, n_classes, width


class GeneTokens(NamedTuple):
    """Tokens of a batch of cells, all ``(batch, seq_len)``."""

    gene_ids: torch.Tensor  # int64 gene index, ``pad_id`` for padding
    values: torch.Tensor  # float expression value, 0 for padding
    bins: torch.Tensor  # int64 per-cell bin in [0, num_bin); 0 for zero values and padding
    padding_mask: torch.Tensor  # bool, True where the token is padding


def tokenize(x: torch.Tensor, *, seq_len: int, num_bin: int, pad_id: int) -> GeneTokens:
    """Turn dense expression rows into gene tokens.

    For every cell the ``seq_len`` highest expressed genes are kept (ties broken by gene
    index, so the result is deterministic); cells with fewer expressed genes (value > 0) are
    padded with ``pad_id`` and masked. Values are binned per cell like scGPT: the edges are the
    ``linspace(0, 1, num_bin - 1)`` quantiles of that cell's non-zero values, non-zero values get
    bins ``1 .. num_bin - 1`` (``numpy.digitize`` semantics: equal values share a bin) and zeros
    and padding get bin 0.

    Parameters
    ----------
    x
        ``(batch, n_genes)`` float tensor, on any device.
    seq_len
        Tokens per cell (capped at ``n_genes``).
    num_bin
        Number of bins including bin 0 (>= 3).
    pad_id
        Gene id used for padding (usually ``n_genes``).
    """
    if num_bin < 3:
        raise ValueError(f"num_bin must be >= 3, got {num_bin}")
    batch, n_genes = x.shape
    k = min(seq_len, n_genes)
    # A full sort (not topk) because the quantile edges need every non-zero value of the cell.
    values_desc, order = torch.sort(x, dim=1, descending=True, stable=True)
    expressed = values_desc > 0
    n_nz = expressed.sum(dim=1, keepdim=True)  # (batch, 1)

    # Quantile edges of each cell's non-zero values (linear interpolation, numpy's default).
    q = torch.linspace(0, 1, num_bin - 1, device=x.device, dtype=torch.float64)
    pos = q.unsqueeze(0) * (n_nz.clamp(min=1) - 1).to(torch.float64)  # ascending positions
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = (pos - lo).to(x.dtype)
    last = n_nz.clamp(min=1) - 1  # ascending index j is descending index last - j
    v_lo = values_desc.gather(1, last - lo)
    v_hi = values_desc.gather(1, last - hi)
    edges = v_lo + (v_hi - v_lo) * frac  # (batch, num_bin - 1), non-decreasing

    top_values = values_desc[:, :k].contiguous()
    top_expressed = expressed[:, :k]
    bins = torch.searchsorted(edges.contiguous(), top_values, right=True)
    bins = bins.clamp(max=num_bin - 1).masked_fill(~top_expressed, 0)
    gene_ids = order[:, :k].masked_fill(~top_expressed, pad_id)
    values = top_values.masked_fill(~top_expressed, 0.0)
    return GeneTokens(gene_ids, values, bins, ~top_expressed)


class GeneTokenEncoder(nn.Module):
    """Gene-id embedding + binned-value embedding -> transformer -> mean over real tokens."""

    def __init__(
        self,
        n_genes: int,
        *,
        seq_len: int = 256,
        num_bin: int = 51,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_genes, self.seq_len, self.num_bin = n_genes, seq_len, num_bin
        self.pad_id = n_genes
        self.gene_embedding = nn.Embedding(n_genes + 1, d_model, padding_idx=self.pad_id)
        self.value_embedding = nn.Embedding(num_bin, d_model)
        self.embedding_norm = nn.LayerNorm(d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=4 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        # Dropout where BERT puts it (embeddings and the output of each residual branch), not on
        # the attention weights nor inside the feed-forward: on the CPU, torch's dropout masks
        # over (batch, heads, L, L) and (batch, L, 4 d_model) cost more than the layer itself.
        for enc_layer in self.transformer.layers:
            enc_layer.self_attn.dropout = 0.0
            enc_layer.dropout = nn.Identity()

    def tokenize(self, x: torch.Tensor) -> GeneTokens:
        return tokenize(x, seq_len=self.seq_len, num_bin=self.num_bin, pad_id=self.pad_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenize(x)
        h = self.gene_embedding(tokens.gene_ids) + self.value_embedding(tokens.bins)
        h = self.embedding_dropout(self.embedding_norm(h))
        # A cell with no expressed gene would have every key masked (NaN attention): let it
        # attend to its first (padding) token instead; it is then an all-pad cell embedding.
        mask = tokens.padding_mask.clone()
        mask[:, 0] = False
        h = self.transformer(h, src_key_padding_mask=mask)
        keep = (~mask).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(dim=1) / keep.sum(dim=1)


class GeneTransformerClassifier(CellClassifier):
    """A small DeepSC-like transformer over each cell's top expressed genes.

    Parameters
    ----------
    n_genes, n_classes
        Vocabulary (genes of the prepared data) and classes.
    seq_len
        Gene tokens per cell: the ``seq_len`` highest expressed (see :func:`tokenize`).
    num_bin
        Expression bins per cell, bin 0 for zeros (DeepSC/scGPT use 51).
    d_model, n_layers, n_heads, dropout
        Transformer width, depth, attention heads and dropout.
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        *,
        seq_len: int = 256,
        num_bin: int = 51,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = GeneTokenEncoder(
            n_genes,
            seq_len=seq_len,
            num_bin=num_bin,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            dropout=dropout,
        )
        self.head = nn.Linear(d_model, n_classes)
        self.n_genes, self.n_classes, self.embedding_dim = n_genes, n_classes, d_model


@dataclass
class CheckpointLoad:
    """What :func:`load_init_checkpoint` loaded into a model."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""

        def few(keys: list[str]) -> str:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            return f"{len(keys)}" + (f" ({shown})" if keys else "")

        return (
            f"init_checkpoint {self.path}: loaded {len(self.loaded)} tensors; "
            f"missing {few(self.missing)}; unexpected {few(self.unexpected)}; "
            f"shape mismatch {few(self.shape_mismatch)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "loaded": len(self.loaded),
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatch": self.shape_mismatch,
        }


def load_init_checkpoint(model: nn.Module, path: str | Path) -> CheckpointLoad:
    """Load a torch state dict from ``path`` into ``model`` with ``strict=False``.

    Accepts a bare state dict or one nested under ``"state_dict"`` or ``"model"`` (a common
    checkpoint layout); a ``"module."`` prefix from DataParallel is stripped. Tensors whose
    shape differs from the model's (typically a head trained on other classes) are skipped and
    reported, not an error.

    Raises
    ------
    FinetuneError
        If the file cannot be read, is not a state dict, or no tensor matched the model.
    """
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FinetuneError(f"finetune.init_checkpoint: file not found: {p}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise FinetuneError(f"finetune.init_checkpoint: cannot read {p} as a torch state dict ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FinetuneError(f"finetune.init_checkpoint: {p} is not a state dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    mismatch = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    usable = {k: v for k, v in state.items() if k not in mismatch}
    result = model.load_state_dict(usable, strict=False)
    report = CheckpointLoad(
        path=str(p),
        loaded=sorted(k for k in usable if k in own),
        missing=sorted(k for k in result.missing_keys if k not in mismatch),
        unexpected=sorted(result.unexpected_keys),
        shape_mismatch=mismatch,
    )
    if not report.loaded:
        raise FinetuneError(
            f"finetune.init_checkpoint: no tensor of {p} matches the model "
            f"({len(state)} in the file, e.g. {', '.join(sorted(state)[:3]) or 'none'}; "
            f"the model expects e.g. {', '.join(sorted(own)[:3])})"
        )
    return report
