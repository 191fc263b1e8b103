"""What the commands share: the click group, one-line errors, reading files, the parity table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edge_rnn._version import __version__
from edge_rnn.errors import EdgeRnnError, message_line

__all__ = ["main"]

# The extra that installs each optional module, and the commands that get it from another extra.
_EXTRAS = {"torch": "export", "onnx": "export", "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve",
           "httptools": "serve", "uvloop": "serve", "httpx": "client", "websockets": "client", "matplotlib": "diag"}
_EXTRAS_BY_COMMAND = {("onnx", "optimize"): "deploy", ("onnx", "package"): "deploy", ("onnx", "lift"): "deploy",
                      ("websockets", "serve"): "serve"}


class _Group(click.Group):
    """Turns an EdgeRnnError (a user mistake or a parity failure) into one message and exit code 1, and so a
    module of an extra that is not installed (a runtime-only install has no torch and no onnx)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeRnnError as e:
            raise click.ClickException(str(e)) from None
        except ModuleNotFoundError as e:
            module = (e.name or "").partition(".")[0]
            command = ctx.invoked_subcommand or "?"
            extra = _EXTRAS_BY_COMMAND.get((module, command)) or _EXTRAS.get(module)
            if extra is None:  # not an optional dependency: a broken install, whose traceback says more
                raise
            raise click.ClickException(f"edge-rnn {command} needs the {extra} extra: pip install "
                                       f"'edge-rnn[{extra}]' ({module} is missing)") from None


def _model_path(path: Path, variant: str | None) -> Path:
    """MODEL of the runtime commands: an ONNX or ORT file, or a bundle folder whose --variant is loaded."""
    if path.is_dir():
        return path
    if variant is not None:
        raise click.UsageError(f"--variant {variant}: picks a variant from a bundle folder; {path} is a model file")
    return _existing(path, "model")


def _variant_option(f: Any) -> Any:
    return click.option("--variant", default=None, metavar="NAME",
                        help="With a bundle folder (edge-rnn package): the variant to load, its file checked against "
                             "the manifest's SHA-256 [default: fp32].")(f)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise EdgeRnnError(f"{what} {path}: no such file")
    from edge_rnn.harness._file_kind import not_regular

    kind = not_regular(path)
    if kind == "a directory":
        raise EdgeRnnError(f"{what} {path}: expected a file, got a directory")
    if kind is not None:  # a link to /dev/zero or /dev/urandom would be read without end
        raise EdgeRnnError(f"{what} {path}: expected a regular file, got {kind}")
    return path


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-rnn")
def main() -> None:
    """Recurrent networks from PyTorch to streaming ONNX, and back to proof that they match."""




def _build(spec: Any, weights: Path | None, seed: int | None) -> Any:
    import torch

    from edge_rnn.exporters import build_module
    from edge_rnn.exporters._checkpoint import load_state_dict

    if seed is not None:
        torch.manual_seed(seed)
    try:
        module = build_module(spec)
    except (RuntimeError, MemoryError) as e:  # torch's allocator: far too many parameters for this machine
        first = message_line(e) or type(e).__name__
        raise EdgeRnnError(f"cannot build {spec.module}({spec.input_size}, {spec.hidden_size}, "
                           f"num_layers={spec.num_layers}): {first}") from None
    if weights is not None:
        load_state_dict(module, weights)
    return module.eval()


def _print_parity(report: Any, every_row: bool = False) -> None:
    click.echo(report.table(every_row=every_row))
    worst = max((r.margin for r in report.rows), default=0.0)
    click.echo(f"parity: {len(report.rows)} comparisons against {report.reference}, largest err_onnx "
               f"{report.max_abs_error:.2e}, worst at {worst:.2g}x its bound: {'ok' if report.ok else 'FAILED'}")


def _read_data(data: Path | None) -> Any:
    """The --data path, checked now (a missing, pickled or forged file fails before any work) from its headers,
    reading no array: it is read once, where used."""
    if data is None:
        return None
    from edge_rnn.harness import check_data

    check_data(data)
    return data


