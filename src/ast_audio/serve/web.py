"""The page's client-side mode: the model runs in the visitor's browser, the audio stays there.

The page is the server mode's (``static/index.html``, ``app.js``, ``client.js``, ``style.css``).
What turns it client-side is the ``<meta name="ast-audio-client">`` that :func:`page` fills with
the model file's address and the timeline's defaults (the service's own: the frame hop and the
post-processing of :class:`~ast_audio.infer.events.PostProcessing`). The model is a waveform-in
ONNX graph (:func:`~ast_audio.checkpoints.onnx_waveform.export_waveform_onnx`: mono waveform at
the contract's rate in, calibrated probabilities out), run by onnxruntime-web on WebAssembly;
the page reads the labels, thresholds and input contract from the file's own metadata.

onnxruntime-web is vendored at build time (``make vendor``: the npm registry, into
``static/vendor/ort/``); :func:`check_runtime` says in one line when it is missing.

- :func:`cached_model`: a checkpoint's waveform ONNX file, exported once into the checkpoint
  cache (``ast-audio serve --client-side``);
- :func:`read_metadata`: the ``ast_audio`` metadata of an ONNX file (``--onnx FILE`` is checked
  with it), read without onnx or torch;
- :func:`write_site`: a static folder any file server can host (``ast-audio export --format
  web``), built beside the target and renamed into place.

Nothing here needs the service's packages (FastAPI): ``export --format web`` runs without them.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from ..base.fileio import atomic_write, new_file_mode
from ..errors import ConfigError
from ..infer.events import PostProcessing
from ..infer.frames import DEFAULT_HOP

__all__ = ["ISOLATION_HEADERS", "MODEL_FILE", "RUNTIME", "RUNTIME_FILES", "STATIC", "cached_model", "check_runtime", "page",
           "read_metadata", "write_site"]  # fmt: skip

STATIC = Path(__file__).resolve().parent / "static"  # the page: package data, no build step
RUNTIME = STATIC / "vendor" / "ort"  # onnxruntime-web, put there by `make vendor`
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("app.js", "client.js", "style.css")
MODEL_FILE = "model.onnx"  # beside index.html, in the service and in a static folder alike
METADATA_KEY = "ast_audio"
_META = '<meta name="ast-audio-client" content="">'  # index.html's placeholder: empty means server mode
# Cross-origin isolation: with these on the page and its files, the browser lets onnxruntime-web use
# threads (SharedArrayBuffer); without them (a plain static host) the page runs on one thread.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def check_runtime() -> None:
    """:class:`~ast_audio.errors.ConfigError` naming the first vendored runtime file that is missing."""
    for name in RUNTIME_FILES:
        if not (RUNTIME / name).is_file():
            raise ConfigError("missing: the in-browser runtime (onnxruntime-web) is fetched from the npm registry "
                              "at build time by `make vendor`", RUNTIME / name)  # fmt: skip


def client_settings() -> dict:
    """What the client-side page needs besides the model file: the timeline's frame hop and
    post-processing, the defaults the service's timeline uses."""
    post = PostProcessing()
    return {"model": MODEL_FILE, "hop": DEFAULT_HOP, "off_ratio": post.off_ratio, "median": post.median,
            "min_duration": post.min_duration, "min_gap": post.min_gap}  # fmt: skip


def page(client_side: bool) -> str:
    """``index.html``: as it is (server mode), or with the client-side settings filled in."""
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    if not client_side:
        return text
    assert _META in text, "index.html lost its ast-audio-client placeholder"
    settings = html.escape(json.dumps(client_settings()), quote=True)
    return text.replace(_META, f'<meta name="ast-audio-client" content="{settings}">')


# ---------------------------------------------------------------------------------- model file


def _varint(fh) -> int | None:
    """One protobuf varint from ``fh``; ``None`` at the end of the file, ``ValueError`` inside one."""
    value, shift = 0, 0
    while byte := fh.read(1):
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    if shift:
        raise ValueError("truncated")
    return None


def _entry(data: bytes) -> tuple[str, str]:
    """``(key, value)`` of an ONNX ``StringStringEntryProto`` (fields 1 and 2, strings)."""
    out, at = {1: "", 2: ""}, 0
    while at < len(data):
        key, at = _varint_at(data, at)
        length, at = _varint_at(data, at)
        if key & 7 != 2:
            raise ValueError("not a string entry")
        out[key >> 3] = data[at : at + length].decode("utf-8")
        at += length
    return out[1], out[2]


