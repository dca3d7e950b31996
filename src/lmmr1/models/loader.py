"""One loader for every model lmmr1 trains: local HF directories of VLMs or text-only LMs.

The loader validates the directory up front (one-line errors that say what to fix), loads the
weights with the real transformers classes, builds a :class:`ChatProcessor`, and returns a
:class:`LoadedModel` whose forward helpers take *explicit* position ids.  Sampling and training
both go through those helpers, so a Qwen2.5-VL image row gets the same 3-D (M-RoPE) positions
in both passes and rollout log-probs match training log-probs to float precision.
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint

from lmmr1.errors import ModelLoadError
from lmmr1.models.chat_template import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START
from lmmr1.models.processor import ChatProcessor, PromptBatch

VLM_TYPES = ("qwen2_5_vl", "qwen2_vl")
TEXT_TYPES = ("qwen2", "qwen3", "llama", "mistral")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_SAVE_MODES = ("merged", "adapter", "both")


@functools.cache
def _cache_keyword_of(cls: type) -> str:
    """transformers 5.25 renamed ``past_key_values`` to ``cache`` (the old name warns on every call
    and goes in 5.40); earlier 5.x only know the old name, so ask the installed forward."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_keyword(module: torch.nn.Module) -> str:
    return _cache_keyword_of(type(module))


