"""The language model as one ONNX graph, and ONNX GRU models read back into d2lgru.

Export (:func:`export_checkpoint`, ``d2lgru export``): ``tokens [T, N] int64`` (time-major, as
``backend.gru``) and ``h0 [L*D, N, H]`` in; ``logits [T, N, V]`` and ``h_n [L*D, N, H]`` out,
with dynamic ``T`` and ``N``. Tokens pick rows of an identity matrix (``Gather``: the one-hot
input), each layer is one ONNX ``GRU`` node (``linear_before_reset`` from the cell variant,
``direction="bidirectional"`` for two directions, ``Transpose`` + ``Reshape`` from
``[T, D, N, H]`` to the next layer's ``[T, N, D*H]``), and the head is ``MatMul`` + ``Add``.
The weights come from :meth:`GRUParams.to_onnx`, the only place that knows ONNX's gate order.
The model's ``metadata_props`` carry the vocabulary, the spec, the run's configuration and
history and the d2lgru version, so importing an exported model gives back its checkpoint.

Import (:func:`read_onnx`, ``d2lgru import``): the ``GRU`` nodes of the main graph become the
layers of a :class:`GRUParams` (through :meth:`GRUParams.from_onnx`), stacked in graph order;
a ``MatMul``/``Gemm`` (+ ``Add``) after the last one is the head, a ``OneHot`` or ``Gather``
of an identity matrix before the first one is the token input. Anything d2lgru's GRU cannot
compute is refused with one sentence naming it.

The ``onnx`` package is imported only here, and only when a function is called.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ._io import write_atomic
from .errors import ExtraNotInstalledError, InvalidArgumentError, pip_extra
from .model import LMParams
from .spec import GRUParams, GRUSpec

FORMAT_ONNX = "d2lgru.ONNXLanguageModel/1"
#: the opset and IR version the export is written in (onnxruntime 1.14+ runs them)
OPSET = 17
IR_VERSION = 8
#: metadata_props keys of an exported model
META_FORMAT, META_VERSION, META_SPEC = "d2lgru.format", "d2lgru.version", "d2lgru.spec"
META_VOCAB, META_CONFIG, META_HISTORY = "d2lgru.vocab", "d2lgru.config", "d2lgru.history"
#: operators that move or relabel values without computing (between stacked GRUs, around the head)
_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Dropout"}


class OnnxImportError(InvalidArgumentError):
    """An ONNX model that d2lgru cannot read as a GRU (language model)."""


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError as exc:
        raise ExtraNotInstalledError(f"ONNX export and import need the onnx package ({exc}); "
                                     + pip_extra("onnx")) from None
    return onnx


# -- export --------------------------------------------------------------------------------
def build_model(model: LMParams, vocab=None, *, config=None, history=None):
    """The :class:`onnx.ModelProto` of ``model`` (float32), checked by ``onnx.checker``."""
    from . import __version__
    onnx = _onnx()
    h, TP = onnx.helper, onnx.TensorProto
    spec = model.spec
    if spec.gates != "both":
        raise InvalidArgumentError(
            f"ONNX's GRU operator computes both gates, so a {spec.describe()} (the book's "
            f"exercise) has no ONNX form; export a model trained with --gates both and --cell gru")
    V, H, D, L = model.vocab_size, spec.hidden_size, spec.num_directions, spec.num_layers

    def init(name, array):
        return onnx.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name)

    inits = [init("onehot.eye", np.eye(V)), init("head.W_hq", model.W_hq),
             init("head.b_q", model.b_q),
             onnx.numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape.T_N_DH"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "slice.axis")]
    nodes = [h.make_node("Gather", ["onehot.eye", "tokens"], ["x0"], axis=0, name="one_hot")]
    x, states = "x0", []
    for layer in range(L):
        ox = model.gru.to_onnx(layer)
        p = f"gru.l{layer}."
        inits += [init(p + "W", ox["W"]), init(p + "R", ox["R"]), init(p + "B", ox["B"]),
                  onnx.numpy_helper.from_array(np.array([layer * D], np.int64), p + "h0_start"),
                  onnx.numpy_helper.from_array(np.array([(layer + 1) * D], np.int64), p + "h0_end")]
        nodes += [
            h.make_node("Slice", ["h0", p + "h0_start", p + "h0_end", "slice.axis"], [p + "h0"],
                        name=p + "h0"),
            h.make_node("GRU", [x, p + "W", p + "R", p + "B", "", p + "h0"], [p + "Y", p + "Y_h"],
                        name=p + "gru", hidden_size=H, direction=ox["direction"],
                        linear_before_reset=ox["linear_before_reset"]),
            # [T, D, N, H] -> [T, N, D, H] -> [T, N, D*H]: forward features, then backward
            h.make_node("Transpose", [p + "Y"], [p + "Y_tndh"], perm=[0, 2, 1, 3], name=p + "tndh"),
            h.make_node("Reshape", [p + "Y_tndh", "shape.T_N_DH"], [p + "out"], name=p + "out")]
        x = p + "out"
        states.append(p + "Y_h")
    nodes += [h.make_node("Concat", states, ["h_n"], axis=0, name="h_n"),
              h.make_node("MatMul", [x, "head.W_hq"], ["head.xw"], name="head_matmul"),
              h.make_node("Add", ["head.xw", "head.b_q"], ["logits"], name="head_add")]
    graph = h.make_graph(
        nodes, "d2lgru_language_model",
        [h.make_tensor_value_info("tokens", TP.INT64, ["T", "N"]),
         h.make_tensor_value_info("h0", TP.FLOAT, [L * D, "N", H])],
        [h.make_tensor_value_info("logits", TP.FLOAT, ["T", "N", V]),
         h.make_tensor_value_info("h_n", TP.FLOAT, [L * D, "N", H])],
        inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                         producer_name="d2lgru", producer_version=__version__,
                         doc_string=f"d2lgru language model: {spec.describe()}, vocabulary {V}")
    proto.ir_version = IR_VERSION
    meta = {META_FORMAT: FORMAT_ONNX, META_VERSION: __version__,
            META_SPEC: json.dumps(spec.to_dict(), sort_keys=True)}
    if vocab is not None:
        meta[META_VOCAB] = json.dumps(vocab.to_dict(), ensure_ascii=False)
    if config is not None:  # without the corpus' local path; its SHA-1 stays
        meta[META_CONFIG] = json.dumps(dataclasses.asdict(dataclasses.replace(config, data=None)),
                                       sort_keys=True)
    if history is not None:
        meta[META_HISTORY] = json.dumps(list(history))
    h.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_checkpoint(checkpoint, path) -> Path:
    """``d2lgru export``: the checkpoint directory's model, vocabulary, configuration and
    history as one ONNX file at ``path`` (written atomically)."""
    from .checkpoint import load
    ckpt = load(checkpoint)
    proto = build_model(ckpt["model"], ckpt["vocab"], config=ckpt["config"],
                        history=ckpt["history"])
    data = proto.SerializeToString()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: f.write(data))


# -- import --------------------------------------------------------------------------------
@dataclasses.dataclass
class OnnxGRU:
    """What :func:`read_onnx` found: the GRU, and for a language model its head and vocabulary
    (``None`` otherwise), the run's configuration and history when d2lgru exported it."""

    gru: GRUParams
    head: tuple | None = None         # (W_hq [D*H, V], b_q [V])
    vocab: object = None              # d2lgru.data.Vocab
    config: dict | None = None
    history: list = dataclasses.field(default_factory=list)
    why_not_lm: str | None = None     # why this is not a language model (None: it is one)

    @property
    def lm(self) -> LMParams | None:
        return None if self.why_not_lm else LMParams(self.gru, *self.head)