def _read_array(path: Path, flag: str) -> Any:
    """One user array (``run --input``, ``diagnose --input``): a .npy of shape (time, ...), read by the harness's
    bounded reader, the one --data goes through: its header checked against the file's size before anything is
    allocated, never unpickled."""
    from edge_rnn.harness import read_npy

    _existing(path, flag)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK"):
        raise EdgeRnnError(f"{flag} {path}: expected one .npy array of shape (time, ...), got an .npz archive")
    if not magic.startswith(b"\x93NUMPY"):
        raise EdgeRnnError(f"{flag} {path}: expected a plain .npy array of shape (time, ...), got no numpy header; "
                           "pickles are never loaded")
    data = read_npy(path)
    if data.ndim == 0:
        raise EdgeRnnError(f"{flag} {path}: expected one .npy array of shape (time, ...), got a scalar {data.dtype}")
    return data


def _check_fits(data: Any, port: Any, label: str, model: str = "the model") -> None:
    """A user array (``--input x.npy``) against the model's input ``port``, once, before it is cut into chunks: a
    refusal names the file, its shape and its dtype, not the first chunk's."""
    from edge_rnn.runtime._sequence_fit import check_fits

    check_fits(port, data.shape, data.dtype, label, model=model, got=" in the file")


_DATA_HELP = ("Real input sequences for the parity check, in place of random ones: a .npy (time, features) or an "
              ".npz of several; repeated where shorter than a case. Never unpickled.")



def _int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=name)
    return out


def _foreign_options(f: Any) -> Any:
    """The options of ``run`` and ``bench`` for a model edge-rnn did not write, and for NaN/Inf inputs."""
    options = [
        click.option("--allow-nonfinite", is_flag=True, help="Let NaN and Inf inputs through (refused by default)."),
        click.option("--state-map", "state_map", multiple=True, metavar="INPUT=OUTPUT",
                     help="A state pair of a model without an edge_rnn contract (repeat for each state)."),
        click.option("--constant", "constants", multiple=True, metavar="NAME=VALUE",
                     help="An input fed the same value on every call, e.g. sr=16000 or 'w=[1, 2]' (JSON)."),
        click.option("--batch-axis", type=click.IntRange(min=0), default=None,
                     help="Without a contract: the inputs' and outputs' batch axis [default: 0]."),
        click.option("--time-axis", type=click.IntRange(min=0), default=None,
                     help="Without a contract: their time axis [default: none, one step per call]."),
        click.option("--state-batch-axis", type=click.IntRange(min=0), default=None,
                     help="Without a contract: the states' batch axis, where it is not their one dynamic dimension."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _pairs(values: tuple[str, ...], flag: str, form: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise click.BadParameter(f"expected {form}, got {v!r}", param_hint=flag)
        out.append((name.strip(), rest.strip()))
    return out


def _foreign(state_map: tuple[str, ...], constants: tuple[str, ...], batch_axis: int | None, time_axis: int | None,
             state_batch_axis: int | None) -> dict[str, Any]:
    """The fields of a ForeignModel for the options given (none given: none set)."""
    import json

    kw: dict[str, Any] = {}
    if state_map:
        kw["state_map"] = dict(_pairs(state_map, "--state-map", "INPUT=OUTPUT"))
    if constants:
        parsed = {}
        for name, text in _pairs(constants, "--constant", "NAME=VALUE"):
            try:
                parsed[name] = json.loads(text)
            except (ValueError, RecursionError):
                raise click.BadParameter(f"{name}: expected a JSON number or list, got {text!r}",
                                         param_hint="--constant") from None
        kw["constants"] = parsed
    for key, value in (("batch_axis", batch_axis), ("time_axis", time_axis), ("state_batch_axis", state_batch_axis)):
        if value is not None:
            kw[key] = value
    return kw


def _load_runtime_model(model: Path, threads: int | None, allow_nonfinite: bool = False, variant: str | None = None,
                        **foreign: Any) -> Any:
    """MODEL as ``StreamingModel.load`` takes it: a file, or a bundle folder and its variant (None: fp32)."""
    from edge_rnn.runtime import ForeignModel, SessionConfig, StreamingModel

    _model_path(model, variant)
    return StreamingModel.load(model, session=SessionConfig(threads=threads),
                               foreign=ForeignModel(**_foreign(**foreign)), allow_nonfinite=allow_nonfinite,
                               variant=variant)