@dataclass
class LoraOptions:
    """LoRA on the language model's linear layers (the vision tower is left as is).

    ``target_modules`` are leaf names of the language model's linear layers (``q_proj``, ...);
    a name that matches no layer is an error rather than silently training fewer adapters.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGETS


@dataclass
class LoadedModel:
    """A model + its processor + the forward helpers every lmmr1 component uses."""

    model: Any  # a transformers PreTrainedModel, or a peft PeftModel around one
    processor: ChatProcessor
    path: Path
    model_type: str
    suppress_ids: list[int] = field(default_factory=list)

    # ------------------------------------------------------------ structure
    @property
    def base(self):
        """The transformers model (LoRA layers, if any, are injected into it in place)."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    @property
    def activation_checkpointing(self) -> bool:
        """Whether activation (gradient) checkpointing is on.

        Reads ``is_activation_checkpointing`` (transformers >= 5); the older
        ``is_gradient_checkpointing`` name is read only where the new one is missing, because in
        transformers 5 it prints a FutureWarning on every access (every training forward).
        """
        base = self.base
        if hasattr(type(base), "is_activation_checkpointing"):
            return bool(base.is_activation_checkpointing)
        return bool(getattr(base, "is_gradient_checkpointing", False))

    @property
    def is_multimodal(self) -> bool:
        return self.model_type in VLM_TYPES

    @property
    def uses_mrope(self) -> bool:
        return self.is_multimodal

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.base.lm_head

    @property
    def language_model(self) -> torch.nn.Module:
        core = self.base.model
        return core.language_model if self.is_multimodal else core

    @property
    def image_token_id(self) -> int | None:
        return self.base.config.image_token_id if self.is_multimodal else None

    # ------------------------------------------------------------ positions
    def prompt_positions(self, prompts: PromptBatch) -> torch.Tensor:
        """Position ids of a left-padded prompt batch, shape (C, B, L): C=3 (M-RoPE) or C=1.

        For VLMs this is the model's own rope-index function, so image rows get their 2-D
        (height, width) positions exactly as Hugging Face generation computes them.
        """
        mask = prompts.attention_mask
        if self.uses_mrope:
            pos, _ = self.base.model.get_rope_index(
                prompts.input_ids,
                mm_token_type_ids=prompts.mm_token_type_ids,
                image_grid_thw=prompts.image_grid_thw,
                attention_mask=mask,
            )
            return pos
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos.unsqueeze(0)

    @staticmethod
    def next_positions(prompt_pos: torch.Tensor) -> torch.Tensor:
        """The position of the first generated token per row, shape (B,)."""
        return prompt_pos.amax(dim=(0, 2)) + 1

    # ---------------------------------------------------------------- images
    def encode_images(self, prompts: PromptBatch, rows: list[int] | None = None) -> list[torch.Tensor | None]:
        """Vision-tower features per prompt row (None for text-only rows); one pass for all images.

        ``rows`` restricts the work to some prompts (a micro-batch); other entries are None.
        """
        rows = list(range(prompts.batch_size)) if rows is None else sorted(set(rows))
        out: list[torch.Tensor | None] = [None] * prompts.batch_size
        if not self.is_multimodal or prompts.num_images == 0:
            return out
        slices = prompts.image_slices()
        wanted = [r for r in rows if prompts.images_per_row[r] > 0]
        if not wanted:
            return out
        grid = torch.cat([prompts.image_grid_thw[slices[r][0]] for r in wanted])
        pixels = torch.cat([prompts.pixel_values[slices[r][1]] for r in wanted])
        visual = self.base.model.visual
        feats = self.base.model.get_image_features(pixels.to(visual.dtype), grid).pooler_output
        k = 0
        for r in wanted:
            n_img = prompts.images_per_row[r]
            out[r] = torch.cat(list(feats[k : k + n_img]))
            k += n_img
        return out

    # --------------------------------------------------------------- forward
    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image features scattered into the <|image_pad|> slots."""
        emb = self.language_model.get_input_embeddings()(input_ids)
        if image_features is not None:
            slots = input_ids == self.image_token_id
            n_slots = int(slots.sum())
            if n_slots != image_features.shape[0]:
                raise ModelLoadError(
                    f"image features and image tokens do not match: {n_slots} <|image_pad|> tokens in the "
                    f"batch but {image_features.shape[0]} feature rows (was a completion allowed to emit them?)"
                )
            emb = emb.masked_scatter(slots.unsqueeze(-1), image_features.to(emb.dtype))
        return emb

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        image_features: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Last hidden states (B, L, H) of the language model with explicit positions."""
        pos = position_ids if self.uses_mrope else position_ids[0]
        kw = _cache_keyword(self.language_model)
        out = self.language_model(
            inputs_embeds=self.embed(input_ids, image_features),
            attention_mask=attention_mask,
            position_ids=pos,
            use_cache=use_cache,
            **{kw: past_key_values},
        )
        return out.last_hidden_state, getattr(out, kw)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits with never-generate ids (vision placeholders, vocab padding) at -inf."""
        logits = self.lm_head(hidden).float()
        if self.suppress_ids:
            logits[..., self.suppress_ids] = float("-inf")
        return logits

    def token_logprobs(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        temperature: float = 1.0,
        chunk_tokens: int = 2048,
        with_entropy: bool = False,
        entropy_grad: bool = True,
        recompute: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(target) (and entropy) for N positions, computed in chunks of ``chunk_tokens``.

        Memory is bounded by one chunk's full-vocabulary softmax also when gradients flow:
        with ``recompute`` (default) each chunk is checkpointed, so backward recomputes its
        logits instead of keeping them (kept, a 4 x 4096-token micro-batch over Qwen's 151,936-token
        vocabulary holds ~10 GB of fp32 logits / log-softmax, ~26 GB with an entropy graph); the
        gradients are those of the plain computation (the same operations run again).  The cost is
        one extra ``lm_head`` matmul per chunk in backward.  ``entropy_grad=False`` computes the
        entropy without a graph (the trainer's choice when ``algo.entropy_coef`` is 0: entropy is
        then only a metric).  ``temperature`` scales logits as the sampler does (temperature 0 =
        greedy, scored at temperature 1).
        """
        temp = temperature if temperature > 0 else 1.0
        needs_graph = torch.is_grad_enabled() and (hidden.requires_grad or self.lm_head.weight.requires_grad)
        lps, ents = [], []
        for s in range(0, hidden.shape[0], chunk_tokens):
            h, y = hidden[s : s + chunk_tokens], targets[s : s + chunk_tokens]
            if recompute and needs_graph:
                out = torch.utils.checkpoint.checkpoint(self._chunk_terms, h, y, temp, with_entropy, entropy_grad,
                                                        use_reentrant=False, preserve_rng_state=False)
            else:
                out = self._chunk_terms(h, y, temp, with_entropy, entropy_grad)
            lps.append(out[0])
            if with_entropy:
                ents.append(out[1])
        lp = torch.cat(lps) if lps else hidden.new_zeros(0, dtype=torch.float32)
        ent = (torch.cat(ents) if ents else hidden.new_zeros(0, dtype=torch.float32)) if with_entropy else None
        return lp, ent

    def _chunk_terms(self, h: torch.Tensor, y: torch.Tensor, temp: float, with_entropy: bool,
                     entropy_grad: bool) -> tuple[torch.Tensor, ...]:
        """One chunk's target log-probs (and entropies, with a graph only if ``entropy_grad``)."""
        logp = torch.log_softmax(self.logits(h) / temp, dim=-1)
        lp = logp.gather(-1, y[:, None]).squeeze(-1)
        if not with_entropy:
            return (lp,)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            src = logp if entropy_grad else logp.detach()
            ent = -(src.exp() * src.nan_to_num(neginf=0.0)).sum(-1)
        return lp, ent

    def save_pretrained(self, out_dir: str | Path, lora_save: str = "merged") -> None:
        """HF-format safetensors + processor files.

        ``lora_save`` applies to LoRA models only: ``merged`` (LoRA merged into a copy: a full
        checkpoint loadable as-is), ``adapter`` (PEFT's adapter_model.safetensors +
        adapter_config.json, loadable with ``peft.PeftModel.from_pretrained`` on the base
        model: megabytes instead of the whole model), or ``both`` (merged in ``out_dir``, the
        adapter in ``out_dir/adapter``).  A model without LoRA is always saved whole.
        """
        if lora_save not in LORA_SAVE_MODES:
            raise ModelLoadError(f"lora_save={lora_save!r} is not valid (choose from {', '.join(LORA_SAVE_MODES)})")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        is_lora = hasattr(model, "merge_and_unload")
        if is_lora and lora_save in ("adapter", "both"):
            adapter_dir = out if lora_save == "adapter" else out / "adapter"
            model.save_pretrained(adapter_dir)
            self.processor.save_pretrained(adapter_dir)
            if lora_save == "adapter":
                return
        if is_lora:
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out)
        self.processor.save_pretrained(out)


