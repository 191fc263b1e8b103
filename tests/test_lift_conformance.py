"""The generated grid of tests/test_forms_conformance.py, lifted: each convention that can stream, for each kind,
lifted and streamed in random chunks, as it is and in its decomposed, static, int8 and static-int8 forms (the int8
ones within the int8 bound, element-wise), against one pass of
the original node in the float64 reference (the lift's own proof); each convention that cannot stream refused,
with its reason and the node."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from forms_models import recurrent_model  # noqa: E402
from test_forms_conformance import CONVENTIONS, GATES, ONLY, _case  # noqa: E402

from edge_rnn.deploy import make_variant  # noqa: E402
from edge_rnn.deploy._decompose import all_nodes, decompose_recurrent  # noqa: E402
from edge_rnn.deploy.lifting._proof import prove  # noqa: E402
from edge_rnn.deploy.lifting._surgery import lift_model, reference_model  # noqa: E402
from edge_rnn.errors import UnsupportedError  # noqa: E402
from edge_rnn.harness import TOLERANCE, Cases  # noqa: E402

# what cannot stream, and the reason lift gives
REFUSED = {
    "reverse": "direction=reverse looks ahead in time: needs the whole sequence",
    "bidirectional": "direction=bidirectional looks ahead in time: needs the whole sequence",
    "combined-bidi-layout1-lens-clip": "direction=bidirectional looks ahead in time",
    "combined-reverse-lens-noinit-lbr0": "direction=reverse looks ahead in time",
    "sequence_lens": "sequence_lens comes from graph input 'sequence_lens'",
}
CASES = Cases(batch=2, seq_lens=(1, 7), chunked_len=23, long_steps=80, chunk_max=6, long_chunk_max=16)
STATIC_CASES = Cases(batch=1, seq_lens=(1,), chunked_len=9, long_steps=24, chunk_max=1, long_chunk_max=1)
FORMS = ("lifted", "decomposed", "static", "int8", "static-int8")


def _original(kind: str, convention: str) -> onnx.ModelProto:
    """The grid's node with its initial state left out (a file lift takes: it defaults to zeros), X a graph input."""
    attrs, d, options = _case(kind, convention)
    d = {k: v for k, v in d.items() if k not in ("initial_h", "initial_c")}
    return recurrent_model(attrs, d, computed=options["computed"], outputs=options["outputs"])


# ThresholdedRelu (the RNN's spec-defaults case) steps from 0 to alpha at alpha: int8's error on a pre-activation
# near it flips the output by that height, so no int8 bound holds; its own test below shows the package refusing it
DISCONTINUOUS = {("RNN", "acts-spec-defaults")}


def _params():
    for kind in GATES:
        for convention in CONVENTIONS:
            if ONLY.get(convention, kind) != kind:
                continue
            for form in FORMS if convention not in REFUSED else ("refused",):
                if form in ("int8", "static-int8") and (kind, convention) in DISCONTINUOUS:
                    continue
                yield pytest.param(kind, convention, form, id=f"{kind}-{convention}-{form}")


@pytest.mark.parametrize(("kind", "convention", "form"), list(_params()))
def test_lifted_grid_streams_as_one_pass_of_the_original(tmp_path, kind, convention, form):
    original = _original(kind, convention)
    if form == "refused":
        with pytest.raises(UnsupportedError, match=f"^{kind} node 'rec'.*{REFUSED[convention]}"):
            lift_model(original)
        return
    lifted = lift_model(original)
    reference = reference_model(original, lifted)
    candidate = lifted.model
    if form == "decomposed":
        candidate = decompose_recurrent(lifted.model)[0]
    elif form in ("static", "int8", "static-int8"):
        onnx.save(lifted.model, tmp_path / "lifted.onnx")
        candidate = onnx.load(str(make_variant(form, tmp_path / "lifted.onnx", tmp_path / "v.onnx").path))
    if form != "lifted":
        ops = {n.op_type for n in all_nodes(candidate.graph)}
        assert not ops & {"RNN", "GRU", "LSTM"}, sorted(ops)
    cases = STATIC_CASES if form.startswith("static") else CASES
    tol = TOLERANCE["int8"] if form.endswith("int8") else TOLERANCE["float32"]
    proof = prove(candidate, reference, {s.input: s.initial for s in lifted.states}, cases=cases, tolerance=tol)
    assert proof.ok, proof.table()
    assert proof.report.rows and all(np.isfinite(r.err_onnx) for r in proof.report.rows)


def test_int8_of_a_discontinuous_activation_is_refused_by_its_bound(tmp_path):
    """A ThresholdedRelu RNN in int8 is off by the step's height wherever int8 moves a pre-activation across alpha:
    the package measures it over its stream and leaves the variant out, saying by how much."""
    from edge_rnn.deploy import package

    onnx.save(lift_model(_original("RNN", "acts-spec-defaults")).model, tmp_path / "lifted.onnx")
    result = package(tmp_path / "lifted.onnx", tmp_path / "bundle", variants=("fp16", "int8"), steps=2_000)
    assert list(result.refused) == ["int8"] and "fp16" in result.manifest.variants
    why = result.refused["int8"]
    assert why.reason in ("over_bound", "golden_over_bound") and "its bound on output 'Y'" in why.message, why
