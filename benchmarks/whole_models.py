"""Export time and parity of the three whole models in tests/wholemodels.py, both graph forms.

    python benchmarks/whole_models.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

import edge_rnn  # noqa: E402
from edge_rnn.exporters import StreamingIO  # noqa: E402
from edge_rnn.runtime._host import describe_host, host_record  # noqa: E402

warnings.simplefilter("ignore")
import wholemodels as W  # noqa: E402

torch.set_num_threads(1)
d = tempfile.mkdtemp()
cases = [
    ("keyword spotter: causal conv x2 + 2-layer GRU + linear", W.keyword_spotter, torch.randn(1, 50, 40), {}),
    ("VAD: context buffer + conv + LSTMCell, explicit state", lambda: (torch.manual_seed(0), W.VoiceActivity())[1],
     (torch.randn(1, 64, 8), torch.zeros(2, 1, 32)),
     {"states": {"state": "new_state"}, "input_names": ["x", "state"], "output_names": ["prob", "new_state"],
      "input_axes": {"x": (0, None)}, "output_axes": {"prob": (0, None)}}),
    ("acoustic model: LSTM(proj) + 2-layer LSTM(proj) + norm + linear", W.acoustic_model, torch.randn(50, 1, 40),
     {"input_axes": {"x": (1, 0)}, "output_axes": {"y": (1, 0)}}),
]
print(f"machine: {describe_host(host_record())}")
print(f"{'model':<66} {'form':<11} {'export ms':>9} {'max abs err':>11}  cases")
for name, make, ex, kw in cases:
    for dec in (False, True):
        m = make().eval()
        times = []
        for i in range(4):
            r = edge_rnn.export(m, os.path.join(d, "m.onnx"), example_input=ex, decomposed=dec, io=StreamingIO(**kw),
                                verify_parity=(i == 0), long_steps=10_000)
            if i == 0:
                rep = r.parity
            times.append(r.export_seconds * 1e3)
        kinds = sorted({row.case.split()[0] for row in rep.rows})
        form = "decomposed" if dec else "native"
        print(f"{name:<66} {form:<11} {statistics.median(times[1:]):>9.1f} {rep.max_abs_error:>11.2e}  "
              f"{','.join(kinds)}")