# ----------------------------------------------------------------------------- loading
def read_model_config(path: Path) -> dict:
    """config.json of a checkpoint directory, or one line saying why it cannot be read (also used
    by ``--dry-run``, which must not load weights)."""
    if not path.exists():
        raise ModelLoadError(
            f"model directory {path} does not exist; pass a local Hugging Face checkpoint directory "
            "(model hubs are not contacted; build a test model with `lmmr1 make-tiny DIR`)"
        )
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file; pass the checkpoint *directory* that holds config.json")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face checkpoint directory; "
            "point to the folder holding config.json, *.safetensors and the tokenizer files"
        )
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file} is not valid JSON (line {e.lineno}): {e.msg}") from e
    except UnicodeDecodeError:
        raise ModelLoadError(f"{cfg_file} is not UTF-8 text; re-save it as UTF-8") from None


def _check_safetensors(path: Path) -> None:
    """Read each *.safetensors header (cheap: no tensor data is read) so a corrupt or truncated
    weight file is one line naming the file, not a deep traceback from inside transformers."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{f} is corrupt or truncated ({str(e).splitlines()[0]}); copy the weights again "
                                 "or point to another checkpoint") from None


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    from lmmr1.models.precision import DTYPES, resolve_precision

    if dtype == "auto":  # the parameter dtype of precision "auto": fp32 (bf16 compute is autocast's job)
        return resolve_precision("auto", "auto", device).param
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
    freeze_vision: bool | str = False,
    lora: LoraOptions | None = None,
    max_prompt_tokens: int | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a local HF checkpoint (Qwen2.5-VL, Qwen2-VL or a text-only causal LM)."""
    import transformers

    path = Path(path).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / "adapter_config.json").exists():
        return _load_adapter_dir(path, lora, dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing,
                                 freeze_vision=freeze_vision, max_prompt_tokens=max_prompt_tokens,
                                 attn_implementation=attn_implementation)
    cfg = read_model_config(path)
    model_type = cfg.get("model_type")
    if model_type not in VLM_TYPES + TEXT_TYPES:
        raise ModelLoadError(
            f"unsupported architecture {model_type!r} (model_type in {path / 'config.json'}); supported: "
            f"{', '.join(VLM_TYPES)} (vision-language), {', '.join(TEXT_TYPES)} (text-only)"
        )
    if not (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise ModelLoadError(f"{path} has config.json but no weights (*.safetensors or pytorch_model*.bin)")
    _check_safetensors(path)
    if not ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()):
        raise ModelLoadError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    is_vlm = model_type in VLM_TYPES
    if is_vlm and not (path / "preprocessor_config.json").exists():
        raise ModelLoadError(
            f"{path} is a {model_type} checkpoint without preprocessor_config.json; copy it from the "
            "original checkpoint (it sets the image pixel budget)"
        )

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    vocab = tokenizer.get_vocab()
    if is_vlm:
        for name, key in ((IMAGE_PAD, "image_token_id"), (VIDEO_PAD, "video_token_id"),
                          (VISION_START, "vision_start_token_id"), (VISION_END, "vision_end_token_id")):
            want = cfg.get(key)
            got = vocab.get(name)
            if want is not None and got != want:
                raise ModelLoadError(
                    f"tokenizer maps {name} to id {got} but config.json says {key}={want}; the tokenizer "
                    f"and the weights in {path} come from different checkpoints: fix {key} or the tokenizer"
                )

    dev = torch.device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    auto = transformers.AutoModelForImageTextToText if is_vlm else transformers.AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"transformers could not load the weights in {path}: {str(e).splitlines()[0]}") from e
    model.to(dev)
    text_cfg = model.config.get_text_config()
    if len(tokenizer) > text_cfg.vocab_size:
        raise ModelLoadError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {text_cfg.vocab_size}; "
            "they come from different checkpoints"
        )

    image_processor = None
    if is_vlm:
        image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(path)
    processor = ChatProcessor(tokenizer, image_processor, max_prompt_tokens=max_prompt_tokens)

    if freeze_vision and is_vlm:
        # "encoder": the ViT stays frozen but the merger (the projector into the language model)
        # trains, as in LLaVA-style tuning: the language model can reshape what it reads from the
        # pictures without the random tiny tower collapsing to a constant (docs/results.md).
        model.model.visual.requires_grad_(False)
        if freeze_vision == "encoder":
            model.model.visual.merger.requires_grad_(True)
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        model = _apply_lora(model, lora, is_vlm)

    suppress = sorted(processor.never_generate_ids | set(range(len(tokenizer), text_cfg.vocab_size)))
    return LoadedModel(model=model, processor=processor, path=path, model_type=model_type, suppress_ids=suppress)