def _varint_at(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("truncated")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``ast_audio`` metadata (JSON) of the waveform-in ONNX file ``path``, checked to say
    ``input: "waveform"`` and to list labels; :class:`~ast_audio.errors.ConfigError` naming the
    file otherwise. Reads the file's top-level fields only (the graph and weights are skipped
    over), so it needs neither onnx nor torch and costs nothing for a large model."""
    path = Path(path)
    found = None
    try:
        with open(path, "rb") as fh:
            while (key := _varint(fh)) is not None:
                wire = key & 7
                if wire == 0:  # a number
                    if _varint(fh) is None:
                        raise ValueError("truncated")
                elif wire == 2:  # bytes: metadata_props (field 14) is read, the rest skipped
                    length = _varint(fh)
                    if length is None:
                        raise ValueError("truncated")
                    if key >> 3 == 14:
                        name, value = _entry(fh.read(length))
                        if name == METADATA_KEY:
                            found = value
                    else:
                        fh.seek(length, os.SEEK_CUR)
                elif wire in (1, 5):  # fixed 64 or 32 bits
                    fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                else:
                    raise ValueError(f"wire type {wire}")
    except IsADirectoryError:
        raise ConfigError("is a folder; give the .onnx file", path) from None
    except FileNotFoundError:
        raise ConfigError("no such file", path) from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("not an ONNX model file", path) from None
    try:
        meta = json.loads(found) if found is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("input") != "waveform" or not isinstance(meta.get("labels"), list):
        raise ConfigError("not a waveform-in ONNX model of ast-audio (its metadata has no \"ast_audio\" entry with "
                          "input \"waveform\"): write one with `ast-audio export --format onnx --input waveform`",
                          path)  # fmt: skip
    return meta


def _fingerprint(source: str) -> str:
    """What identifies a checkpoint's export: ast-audio's version, the source as given, and the
    name, size and modification time of each of its files (a published name is itself stable)."""
    digest = hashlib.sha256(f"{__version__}\0{source}".encode())
    where = Path(source)
    files = sorted(p for p in where.rglob("*") if p.is_file()) if where.is_dir() else [where] if where.is_file() else []
    for p in files:
        stat = p.stat()
        digest.update(f"\0{p.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_model(source: str, folder: str | os.PathLike | None = None) -> Path:
    """The waveform ONNX file of checkpoint ``source`` (a file, Hugging Face folder or published
    name), exported once into ``folder`` (default: ``web/`` in the checkpoint cache) and reused
    while the checkpoint and ast-audio's version stay the same."""
    from ..checkpoints.hub import cache_dir
    from ..checkpoints.load import load_model
    from ..checkpoints.onnx_waveform import export_waveform_onnx

    folder = Path(folder) if folder is not None else cache_dir() / "web"
    path = folder / f"{Path(source).stem or 'model'}-{_fingerprint(source)}.onnx"
    if not path.is_file():  # written beside and renamed into place: a file there is whole
        model = load_model(source)
        atomic_write(path, lambda tmp: export_waveform_onnx(model, tmp))
    return path


# ---------------------------------------------------------------------------------- static site


def _is_site(folder: Path) -> bool:
    return (folder / "index.html").is_file() and (folder / MODEL_FILE).is_file()


def write_site(out: str | os.PathLike, model=None, *, onnx: str | os.PathLike | None = None) -> Path:
    """A static folder ``out`` that tags audio in the browser: ``index.html``, ``static/`` (the
    page's script and style, onnxruntime-web under ``static/vendor/ort/``) and ``model.onnx``
    (``model`` exported from waveform, or the waveform-in ONNX file ``onnx`` copied).

    Built in a temporary folder beside ``out`` and renamed into place, so ``out`` is whole or
    absent; a folder ``out`` that holds something other than such a site is refused."""
    check_runtime()
    if (model is None) == (onnx is None):
        raise ConfigError("write_site takes a model or a waveform-in ONNX file: exactly one of them")
    if onnx is not None:
        read_metadata(onnx)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("is a file; the web page is a folder (give a new or empty folder)", out)
    if out.is_dir() and any(out.iterdir()) and not _is_site(out):
        raise ConfigError("is a folder that holds other files; give a new or empty folder (or one written by "
                          "`export --format web`, which is replaced)", out)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        vendor = tmp / "static" / "vendor" / "ort"
        vendor.mkdir(parents=True)
        (tmp / "index.html").write_text(page(client_side=True), encoding="utf-8")
        for name in PAGE_FILES:
            shutil.copyfile(STATIC / name, tmp / "static" / name)
        for name in (*RUNTIME_FILES, "VERSION"):
            if (RUNTIME / name).is_file():
                shutil.copyfile(RUNTIME / name, vendor / name)
        if onnx is not None:
            shutil.copyfile(onnx, tmp / MODEL_FILE)
        else:
            from ..checkpoints.onnx_waveform import export_waveform_onnx

            export_waveform_onnx(model, tmp / MODEL_FILE)
        files = new_file_mode()
        os.chmod(tmp, files | (files & 0o444) >> 2)  # a new folder's mode under the umask (mkdtemp gives 0700)
        if out.is_dir() and any(out.iterdir()):
            old = out.with_name(f"{tmp.name}.old")
            os.rename(out, old)
        os.replace(tmp, out)  # onto an empty folder or none
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old, out)
        inside = isinstance(err, OSError) and str(err.filename or "").startswith(str(tmp))
        if inside:  # a failed write (no space, no permission) names the folder asked for, not the temporary one
            raise OSError(err.errno, err.strerror, os.fspath(out)) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
