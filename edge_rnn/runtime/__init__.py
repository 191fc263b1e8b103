"""The streaming runtime: onnxruntime + numpy only, never torch.

Filled in by the runtime issue; the contract it reads is ``edge_rnn.contract``.
"""

__all__: list[str] = []
