"""`d2lgru.gates.gate_values` against the cell equations, and `d2lgru gates` as a user runs it."""

import gzip
import json

import numpy as np
import pytest

from d2lgru.backends import get_backend
from d2lgru.errors import InvalidArgumentError
from d2lgru.gates import gate_values
from d2lgru.spec import GRUSpec
from d2lgru.conformance import CHECKS, tolerance
from helpers import random_params
from test_cli import SMALL, assert_one_line_error, run


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def recompute(params, X, h0, gates):
    """Each layer and direction written out from the spec's equations: check that ``Z`` and
    ``R`` are the gates of the input and the previous state, and rebuild the output from them,
    ``H_t = Z * H_{t-1} + (1 - Z) * H~`` (reset-before ``H~ = tanh(x W_xh + b_xh + (R * H)
    W_hh + b_hh)``, reset-after ``tanh(x W_xh + b_xh + R * (H W_hh + b_hh))``)."""
    spec = params.spec
    D, inp = spec.num_directions, X
    for l in range(spec.num_layers):
        outs = []
        for d in range(D):
            c = params.cell(l, d)
            Z, R = gates["Z"][l][d], gates["R"][l][d]
            h, Y = h0[l * D + d], np.empty(Z.shape)
            for t in (range(len(X)) if d == 0 else range(len(X) - 1, -1, -1)):
                x = inp[t]
                np.testing.assert_allclose(Z[t], sigmoid(x @ c.W_x[0] + c.b_x[0] + h @ c.W_h[0]
                                                         + c.b_h[0]),
                                           **CHECKS["float64_one_product"].kw)
                np.testing.assert_allclose(R[t], sigmoid(x @ c.W_x[1] + c.b_x[1] + h @ c.W_h[1]
                                                         + c.b_h[1]),
                                           **CHECKS["float64_one_product"].kw)
                if spec.reset_after:
                    cand = np.tanh(x @ c.W_x[2] + c.b_x[2] + R[t] * (h @ c.W_h[2] + c.b_h[2]))
                else:
                    cand = np.tanh(x @ c.W_x[2] + c.b_x[2] + (R[t] * h) @ c.W_h[2] + c.b_h[2])
                h = Z[t] * h + (1 - Z[t]) * cand
                Y[t] = h
            outs.append(Y)
        inp = np.concatenate(outs, axis=-1)
    return inp


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset-before", "reset-after"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_gates_rebuild_the_oracles_output(reset_after, layers, bidirectional):
    spec = GRUSpec(5, 4, layers, bidirectional, reset_after)
    params = random_params(spec)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((7, 3, 5))
    h0 = rng.standard_normal((layers * spec.num_directions, 3, 4)) * 0.5
    gates = gate_values(params, X, h0)
    Y, h_n = get_backend("numpy").gru(params, X, h0)
    assert all(g.shape == (7, 3, 4) and g.dtype == np.float64
               for key in "ZR" for row in gates[key] for g in row)
    np.testing.assert_allclose(recompute(params, X, h0, gates), Y, **CHECKS["float64_gates_abs"].kw)
    np.testing.assert_allclose(gates["Y"], Y, **CHECKS["float64_gates_abs"].kw)
    np.testing.assert_allclose(gates["h_n"], h_n, **CHECKS["float64_gates_abs"].kw)


def test_float32_params_give_float64_gates():
    params = random_params(GRUSpec(3, 2), dtype=np.float32)
    X = np.random.default_rng(0).standard_normal((4, 1, 3)).astype(np.float32)
    gates = gate_values(params, X)
    assert gates["Z"][0][0].dtype == np.float64
    Y64, _ = get_backend("numpy").gru(params.astype(np.float64), X.astype(np.float64))
    np.testing.assert_allclose(gates["Y"], Y64, **CHECKS["float64_gates_abs"].kw)


@pytest.mark.parametrize("ablation,pinned", [("reset-only", ("Z", 0.0)),
                                             ("update-only", ("R", 1.0))])
