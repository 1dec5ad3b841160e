"""Models exported by ``torch.onnx.export`` import into d2lgru and compute what torch computes.

torch 2.13's default exporter (``dynamo=True``) needs ``onnxscript``; the TorchScript exporter
(``dynamo=False``, deprecated but present) needs nothing beyond ``onnx`` and writes ``nn.GRU``
as one ONNX ``GRU`` node per layer with constant-folded weights, so these tests use it."""

import warnings

import numpy as np
import pytest
import torch

import d2lgru
from d2lgru.checkpoint import load as load_checkpoint
from d2lgru.cli import main
from d2lgru.data import load_data_time_machine
from d2lgru.train import TrainConfig, predict, train

from interop_helpers import assert_close_to_oracle

torch.set_num_threads(1)


def torch_export(module, args, path, input_names, output_names, dynamic_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_an_nn_gru_imports_and_computes_what_torch_computes(tmp_path, layers, bidirectional):
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 6, layers, bidirectional=bidirectional).eval()
    D = 2 if bidirectional else 1
    X, h0 = torch.randn(7, 3, 5), torch.randn(layers * D, 3, 6)
    torch_export(gru, (X, h0), tmp_path / "gru.onnx", ["X", "h0"], ["Y", "h_n"],
                 {"X": {0: "T", 1: "N"}, "h0": {1: "N"}})
    assert main(["import", "--onnx", str(tmp_path / "gru.onnx"), "--out",
                 str(tmp_path / "gru.npz")]) == 0
    params = d2lgru.GRUParams.load(tmp_path / "gru.npz")
    assert params.spec == d2lgru.GRUSpec(5, 6, layers, bidirectional, reset_after=True)
    with torch.no_grad():
        Y, h_n = gru(X, h0)
    mine_Y, mine_h = d2lgru.get_backend("numpy").gru(params.astype(np.float64),
                                                    X.double().numpy(), h0.double().numpy())
    # torch ran float32: held to the float32 output tolerance against d2lgru in float64
    assert_close_to_oracle(Y.numpy(), mine_Y, "Y")
    assert_close_to_oracle(h_n.numpy(), mine_h, "h_n")


class OneHotLM(torch.nn.Module):
    """The book's model in torch: one-hot tokens -> nn.GRU -> nn.Linear."""

    def __init__(self, vocab_size, hidden):
        super().__init__()
        self.vocab_size = vocab_size
        self.gru = torch.nn.GRU(vocab_size, hidden)
        self.head = torch.nn.Linear(hidden, vocab_size)

    def forward(self, tokens, h0):
        Y, h_n = self.gru(torch.nn.functional.one_hot(tokens, self.vocab_size).float(), h0)
        return self.head(Y), h_n


def torch_predict(lm, prefix, num_preds, vocab):
    ids = [vocab[c] for c in prefix]
    h = torch.zeros(1, 1, lm.gru.hidden_size)
    with torch.no_grad():
        if len(ids) > 1:
            _, h = lm(torch.tensor(ids[:-1]).reshape(-1, 1), h)
        out = list(ids)
        for _ in range(num_preds):
            logits, h = lm(torch.tensor([[out[-1]]]), h)
            out.append(int(logits[0, 0].argmax()))
    return "".join(vocab.idx_to_token[i] for i in out)


def test_a_torch_language_model_imports_and_decodes_as_torch_does(tmp_path, data_dir):
    loader, vocab = load_data_time_machine(16, 20, max_tokens=4000, path=data_dir)
    torch.manual_seed(0)
    lm = OneHotLM(len(vocab), 32)
    optimizer = torch.optim.Adam(lm.parameters(), lr=0.02)
    for X, Y in list(loader) * 6:  # enough training that the greedy decode is not one letter
        logits, _ = lm(torch.tensor(X.T), torch.zeros(1, X.shape[0], 32))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)),
                                                 torch.tensor(Y.T).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.eval()
    torch_export(lm, (torch.zeros(3, 2, dtype=torch.long), torch.zeros(1, 2, 32)),
                 tmp_path / "lm.onnx", ["tokens", "h0"], ["logits", "h_n"],
                 {"tokens": {0: "T", 1: "N"}, "h0": {1: "N"}})
    vocab.to_json(tmp_path / "vocab.json")
    assert main(["import", "--onnx", str(tmp_path / "lm.onnx"), "--out", str(tmp_path / "run"),
                 "--vocab", str(tmp_path / "vocab.json")]) == 0
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 0 and ckpt["history"] == []
    decoded = []
    for prefix in ("time traveller", "traveller"):
        mine = predict(prefix, 50, ckpt["model"], ckpt["vocab"], backend="numpy")
        assert mine == torch_predict(lm, prefix, 50, vocab)
        decoded.append(mine)
    assert any(len(set(line[len("traveller"):])) > 3 for line in decoded)
    # an imported model (epoch 0, no history) trains on: `train --resume`
    resumed = train(TrainConfig(epochs=1, data=str(data_dir)), resume=tmp_path / "run")
    assert resumed.epoch == 1 and len(load_checkpoint(tmp_path / "run")["history"]) == 1
