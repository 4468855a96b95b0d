"""The step-aware preference model (SPM) of SPO (Liang et al. 2024, section 4.2).

A CLIP model (PickScore in the paper) whose vision encoder layers are modulated by the diffusion
timestep of the image they look at: a sinusoidal embedding of t goes through an MLP and, per
layer, a linear map to adaLN parameters (shift, scale, gate) for the attention and the MLP
branch, as in DiT:

    h = h + gate_1 * attn(LN_1(h) * (1 + scale_1) + shift_1)
    h = h + gate_2 * mlp(LN_2(h) * (1 + scale_2) + shift_2)

The per-layer maps start at zero weights with gate bias 1, so an untrained SPM computes exactly
the clean-image CLIP score for every t. The text tower is unchanged. The HF CLIP modules are
used as they are; forward hooks on each vision layer's norms, attention and MLP apply the
modulation, so the CLIP weights keep their names and the folder still loads as a CLIPModel.

Saved folder: the CLIP files (``config.json``, ``model.safetensors``, processor files), plus
``timestep_modulation.safetensors`` and ``step_aware.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import CLIPModel, CLIPProcessor

from reward_models.base import Scorer, ScorerError
from reward_models.clip import clip_inputs, load_clip

CONFIG_NAME = "step_aware.json"
WEIGHTS_NAME = "timestep_modulation.safetensors"


@dataclass(frozen=True)
class StepAwareConfig:
    """Shape of the timestep modulation.

    Attributes:
        hidden_size: Width of the vision tower.
        num_layers: Number of vision encoder layers.
        frequency_dim: Size of the sinusoidal timestep embedding.
        num_train_timesteps: T of the diffusion model; timesteps lie in [0, T).
    """

    hidden_size: int
    num_layers: int
    frequency_dim: int = 256
    num_train_timesteps: int = 1000


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DiT and the DDPM UNet.

    Args:
        timesteps: Shape (B,).
        dim: Embedding size (even).
        max_period: Longest wavelength.

    Returns:
        Shape (B, dim) float32: cosines then sines.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepModulation(nn.Module):
    """Timestep -> per-layer adaLN parameters (shift_1, scale_1, gate_1, shift_2, scale_2, gate_2)."""

    def __init__(self, config: StepAwareConfig) -> None:
        """Builds the modules at the identity initialisation (shift = scale = 0, gate = 1).

        Args:
            config: Sizes.
        """
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed = nn.Sequential(nn.Linear(config.frequency_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.heads = nn.ModuleList(nn.Linear(d, 6 * d) for _ in range(config.num_layers))
        with torch.no_grad():
            for head in self.heads:
                head.weight.zero_()
                head.bias.zero_()
                head.bias.view(6, d)[2].fill_(1.0)
                head.bias.view(6, d)[5].fill_(1.0)

    def forward(self, timesteps: Tensor) -> Tensor:
        """Args:
            timesteps: Shape (B,).

        Returns:
            Shape (num_layers, 6, B, hidden_size).
        """
        embedding = self.embed(timestep_embedding(timesteps, self.config.frequency_dim))
        embedding = F.silu(embedding)
        return torch.stack([head(embedding).unflatten(-1, (6, -1)).transpose(0, 1) for head in self.heads])


class StepAwareCLIP(nn.Module):
    """CLIP with timestep-modulated vision layers; score = exp(logit_scale) * cos(image, text)."""

    def __init__(self, clip: CLIPModel, modulation: TimestepModulation) -> None:
        """Attaches the modulation to `clip`'s vision layers (hooks; the CLIP modules are unchanged).

        Args:
            clip: A CLIPModel.
            modulation: Sized for `clip`'s vision tower.
        """
        super().__init__()
        layers = clip.vision_model.encoder.layers
        if (modulation.config.hidden_size, modulation.config.num_layers) != (
            clip.config.vision_config.hidden_size,
            len(layers),
        ):
            raise ScorerError(
                f"timestep modulation for {modulation.config.num_layers} layers of width "
                f"{modulation.config.hidden_size} does not fit a vision tower of {len(layers)} layers "
                f"of width {clip.config.vision_config.hidden_size}"
            )
        self.clip = clip
        self.modulation = modulation
        # (num_layers, 6, B, D) while `image_embeds` runs, None otherwise.
        self._params: Tensor | None = None
        for index, layer in enumerate(layers):
            layer.layer_norm1.register_forward_hook(self._shift_scale_hook(index, 0))
            layer.self_attn.register_forward_hook(self._gate_hook(index, 2))
            layer.layer_norm2.register_forward_hook(self._shift_scale_hook(index, 3))
            layer.mlp.register_forward_hook(self._gate_hook(index, 5))

    @classmethod
    def from_clip(cls, clip: CLIPModel, frequency_dim: int = 256, num_train_timesteps: int = 1000) -> StepAwareCLIP:
        """A fresh SPM around `clip`, scoring exactly like it at every timestep.

        Args:
            clip: The clean-image model (e.g. PickScore).
            frequency_dim: Size of the sinusoidal timestep embedding.
            num_train_timesteps: T of the diffusion model the SPM will judge.
        """
        config = StepAwareConfig(
            hidden_size=clip.config.vision_config.hidden_size,
            num_layers=clip.config.vision_config.num_hidden_layers,
            frequency_dim=frequency_dim,
            num_train_timesteps=num_train_timesteps,
        )
        return cls(clip, TimestepModulation(config).to(clip.device))

    def _current(self, index: int) -> Tensor:
        if self._params is None:
            raise RuntimeError("the SPM's vision layers need a timestep: call StepAwareCLIP.image_embeds")
        return self._params[index]

    def _shift_scale_hook(self, index: int, first: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            params = self._current(index)
            shift, scale = params[first][:, None], params[first + 1][:, None]
            return output * (1 + scale) + shift

        return hook

    def _gate_hook(self, index: int, slot: int):
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
            gate = self._current(index)[slot][:, None]
            # CLIPAttention returns (attn_output, attn_weights); CLIPMLP returns a tensor.
            if isinstance(output, tuple):
                return (gate * output[0], *output[1:])
            return gate * output

        return hook

    @contextmanager
    def _timesteps(self, timesteps: Tensor) -> Iterator[None]:
        self._params = self.modulation(timesteps).to(self.clip.dtype)
        try:
            yield
        finally:
            self._params = None

    def image_embeds(self, pixel_values: Tensor, timesteps: Tensor) -> Tensor:
        """Projected image embeddings of predicted-x0 images at their timesteps.

        Args:
            pixel_values: Processed images, shape (B, 3, S, S).
            timesteps: Diffusion timestep of each image, shape (B,); 0 for a finished image.

        Returns:
            Shape (B, projection_dim), not normalised.
        """
        with self._timesteps(timesteps.to(pixel_values.device)):
            return self.clip.get_image_features(pixel_values=pixel_values.to(self.clip.dtype)).pooler_output

    def text_embeds(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Projected text embeddings, shape (B, projection_dim), not normalised."""
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, timesteps: Tensor) -> Tensor:
        """Scores image-prompt pairs row by row.

        Args:
            pixel_values: Shape (B, 3, S, S).
            input_ids: Shape (B, L).
            attention_mask: Shape (B, L).
            timesteps: Shape (B,).

        Returns:
            ``exp(logit_scale) * cos(image_emb, text_emb)``, shape (B,).
        """
        image = self.image_embeds(pixel_values, timesteps)
        text = self.text_embeds(input_ids, attention_mask)
        return self.clip.logit_scale.exp() * F.cosine_similarity(image, text, dim=-1)

    def save_pretrained(self, path: str | Path, processor: CLIPProcessor) -> Path:
        """Writes the CLIP files, the modulation weights and `step_aware.json` into `path`.

        Args:
            path: Folder, created if missing.
            processor: The CLIP processor, saved alongside so the folder is self-contained.

        Returns:
            The folder.
        """
        path = Path(path)
        self.clip.save_pretrained(path)
        processor.save_pretrained(path)
        state = {key: value.detach().contiguous().cpu() for key, value in self.modulation.state_dict().items()}
        save_file(state, path / WEIGHTS_NAME)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.modulation.config), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[StepAwareCLIP, CLIPProcessor]:
        """Loads a folder written by `save_pretrained`, in eval mode.

        Args:
            path: The SPM folder.
            device: Where the model runs.
            dtype: Dtype of the CLIP weights (the modulation stays float32).

        Returns:
            The model and its processor.

        Raises:
            ScorerError: When `path` is not an SPM folder.
        """
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise ScorerError(
                f"{str(path)!r} is not a step-aware model folder (no {CONFIG_NAME}); a plain CLIP or "
                "PickScore folder becomes one with StepAwareCLIP.from_clip(...).save_pretrained(...)"
            )
        clip, processor = load_clip(path, device=device, dtype=dtype)
        modulation = TimestepModulation(StepAwareConfig(**json.loads((path / CONFIG_NAME).read_text())))
        modulation.load_state_dict(load_file(path / WEIGHTS_NAME))
        modulation.requires_grad_(False)
        return cls(clip, modulation.to(device)).eval(), processor