def test_an_ablated_gate_is_pinned(ablation, pinned):
    params = random_params(GRUSpec(3, 2, gates=ablation))
    gates = gate_values(params, np.ones((4, 1, 3)))
    key, value = pinned
    assert np.all(gates[key][0][0] == value)
    assert gates["live"] == {"z": key != "Z", "r": key != "R"}


def test_the_plain_rnn_has_no_gates():
    with pytest.raises(InvalidArgumentError, match="no update or reset gate"):
        gate_values(random_params(GRUSpec(3, 2, gates="none")), np.ones((4, 1, 3)))


# -- the command -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_dir):
    """Tiny runs: two layers of the full GRU, a reset-only ablation and the plain RNN."""
    root = tmp_path_factory.mktemp("gates")
    corpus = root / "no-z.txt"  # a corpus without the letter z: a vocabulary that lacks it
    corpus.write_text("The Time Traveller (for so it will be convenient to speak of him)\n" * 20)
    runs = {"two-layer": ["--layers", "2"], "reset-only": ["--gates", "reset-only"],
            "rnn": ["--cell", "rnn"], "no-z": ["--data", str(corpus)]}
    for name, extra in runs.items():
        run("train", "--epochs", "1", *SMALL, *extra, "--out", str(root / name), "--quiet",
            data_dir=data_dir, check=True)
    return root


def test_gates_writes_a_figure_and_values_of_the_right_shapes(checkpoints, tmp_path):
    png, js = tmp_path / "gates.png", tmp_path / "gates.json"
    proc = run("gates", "--checkpoint", str(checkpoints / "two-layer"), "--text", "The Time!",
               "--out", str(png), "--json", str(js), check=True)
    assert "NumPy float64 oracle" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(js.read_text())
    assert record["text"] == "the time " and len(record["tokens"]) == 9
    assert [(c["layer"], c["direction"]) for c in record["cells"]] == [(0, 0), (1, 0)]
    for cell in record["cells"]:
        for key in "ZR":
            assert np.asarray(cell[key]).shape == (9, 16)
            assert sorted(cell[f"{key.lower()}_unit_order"]) == list(range(16))
    assert record["backend_check"]["max_abs_diff_Y"] < tolerance("float32", "output").atol
    assert "oracle" in record["source"]


def test_gate_values_named_gz_are_the_same_json_gzip_compressed(checkpoints, tmp_path):
    plain, packed = tmp_path / "gates.json", tmp_path / "gates.json.gz"
    for js in (plain, packed):
        run("gates", "--checkpoint", str(checkpoints / "two-layer"), "--text", "The Time!",
            "--out", str(js) + ".png", "--json", str(js), check=True)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()


def test_an_ablation_draws_the_gate_it_has_and_says_the_other_is_pinned(checkpoints, tmp_path):
    js = tmp_path / "gates.json"
    run("gates", "--checkpoint", str(checkpoints / "reset-only"), "--out", str(tmp_path / "g.png"),
        "--json", str(js), check=True)
    record = json.loads(js.read_text())
    assert record["cells"][0]["Z"] is None and record["cells"][0]["R"] is not None
    assert "update gate Z pinned at 0" in record["pinned"]["z"]


def test_gates_out_naming_a_directory_is_one_line_naming_only_it(checkpoints, tmp_path):
    target = tmp_path / "g.png"
    target.mkdir()
    assert_one_line_error(run("gates", "--checkpoint", str(checkpoints / "two-layer"), "--out",
                              str(target)),
                          f"cannot write {target}: it is a directory; give a file path")
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"] and not any(target.iterdir())


