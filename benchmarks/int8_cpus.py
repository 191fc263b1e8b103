"""int8 error per CPU class: variants made here, replayed wherever this script runs (a device, an emulator).

    python benchmarks/int8_cpus.py prepare DIR [--steps 2000]      # here: needs torch and onnx
    python benchmarks/int8_cpus.py replay DIR                      # anywhere: numpy + onnxruntime only

``prepare`` exports the demo LSTM, GRU and vanilla RNN (80 -> 256 x 2, seeded) and takes the committed token model
(tests/data/token_gru.onnx); makes each one's int8 variant under several settings (Int8Settings: the portable
default, the full 8-bit range, per channel, uint8 weights); and records, with the float32 model on this machine,
one stream of --steps random steps in random chunks of 1 to 32 (the golden vectors of edge_rnn.runtime._golden).

``replay`` streams each variant over those chunks on the CPU it runs on and holds every output and state against
the float32 stream with the int8 bound (5e-2 + 5e-2 |y|), as a bundle's self-test does; it prints the machine it
ran on. Run it on the machines you can reach, or under qemu (docs/deployment.md says how).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_rnn.runtime import SessionConfig, StreamingModel  # noqa: E402
from edge_rnn.runtime._golden import golden_chunks, load_golden, record, replay, save_golden  # noqa: E402
from edge_rnn.runtime._host import describe_host, host_record, int8_kernel  # noqa: E402

INT8_BOUND = (5e-2, 5e-2)  # the tolerance table's int8 row (edge_rnn.harness.TOLERANCE)
SETTINGS = {  # overrides of the default (portable: 7-bit uint8 weights)
    "portable": {},
    "7-bit int8": {"weight_type": "int8"},
    "full int8 (vnni)": {"reduce_range": False, "weight_type": "int8"},
    "full uint8 (arm64)": {"reduce_range": False},
    "portable per-channel": {"per_channel": True},
    "full int8 per-channel": {"reduce_range": False, "weight_type": "int8", "per_channel": True},
}


def prepare(folder: Path, steps: int) -> None:
    import torch

    import edge_rnn
    from edge_rnn.deploy import Int8Settings, make_variant

    folder.mkdir(parents=True, exist_ok=True)
    models = {}
    for kind, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("rnn", torch.nn.RNN)):
        torch.manual_seed(0)
        path = folder / f"{kind}.onnx"
        edge_rnn.export(cls(80, 256, num_layers=2).eval(), path, long_steps=0)
        models[kind] = path
    shutil.copy(ROOT / "tests" / "data" / "token_gru.onnx", folder / "token.onnx")
    models["token"] = folder / "token.onnx"
    index = {}
    for name, path in models.items():
        model = StreamingModel.load(path, session=SessionConfig(threads=1))
        rng = np.random.default_rng(0)
        chunks = golden_chunks(rng, steps, 1, longest=32)
        total = sum(chunks)
        inputs = {}
        for p in model.inputs:
            shape = [total if i == p.stream_time_axis else d for i, d in enumerate(p.stream_shape)]
            if p.values is not None:
                inputs[p.name] = rng.integers(p.values[0], p.values[1] + 1, size=shape).astype(p.dtype)
            else:
                inputs[p.name] = rng.standard_normal(shape).astype(p.dtype)
        save_golden(record(model, inputs, chunks), folder / f"{name}.golden.npz")
        index[name] = {}
        for setting, fields in SETTINGS.items():
            dst = folder / f"{name}.{setting.split(' (')[0].replace(' ', '-')}.onnx"
            make_variant("int8", path, dst, int8=Int8Settings(**fields))
            index[name][setting] = dst.name
        print(f"{name}: {total} steps in {len(chunks)} chunks, {len(SETTINGS)} int8 variants", flush=True)
    (folder / "index.json").write_text(json.dumps({"made_on": host_record(), "models": index}, indent=1))


def replay_all(folder: Path) -> None:
    index = json.loads((folder / "index.json").read_text())
    here = host_record()
    print(f"made on: {describe_host(index['made_on'])}")
    print(f"replayed on: {describe_host(here)}; int8 kernel {int8_kernel(here['features'])}; features read from "
          f"{here['features_read_from']}")
    print(f"{'model':<6} {'setting':<22} {'max abs':>9} {'x bound':>8} {'worst tensor':<14} verdict")
    for name, variants in index["models"].items():
        golden = load_golden(folder / f"{name}.golden.npz")
        for setting, file in variants.items():
            check = replay(StreamingModel.load(folder / file, session=SessionConfig(threads=1)), golden,
                           atol=INT8_BOUND[0], rtol=INT8_BOUND[1])
            w = check.worst
            print(f"{name:<6} {setting:<22} {check.max_abs:9.3g} {check.worst_fraction:8.3f} {w.name:<14} "
                  f"{'ok' if check.ok else 'OVER'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["prepare", "replay"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    if args.mode == "prepare":
        prepare(args.folder, args.steps)
    else:
        replay_all(args.folder)


if __name__ == "__main__":
    main()