class StepAwareScorer(Scorer):
    """Scores predicted-x0 images at their diffusion timestep with a `StepAwareCLIP`."""

    step_aware = True

    def __init__(
        self, model: StepAwareCLIP, processor: CLIPProcessor, version: str, batch_size: int = 32
    ) -> None:
        """Wraps a loaded SPM; most callers use `from_pretrained`.

        Args:
            model: The SPM.
            processor: Its CLIP processor.
            version: Identifies the weights.
            batch_size: Images per forward pass.
        """
        self.model = model
        self.processor = processor
        self.name = "spm"
        self.version = version
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> StepAwareScorer:
        """Loads an SPM folder (see `StepAwareCLIP.save_pretrained`)."""
        model, processor = StepAwareCLIP.from_pretrained(path, device=device)
        return cls(model, processor, str(path), batch_size)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.clip.device

    def inputs(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Tensor]:
        """Model inputs for `StepAwareCLIP.forward` except timesteps (see `clip_inputs`)."""
        return clip_inputs(self.processor, images, prompts, self.device)

    @torch.no_grad()
    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        timesteps: Sequence[int] | None = None,
    ) -> np.ndarray:
        """See `Scorer.score`; finished images (`timesteps` None) are scored at t = 0."""
        self._check_lengths(images, prompts, timesteps)
        steps = torch.zeros(len(images), dtype=torch.long) if timesteps is None else torch.as_tensor(timesteps)
        scores = []
        for i in range(0, len(images), self.batch_size):
            batch = self.inputs(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
            scores.append(self.model(**batch, timesteps=steps[i : i + self.batch_size].to(self.device)))
        return torch.cat(scores).double().cpu().numpy() if scores else np.zeros(0)