def test_gates_refusals_are_one_line(checkpoints, tmp_path):
    out = ["--out", str(tmp_path / "g.png")]
    ckpt = ["--checkpoint", str(checkpoints / "two-layer")]
    assert_one_line_error(run("gates", "--checkpoint", str(checkpoints / "rnn"), *out),
                          "plain RNN has no update or reset gate")
    assert_one_line_error(run("gates", *ckpt, "--text", "?! 42", *out), "has no letters")
    assert_one_line_error(run("gates", *ckpt, "--text", "", *out), "has no letters")
    assert_one_line_error(run("gates", *ckpt, "--text", "ab" * 501, *out),
                          "1,002 tokens", "at most 1,000")
    assert_one_line_error(run("gates", "--checkpoint", str(checkpoints / "no-z"), "--text",
                              "the zebra", *out), "tokens the model never saw", "'z'")
    assert_one_line_error(run("gates", "--checkpoint", str(tmp_path / "nope"), *out),
                          "not a d2lgru checkpoint")
    assert_one_line_error(run("gates", *ckpt, "--backend", "caffe", *out), "unknown backend")
    assert not (tmp_path / "g.png").exists()


def test_gates_replaces_an_existing_file_only_with_overwrite(checkpoints, tmp_path):
    """A figure or values path that names an existing file -- the user's, or one of the
    checkpoint's own -- is refused and left as it was; --overwrite replaces it."""
    ckpt = checkpoints / "two-layer"
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    state = (ckpt / "state.json").read_bytes()
    for flags, named in ((["--out", str(precious)], "--out"),
                         (["--out", str(ckpt / "state.json")], "--out"),
                         (["--out", str(tmp_path / "g.png"), "--json", str(precious)], "--json")):
        assert_one_line_error(run("gates", "--checkpoint", str(ckpt), *flags),
                              f"{named} ", "already exists", "--overwrite")
    assert precious.read_text() == "precious" and (ckpt / "state.json").read_bytes() == state
    assert_one_line_error(run("gates", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"),
                              "--json", str(tmp_path / "x")), "name the same file")
    assert_one_line_error(run("gates", "--checkpoint", str(ckpt), "--out", ""), "--out is empty")
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "x").exists()
    figure = tmp_path / "figure.png"  # a figure's name: --out's suffix says the format
    figure.write_text("precious")
    assert_one_line_error(run("gates", "--checkpoint", str(ckpt), "--out", str(figure)),
                          "--out ", "already exists", "--overwrite")
    run("gates", "--checkpoint", str(ckpt), "--out", str(figure), "--overwrite", check=True)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nested = tmp_path / "new" / "dir" / "g.png"  # missing folders are made, as export makes them
    run("gates", "--checkpoint", str(ckpt), "--out", str(nested), check=True)
    assert nested.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figures_format_follows_its_suffix(checkpoints, tmp_path):
    """`--out gates.jpg` held PNG bytes; now each suffix matplotlib writes gets its format, a
    name without one PNG, and any other suffix is refused before the work, listing the valid."""
    from d2lgru._io import figure_formats

    ckpt = ["--checkpoint", str(checkpoints / "two-layer"), "--text", "the time"]
    magic = {"g.jpg": b"\xff\xd8\xff", "g.JPEG": b"\xff\xd8\xff", "g.pdf": b"%PDF",
             "g.svg": b"<?xml", "g": b"\x89PNG\r\n\x1a\n"}
    for name, start in magic.items():
        run("gates", *ckpt, "--out", str(tmp_path / name), check=True)
        assert (tmp_path / name).read_bytes().startswith(start), name
    formats = figure_formats()
    assert {"png", "pdf", "svg", "jpg", "jpeg"} <= set(formats) and "pgf" not in formats
    for name in ("g.txt", "g.pgf", "g.png.bak"):
        assert_one_line_error(run("gates", *ckpt, "--out", str(tmp_path / name)),
                              f"--out {tmp_path / name} ends in .{name.rsplit('.', 1)[1]}, a "
                              f"format d2lgru cannot draw; give a name ending in "
                              f"{', '.join('.' + f for f in formats)}")
        assert not (tmp_path / name).exists()
