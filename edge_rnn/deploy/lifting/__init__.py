"""``edge-rnn lift``: a recurrent ONNX file from elsewhere made streamable, proved, and written (onnx and
onnxruntime, no torch).

- :mod:`._surgery` (``lift_model``, ``reference_model``): a state input and output pair per recurrent node,
  ``layout=1`` rewritten, batch and time made dynamic, the contract written; over :mod:`._axes` (which axis of
  each tensor is time and which batch, traced with the operator rules of :mod:`._ops`, :mod:`._shapes`,
  :mod:`._kernels` and :mod:`._loops`), :mod:`._states` and :mod:`._carried` (the states of recurrent nodes and
  of loops), :mod:`._ends` (the time length or a final state used at every step) and :mod:`._zeros` (zeros
  computed at run time, as torch.onnx writes an absent state);
- :mod:`._proof`: chunked streaming of the lifted file against one pass of the original in float64;
- :mod:`._api` (``lift``): both, a file written only when the proof passes.
"""

from edge_rnn.deploy.lifting._api import LiftResult, lift, lift_hint
from edge_rnn.deploy.lifting._proof import PROOF_CASES, Proof, prove
from edge_rnn.deploy.lifting._surgery import Lifted, LiftedState, lift_model, reference_model

__all__ = ["lift", "LiftResult", "lift_hint", "lift_model", "reference_model", "Lifted", "LiftedState", "prove",
           "Proof", "PROOF_CASES"]