def _load_adapter_dir(path: Path, lora: LoraOptions | None, **load_kw) -> LoadedModel:
    """An adapter-only folder (``model.lora_save: adapter``): its base model with the adapter merged in.

    So ``lmmr1 eval`` and a pipeline's next stage take an adapter folder like a full checkpoint.
    """
    cfg_file = path / "adapter_config.json"
    try:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, OSError, AttributeError) as e:
        raise ModelLoadError(f"{cfg_file} is not a valid PEFT adapter config: {e}") from e
    if not base or not (Path(base).expanduser() / "config.json").exists():
        raise ModelLoadError(
            f"{path} holds a LoRA adapter only; its base model {base!r} (base_model_name_or_path in {cfg_file}) "
            "is not a local checkpoint directory here: set that field to the base model's folder"
        )
    try:
        import peft
    except ImportError as e:
        raise ModelLoadError(f"{path} holds a LoRA adapter; loading it needs peft: pip install 'lmmr1[peft]'") from e
    lm = load_model(base, **load_kw)
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model = peft.PeftModel.from_pretrained(lm.model, path).merge_and_unload()
    lm.model = _apply_lora(model, lora, lm.is_multimodal) if lora is not None else model
    lm.path = path
    return lm


def _lora_candidates(model, is_vlm: bool) -> set[str]:
    """Leaf names of the linear layers LoRA may target: the language model's, never the vision tower's."""
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "." in name and (not is_vlm or "language_model" in name):
            out.add(name.rsplit(".", 1)[1])
    return out


def _apply_lora(model, opts: LoraOptions, is_vlm: bool):
    try:
        import peft
    except ImportError as e:
        raise ModelLoadError("LoRA needs the peft package: pip install 'lmmr1[peft]'") from e
    if opts.r < 1:
        raise ModelLoadError(f"LoRA rank must be >= 1, got {opts.r}")
    if not 0.0 <= opts.dropout < 1.0:
        raise ModelLoadError(f"LoRA dropout must be in [0, 1), got {opts.dropout}")
    targets = tuple(opts.target_modules)
    valid = _lora_candidates(model, is_vlm)
    unknown = [t for t in targets if t not in valid]
    if not targets or unknown:
        what = f"{unknown[0]!r} is not a linear layer of the language model" if unknown else "no module given"
        raise ModelLoadError(f"LoRA target modules (model.lora_target_modules): {what}; "
                             f"choose from {', '.join(sorted(valid))}")
    names = "|".join(targets)
    # Restrict to the language model so the vision tower's own q/k/v stay full-rank (or frozen).
    target = rf".*language_model.*\.({names})$" if is_vlm else rf".*\.({names})$"
    cfg = peft.LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=target,
                          bias="none")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing`` alias; the warning is
        # about peft's code, not the user's, and would otherwise print on every LoRA run.
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return peft.get_peft_model(model, cfg)
