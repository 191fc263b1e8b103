"""A readable summary of any ONNX or ORT-format file, with its edge_rnn contract when it has one; a bundle's
listing with each file checked against its hash. Needs neither onnx nor torch: an ONNX file is read with the
runtime's protobuf wire-format reader, an ORT file through onnxruntime (its operators with the runtime's reader of
its flatbuffer). What the runtime refuses to load, a name or a metadata entry that is not UTF-8, inspect refuses
in the same one line.

The summary is in parts, one concept each: ``_onnx`` (an ONNX file, read from its wire format), ``_ort`` (an
ORT-format file), ``_table`` (the rows both print: values, the contract's states, detected state pairs, operators)
and ``_bundle`` (a bundle's listing, each file checked against its hash)."""

from __future__ import annotations

from edge_rnn._inspect._bundle import describe_bundle
from edge_rnn._inspect._onnx import describe, operator_counts, recurrent_without_contract
from edge_rnn._inspect._ort import describe_ort

__all__ = ["describe", "describe_ort", "describe_bundle", "operator_counts", "recurrent_without_contract"]
