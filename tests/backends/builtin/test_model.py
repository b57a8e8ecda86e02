"""Models: tokenisation, forward/backward on tiny sizes, head_only, init_checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepsc_tune.backends.builtin._model import (
    GeneTransformerClassifier,
    MLPClassifier,
    load_init_checkpoint,
    tokenize,
)
from deepsc_tune.errors import FinetuneError


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def scgpt_bins(row: np.ndarray, num_bin: int) -> np.ndarray:
    """Reference: scGPT's per-cell quantile binning with numpy (0 stays 0)."""
    out = np.zeros(row.shape, dtype=np.int64)
    nz = row > 0
    if nz.any():
        edges = np.quantile(row[nz], np.linspace(0, 1, num_bin - 1))
        out[nz] = np.digitize(row[nz], edges)
    return out


def test_tokenize_top_genes_padding_and_bins():
    x = torch.tensor(
        [
            [0.0, 3.0, 1.0, 0.0, 2.0, 5.0],  # 4 expressed
            [0.0, 0.0, 7.0, 0.0, 0.0, 0.0],  # 1 expressed -> 3 pads
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # none
        ]
    )
    t = tokenize(x, seq_len=4, num_bin=5, pad_id=6)
    assert t.gene_ids.tolist() == [[5, 1, 4, 2], [2, 6, 6, 6], [6, 6, 6, 6]]
    assert t.values.tolist() == [[5, 3, 2, 1], [7, 0, 0, 0], [0, 0, 0, 0]]
    assert t.padding_mask.tolist() == [
        [False] * 4,
        [False, True, True, True],
        [True] * 4,
    ]
    # Row 0: non-zero values 1,2,3,5; edges = quantiles at 0, 1/3, 2/3, 1 = 1, 2, 3, 5.
    assert t.bins.tolist() == [[4, 3, 2, 1], [4, 0, 0, 0], [0, 0, 0, 0]]


def test_tokenize_matches_numpy_quantile_binning_with_ties():
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.8, size=(16, 50)) * (rng.random((16, 50)) > 0.3)
    x = np.log1p(counts).astype(np.float32)  # many ties, as in real count data
    t = tokenize(torch.from_numpy(x), seq_len=50, num_bin=11, pad_id=50)
    for i in range(x.shape[0]):
        expected = scgpt_bins(x[i].astype(np.float64), 11)
        ids = t.gene_ids[i][~t.padding_mask[i]].numpy()
        assert t.bins[i][~t.padding_mask[i]].numpy().tolist() == expected[ids].tolist()
        assert sorted(ids.tolist()) == np.flatnonzero(x[i] > 0).tolist()
    assert int(t.bins.max()) == 10 and int(t.bins.min()) == 0


def test_tokenize_caps_seq_len_at_n_genes():
    t = tokenize(torch.ones(2, 3), seq_len=256, num_bin=51, pad_id=3)
    assert t.gene_ids.shape == (2, 3)
    assert t.gene_ids.tolist() == [[0, 1, 2]] * 2  # ties broken by gene index
    assert t.bins.tolist() == [[50, 50, 50]] * 2  # one distinct value: the top bin


@pytest.mark.parametrize("model_cls", [MLPClassifier, GeneTransformerClassifier])
def test_forward_backward_tiny(model_cls):
    torch.manual_seed(0)
    kwargs = (
        {"hidden": (8,)}
        if model_cls is MLPClassifier
        else {"seq_len": 5, "num_bin": 7, "d_model": 8, "n_layers": 1, "n_heads": 2}
    )
    model = model_cls(12, 3, **kwargs)
    x = torch.relu(torch.randn(6, 12))
    x[0] = 0  # a cell with no expressed gene must not produce NaN
    logits = model(x)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert set(dict(model.named_children())) == {"encoder", "head"}


def test_mlp_without_hidden_is_linear():
    model = MLPClassifier(10, 4, hidden=())
    assert isinstance(model.encoder, torch.nn.Identity)
    assert model.head.in_features == 10


def test_head_only_freezes_encoder():
    model = GeneTransformerClassifier(10, 3, seq_len=4, num_bin=5, d_model=8, n_layers=1, n_heads=2)
    model.freeze_encoder()
    model.train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.encoder.training and model.head.training  # no dropout in a frozen encoder
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.rand(4, 10)).sum()
    loss.backward()
    opt.step()
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_init_checkpoint_loads_encoder_and_reports(tmp_path):
    torch.manual_seed(0)
    source = MLPClassifier(10, 5, hidden=(8,))
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "pretrained.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    torch.manual_seed(1)
    target = MLPClassifier(10, 3, hidden=(8,))  # other classes: the head does not fit
    report = load_init_checkpoint(target, path)
    assert report.loaded == ["encoder.0.bias", "encoder.0.weight"]
    assert report.shape_mismatch == ["head.bias", "head.weight"]
    assert report.unexpected == ["extra.weight"]
    assert report.missing == []
    assert torch.equal(target.encoder[0].weight, source.encoder[0].weight)
    assert "loaded 2 tensors" in report.summary()


def test_init_checkpoint_errors(tmp_path):
    model = MLPClassifier(10, 3, hidden=(8,))
    with pytest.raises(FinetuneError, match="file not found"):
        load_init_checkpoint(model, tmp_path / "nope.pt")
    path = tmp_path / "other.pt"
    torch.save({"transformer.layer.weight": torch.zeros(2)}, path)
    with pytest.raises(FinetuneError, match="no tensor of .* matches the model"):
        load_init_checkpoint(model, path)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(FinetuneError, match="cannot read"):
        load_init_checkpoint(model, bad)