class _Graph:
    """The main graph's constants, producers and consumers, and the checks of one GRU node."""

    def __init__(self, onnx, proto, path):
        self.onnx, self.path, self.graph = onnx, path, proto.graph
        self.const = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.producer, self.consumers = {}, {}
        for node in self.graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.const[node.output[0]] = onnx.numpy_helper.to_array(a.t)
                    elif a.name.startswith("value_") and a.name != "value_string":
                        self.const[node.output[0]] = np.array(onnx.helper.get_attribute_value(a))
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def fail(self, what: str):
        raise OnnxImportError(f"{self.path}: {what}")

    def weight(self, node, index: int, what: str):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            return None
        if name not in self.const:
            self.fail(f"GRU node {node.name or node.output[0]!r} takes its {what} {name!r} from "
                      f"a computation, not a constant; d2lgru imports weights stored as "
                      f"initializers (export with constant folding)")
        return np.asarray(self.const[name])

    def gru_layer(self, node) -> GRUParams:
        label = repr(node.name or node.output[0])
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
        unsupported = [
            (direction not in ("forward", "bidirectional"),
             f"direction {direction!r} (d2lgru's directions are forward and bidirectional)"),
            (bool(acts) and [a.lower() for a in acts] != ["sigmoid", "tanh"] * (len(acts) // 2),
             f"activations {acts} (d2lgru's GRU uses Sigmoid and Tanh)"),
            ("clip" in attrs, f"clip={attrs.get('clip')} (d2lgru's GRU does not clip)"),
            (attrs.get("layout", 0) != 0, "layout=1 (batch-major; d2lgru reads time-major "
                                          "layout=0 GRU nodes)"),
            (len(node.input) > 4 and bool(node.input[4]),
             "sequence_lens (d2lgru's GRU runs every sequence to full length)")]
        for bad, what in unsupported:
            if bad:
                self.fail(f"GRU node {label} uses {what}, which d2lgru cannot import")
        W, R, B = (self.weight(node, i, what) for i, what in ((1, "W"), (2, "R"), (3, "B")))
        # from_onnx reads the directions off W's first dimension; the attribute must agree
        # (onnxruntime refuses a node where they differ), or the import changes the model
        needed = 2 if direction == "bidirectional" else 1
        if W is not None and W.ndim >= 1 and W.shape[0] != needed:
            self.fail(f"GRU node {label} has direction {direction!r} but its W has first "
                      f"dimension {W.shape[0]} (W [D, 3H, I]: forward and reverse need D = 1, "
                      f"bidirectional D = 2)")
        if len(node.input) > 5 and node.input[5] in self.const and \
                np.any(self.const[node.input[5]]):
            self.fail(f"GRU node {label} has a constant non-zero initial_h; d2lgru's parameters "
                      f"hold no initial state (make initial_h a graph input or zero)")
        try:
            layer = GRUParams.from_onnx(W, R, B, linear_before_reset=attrs.get("linear_before_reset", 0))
        except InvalidArgumentError as exc:
            self.fail(f"GRU node {label}: {exc}")
        if "hidden_size" in attrs and attrs["hidden_size"] != layer.spec.hidden_size:
            self.fail(f"GRU node {label} says hidden_size={attrs['hidden_size']} but its R holds "
                      f"{layer.spec.hidden_size} units")
        return layer.astype(np.float32) if layer.dtype != np.float32 else layer

    def source(self, name: str, skip=_LAYOUT_OPS):
        """The node that computes ``name``, looking through layout-only operators."""
        node = self.producer.get(name)
        while node is not None and node.op_type in skip:
            node = self.producer.get(node.input[0])
        return node

    def consumer(self, name: str):
        """The one node that uses ``name``, looking through layout-only operators."""
        users = self.consumers.get(name, [])
        while len(users) == 1 and users[0].op_type in _LAYOUT_OPS:
            users = self.consumers.get(users[0].output[0], [])
        return users[0] if len(users) == 1 else None


def read_onnx(path, *, vocab=None) -> OnnxGRU:
    """The GRU (and, when the graph has one, the language model) in the ONNX file at
    ``path``. ``vocab`` (a :class:`~d2lgru.data.Vocab`) stands in for a model without
    d2lgru's vocabulary metadata."""
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors share no base class
        raise OnnxImportError(f"{path} is not a readable ONNX model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    g = _Graph(onnx, proto, path)
    others = sorted({n.op_type for n in g.graph.node if n.op_type in ("LSTM", "RNN", "Scan", "Loop")})
    if others:
        g.fail(f"the graph holds {', '.join(others)} node(s); d2lgru imports GRU models only")
    grus = [n for n in g.graph.node if n.op_type == "GRU"]
    if not grus:
        g.fail("the graph holds no ONNX GRU node")
    layers = [g.gru_layer(n) for n in grus]
    for i in range(1, len(grus)):
        below, spec, prev = g.source(grus[i].input[0]), layers[i].spec, layers[i - 1].spec
        if below is not grus[i - 1] or g.producer[grus[i].input[0]] is grus[i - 1]:
            g.fail(f"GRU node {i} does not read GRU node {i - 1}'s output Y through a layout "
                   f"change ([T, D, N, H] -> [T, N, D*H]); d2lgru imports stacked GRUs only")
        if (spec.input_size, spec.hidden_size, spec.bidirectional, spec.reset_after) != \
                (prev.output_size, prev.hidden_size, prev.bidirectional, prev.reset_after):
            g.fail(f"GRU node {i} ({spec.describe()}) does not stack on node {i - 1} "
                   f"({prev.describe()}); d2lgru's layers share hidden size, directions and cell")
    first = layers[0].spec
    spec = GRUSpec(first.input_size, first.hidden_size, len(layers), first.bidirectional,
                   first.reset_after)
    gru = GRUParams(spec, [layer.cells[0] for layer in layers])
    found = OnnxGRU(gru)
    meta = {p.key: p.value for p in proto.metadata_props}
    found.why_not_lm = _find_lm(g, grus, found, meta, vocab)
    return found


def _find_lm(g: _Graph, grus, found: OnnxGRU, meta: dict, vocab) -> str | None:
    """Fill ``found``'s head, vocabulary, config and history; return why it is no language
    model (None when it is one)."""
    from .data import Vocab
    spec = found.gru.spec
    token_input = g.source(grus[0].input[0], _LAYOUT_OPS | {"Cast"})
    if token_input is None or token_input.op_type not in ("OneHot", "Gather"):
        return "its first GRU does not read one-hot tokens (a OneHot or Gather node)"
    if token_input.op_type == "Gather":
        table = g.const.get(token_input.input[0])
        if table is None or not np.array_equal(table, np.eye(spec.input_size)):
            return ("its first GRU reads an embedding table (a Gather of learned rows), and "
                    "d2lgru's language model reads one-hot tokens")
    head = g.consumer(grus[-1].output[0])
    if head is None or head.op_type not in ("MatMul", "Gemm"):
        return "no dense head (MatMul or Gemm) reads its last GRU's output"
    weight = g.const.get(head.input[1]) if len(head.input) > 1 else None
    if weight is None:
        return "its head's weight is not a constant"
    W_hq, b_q = np.asarray(weight, np.float32), None
    if head.op_type == "Gemm":
        attrs = {a.name: g.onnx.helper.get_attribute_value(a) for a in head.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return "its head Gemm has transA, alpha or beta set"
        W_hq = W_hq.T if attrs.get("transB", 0) else W_hq
        if len(head.input) > 2 and head.input[2]:
            b_q = g.const.get(head.input[2])
            if b_q is None:
                return "its head's bias is not a constant"
    else:
        add = g.consumer(head.output[0])
        if add is not None and add.op_type == "Add":
            other = [n for n in add.input if n != head.output[0]]
            b_q = g.const.get(other[0]) if len(other) == 1 else None
    V = W_hq.shape[-1] if W_hq.ndim == 2 else -1
    if W_hq.shape != (spec.output_size, spec.input_size):
        return (f"its head's weight {W_hq.shape} does not map the GRU's {spec.output_size} "
                f"features to its {spec.input_size} one-hot inputs")
    b_q = np.zeros(V, np.float32) if b_q is None else np.asarray(b_q, np.float32).reshape(-1)
    if b_q.shape != (V,):
        return f"its head's bias has shape {b_q.shape}, expected {(V,)}"
    found.head = (np.ascontiguousarray(W_hq), b_q)
    try:
        if vocab is None and META_VOCAB in meta:
            vocab = Vocab.from_dict(json.loads(meta[META_VOCAB]))
        found.config = json.loads(meta[META_CONFIG]) if META_CONFIG in meta else None
        found.history = json.loads(meta[META_HISTORY]) if META_HISTORY in meta else []
    except ValueError as exc:
        g.fail(f"its d2lgru metadata is malformed ({exc})")
    if vocab is None:
        return "it carries no vocabulary (no d2lgru.vocab metadata; give --vocab vocab.json)"
    if len(vocab) != V:
        g.fail(f"the vocabulary has {len(vocab)} tokens but the model's head has {V} outputs")
    found.vocab = vocab
    return None


def _read_vocab(path):
    """``--vocab``'s vocabulary; a path that is no vocab.json is one sentence naming the
    option."""
    from .data import Vocab
    try:
        return Vocab.from_json(path)
    except OSError as exc:
        why = "does not exist" if isinstance(exc, FileNotFoundError) else (
            f"cannot be read ({exc.strerror or exc})")
        raise InvalidArgumentError(f"--vocab {path} {why}; give the vocab.json of the model's "
                                   f"vocabulary (a d2lgru checkpoint directory holds one)") from None
    except InvalidArgumentError as exc:  # not JSON, or not a vocabulary's
        raise InvalidArgumentError(f"--vocab {exc}") from None


def import_onnx(path, out, *, vocab_path=None, format=None, overwrite: bool = False) -> str:
    """``d2lgru import``: a language model becomes a checkpoint directory at ``out`` (or, when
    ``out`` ends in ``.npz``/``.safetensors``, an :class:`LMParams` file); a GRU without head or
    vocabulary becomes a :class:`GRUParams` file, which ``out`` must then name. Returns one
    sentence saying what was written."""
    from .checkpoint import write_checkpoint
    from .config import TrainConfig
    vocab = _read_vocab(vocab_path) if vocab_path is not None else None
    found = read_onnx(path, vocab=vocab)
    out = Path(out)
    to_file = out.suffix in (".npz", ".safetensors")
    if found.lm is None:
        if not to_file:
            raise OnnxImportError(
                f"{path} holds a {found.gru.spec.describe()} but no language model ({found.why_not_lm}); "
                f"a checkpoint needs one, so give --out FILE.npz or FILE.safetensors for the "
                f"GRU's parameters")
        found.gru.save(out, format=format)
        return f"{found.gru.spec.describe()} written to {out} (GRUParams)"
    model = found.lm
    if to_file:
        model.save(out, format=format)
        return f"language model ({model.spec.describe()}) written to {out} (LMParams)"
    spec = model.spec
    try:
        config = TrainConfig.from_dict(found.config) if found.config is not None else TrainConfig(
            hidden_size=spec.hidden_size, num_layers=spec.num_layers, reset_after=spec.reset_after)
    except (TypeError, ValueError) as exc:
        raise OnnxImportError(f"{path}: its d2lgru.config metadata is invalid ({exc})") from None
    history = found.history if found.config is not None else []
    write_checkpoint(out, model, found.vocab, config, epoch=len(history), history=history,
                     format=format, overwrite=overwrite)
    return (f"checkpoint of a {spec.describe()} language model ({len(history)} epoch(s) of "
            f"history) written to {out}")
