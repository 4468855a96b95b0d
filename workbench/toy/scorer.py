"""The shapes world's PickScore: a small CLIP trained on the shapes world, shipped in `TOY_SCORER_DIR`.

Made the way PickScore was made from CLIP, in two stages on CPU:

1. Contrastive (CLIP loss) on jittered renders of the training captions and on the toy model's own
   candidates for them (and their left-right mirrors). A candidate is captioned by what the oracle
   reads in it, not by the caption it was drawn for: every candidate is used, its wrong drawings
   (pale purple, blob crosses) become examples of the words they really show, and the tower learns
   the oracle's boundaries on exactly the images it will judge. A reading that is a held-out
   combination is captioned without its position, so no held-out caption reaches the scorer.
   Captions that leave an attribute open match images of any value of it: the targets of the loss
   are every caption in the batch that the image satisfies.
2. Preference tuning on oracle-judged pairs of candidates drawn for the same training caption,
   with `training.losses.pairwise_preference_loss` (the better oracle score wins, equal scores are
   ties at 0.5, which teach equal scores), plus a weighted contrastive batch per step.

The score is PickScore's, ``exp(logit_scale) * cos(image_emb, text_emb)``, and the folder is a
plain CLIPModel + CLIPProcessor, so ``pickscore:PATH`` loads it like PickScore and
`reward_models.step_aware.StepAwareCLIP.from_clip` can start a step-aware model from it.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageOps
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from reward_models.base import Scorer
from reward_models.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Caption,
    ShapesOracle,
    held_out_captions,
    is_held_out,
    parse_caption,
    read_image,
    render,
    train_captions,
)
from reward_models.spec import scorer_from_spec
from training.losses import pairwise_preference_loss
from training.sampling import native_side
from workbench.evaluation import sample_images
from workbench.threads import torch_threads
from workbench.toy import DEFAULT_GUIDANCE, DEFAULT_STEPS, TOY_MODEL_DIR
from workbench.toy.config import ToyScorerConfig

SPO_THRESHOLD = 0.3
"""SPO's softmax threshold for SD1.5: a pair counts when tanh(|score gap| / 2) exceeds it."""

_OPEN = -1


@dataclass
class Candidates:
    """Toy-model images drawn for captions, with their oracle scores.

    Attributes:
        images: N images.
        captions: The caption each image was drawn for, (N,).
        scores: Oracle score of each image for its caption, shape (N,).
    """

    images: list[Image.Image]
    captions: list[str]
    scores: np.ndarray

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of candidates drawn for the same caption.

        Returns:
            Indices of the first and second images, shape (P,) each, and the first image's
            label, shape (P,): 1 when its oracle score is higher, 0 when lower, 0.5 for a tie.
        """
        groups: dict[str, list[int]] = defaultdict(list)
        for index, caption in enumerate(self.captions):
            groups[caption].append(index)
        pairs = np.array(
            [pair for members in groups.values() for pair in combinations(members, 2)], dtype=int
        )
        first, second = pairs.reshape(-1, 2).T
        gap = self.scores[first] - self.scores[second]
        return first, second, np.where(gap > 0, 1.0, np.where(gap < 0, 0.0, 0.5))


def mirrored(candidates: Candidates) -> Candidates:
    """Left-right mirror images of the candidates, each with its caption's left and right swapped and re-scored.

    The shapes and the oracle are symmetric about the vertical axis, and the swap keeps a training
    caption a training caption, so the mirrors double the toy model's images and pairs for free.
    """
    images = [ImageOps.mirror(image) for image in candidates.images]
    captions = [_mirror_caption(parse_caption(text)).text for text in candidates.captions]
    return Candidates(images, captions, ShapesOracle().score(images, captions))


def _mirror_caption(caption: Caption) -> Caption:
    swap = {"left": "right", "right": "left"}
    words = [swap.get(word, word) for word in caption.position.split()]
    return Caption(caption.colour, caption.shape, " ".join(words), caption.size)


def spaced(captions: Sequence[str], n: int) -> list[str]:
    """``n`` captions evenly spaced through `captions` (all of them when n is their number)."""
    return list(captions[:: len(captions) // n][:n]) if n else []


def toy_candidates(
    pipe: StableDiffusionPipeline, captions: Sequence[str], seeds: Sequence[int]
) -> Candidates:
    """Draws one image per caption and seed as evaluation does (`sample_images`) and scores it with the oracle."""
    drawn = list(sample_images(pipe, captions, seeds, DEFAULT_STEPS, DEFAULT_GUIDANCE))
    images = [image for _, _, image in drawn]
    prompts = [prompt for prompt, _, _ in drawn]
    return Candidates(images, prompts, ShapesOracle().score(images, prompts))


def pairwise_agreement(scorer: Scorer, candidates: Candidates) -> dict[str, float | int | dict]:
    """How a scorer's preferences on every same-caption pair of `candidates` compare with the oracle's.

    Args:
        scorer: Any scorer (for the shipped one, ``scorer_from_spec("pickscore:" + TOY_SCORER_DIR)``).
        candidates: Images with their oracle scores.

    Returns:
        ``pairs``, ``decided`` (pairs the oracle does not tie), ``accuracy`` (share of decided pairs
        the scorer orders like the oracle, equal scores counting half), and for decided pairs and
        ties the quantiles (10, 50, 90 %) of the absolute score gap (``gap_decided``, ``gap_tie``)
        and the share whose softmax gap passes SPO's threshold (``spo_pass_decided``,
        ``spo_pass_tie``; for decided pairs only those ordered right count).
    """
    first, second, label = candidates.pairs()
    scores = scorer.score(candidates.images, candidates.captions)
    gap = scores[first] - scores[second]
    decided = label != 0.5
    # > 0 where the scorer orders a decided pair like the oracle.
    signed = gap * np.where(label > 0.5, 1.0, -1.0)
    passes = np.tanh(np.abs(gap) / 2) > SPO_THRESHOLD

    def quantiles(values: np.ndarray) -> dict[str, float]:
        if not len(values):
            return {}
        return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (10, 50, 90)}

    def share(values: np.ndarray) -> float:
        return float(np.mean(values)) if len(values) else float("nan")

    return {
        "pairs": len(label),
        "decided": int(decided.sum()),
        "accuracy": share((signed[decided] > 0) + 0.5 * (signed[decided] == 0)),
        "gap_decided": quantiles(np.abs(gap[decided])),
        "gap_tie": quantiles(np.abs(gap[~decided])),
        "spo_pass_decided": share((passes & (signed > 0))[decided]),
        "spo_pass_tie": share(passes[~decided]),
    }


def build_scorer_model(cfg: ToyScorerConfig, tokenizer: CLIPTokenizer, image_size: int) -> CLIPModel:
    """A CLIPModel with two towers of `cfg.width` x `cfg.layers` (4 heads) for `image_size` px images.

    Raises:
        ValueError: The patch side does not divide the image side.
    """
    if image_size % cfg.patch_size:
        raise ValueError(f"patch_size {cfg.patch_size} must divide the toy model's image side {image_size}")
    tower = {
        "hidden_size": cfg.width,
        "intermediate_size": 4 * cfg.width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": 4,
    }
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**tower, "image_size": image_size, "patch_size": cfg.patch_size},
        projection_dim=cfg.width,
    )
    return CLIPModel(config)


def build_processor(tokenizer: CLIPTokenizer, image_size: int) -> CLIPProcessor:
    """The toy model's tokenizer with a CLIP image processor that keeps `image_size` px images as they are."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _codes(caption: Caption, position: bool = True) -> tuple[int, int, int, int]:
    """Colour, shape, position and size indices; `_OPEN` for a size the caption leaves open or a dropped position."""
    return (
        list(COLOURS).index(caption.colour),
        SHAPES.index(caption.shape),
        list(POSITIONS).index(caption.position) if position else _OPEN,
        _OPEN if caption.size is None else list(SIZES).index(caption.size),
    )


@dataclass
class _Captioned:
    """Images for the contrastive stage: what each shows and the caption it is trained with."""

    images: list[Image.Image]
    texts: list[str]
    shown: list[tuple[int, int, int, int]]  # `_codes` of what the image shows
    said: list[tuple[int, int, int, int]]  # `_codes` of its caption, with open attributes


def _renders(cfg: ToyScorerConfig, image_size: int) -> _Captioned:
    rng = np.random.default_rng(cfg.seed)
    captions = train_captions()
    data = _Captioned([], [], [], [])
    for index in rng.integers(len(captions), size=cfg.renders):
        said = parse_caption(captions[index])
        shown = Caption(said.colour, said.shape, said.position, said.size or str(rng.choice(list(SIZES))))
        data.images.append(render(shown, image_size, rng))
        data.texts.append(said.text)
        data.shown.append(_codes(shown))
        data.said.append(_codes(said))
    return data


def _read_captions(candidates: Candidates, rng: np.random.Generator) -> _Captioned:
    """Candidates captioned by the oracle's reading; a third leave the size open, as in the language.

    A reading that is a held-out combination (the toy model drew another colour or shape than
    asked) is captioned without its position, e.g. "a large red square": every colour-shape pair
    occurs among the training captions, so the image still teaches what it shows and no held-out
    combination is named.
    """
    data = _Captioned([], [], [], [])
    for image in candidates.images:
        reading = read_image(image)
        if reading.colour is None:
            continue
        shown = Caption(reading.colour, reading.shape, reading.position, reading.size)
        said = shown if rng.random() >= 1 / 3 else Caption(shown.colour, shown.shape, shown.position)
        with_position = not is_held_out(shown)
        data.images.append(image)
        # The position phrase is everything after the shape word.
        data.texts.append(
            said.text if with_position else said.text.partition(f" {said.shape} ")[0] + f" {said.shape}"
        )
        data.shown.append(_codes(shown))
        data.said.append(_codes(said, position=with_position))
    return data


def _pixels(processor: CLIPProcessor, images: Sequence[Image.Image]) -> torch.Tensor:
    chunks = [
        processor.image_processor(images=list(images[i : i + 512]), return_tensors="pt")["pixel_values"]
        for i in range(0, len(images), 512)
    ]
    return torch.cat(chunks)


def _tokens(processor: CLIPProcessor, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = processor.tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def _embeddings(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
    return image, text


def contrastive_loss(logits: torch.Tensor, shows: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with every true caption of an image as a target.

    Args:
        logits: ``exp(logit_scale) * cos`` of image i and caption j, shape (B, B).
        shows: Whether image i satisfies caption j, shape (B, B) bool, true on the diagonal.

    Returns:
        The mean of the image-to-text and text-to-image losses, a scalar.
    """
    target = shows.float()
    image_to_text = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class ToyScorerResult:
    """What a scorer run produced.

    Attributes:
        out_dir: The saved CLIP folder.
        cpu_seconds: Process CPU seconds per stage (``candidates``, ``renders``, ``contrastive``,
            ``preference``, ``training`` = their sum, and ``evaluation``).
        evaluation: `pairwise_agreement` of the saved scorer on held-out candidates, or None.
    """

    out_dir: Path
    cpu_seconds: dict[str, float]
    evaluation: dict | None


def train_toy_scorer(cfg: ToyScorerConfig, out_dir: str | Path, progress: bool = True) -> ToyScorerResult:
    """Trains the shapes world's PickScore and saves it as a CLIPModel + CLIPProcessor folder.

    Weights are saved in fp16 (``model.safetensors``) with ``training_config.json`` and
    ``training_log.json``; the held-out evaluation scores the saved folder through
    ``pickscore:PATH``. The same config gives the same weights on the same machine.

    Args:
        cfg: The run's settings.
        out_dir: Folder to write; existing files are overwritten.
        progress: Show a progress bar over the optimisation steps.
    """
    with torch_threads(cfg.threads):
        return _train(cfg, Path(out_dir), progress)


def _train(cfg: ToyScorerConfig, out_dir: Path, progress: bool) -> ToyScorerResult:
    cpu: dict[str, float] = {}
    clock = time.process_time()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.process_time()
        cpu[name] = round(now - clock, 1)
        clock = now

    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_MODEL_DIR))
    image_size = native_side(pipe.unet.config, pipe.vae.config)
    processor = build_processor(pipe.tokenizer, image_size)
    seeds = range(cfg.seed * cfg.candidates, (cfg.seed + 1) * cfg.candidates)
    candidates = None
    if cfg.captions:
        candidates = toy_candidates(pipe, spaced(train_captions(), cfg.captions), seeds)
        if cfg.mirror:
            flipped = mirrored(candidates)
            candidates = Candidates(
                candidates.images + flipped.images,
                candidates.captions + flipped.captions,
                np.concatenate([candidates.scores, flipped.scores]),
            )
    lap("candidates")

    data = _renders(cfg, image_size)
    if candidates is not None:
        read = _read_captions(candidates, np.random.default_rng(cfg.seed + 1))
        for name in ("images", "texts", "shown", "said"):
            getattr(data, name).extend(getattr(read, name))
    pixels = _pixels(processor, data.images)
    ids, mask = _tokens(processor, data.texts)
    shown, said = torch.tensor(data.shown), torch.tensor(data.said)
    lap("renders")

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_scorer_model(cfg, processor.tokenizer, image_size).train()
    max_logit_scale = math.log(100.0)

    def contrastive_batch() -> torch.Tensor:
        index = torch.randint(len(pixels), (cfg.contrastive_batch,), generator=generator)
        image, text = _embeddings(model, pixels[index], ids[index], mask[index])
        batch_said = said[index][None]
        shows = ((batch_said == _OPEN) | (batch_said == shown[index][:, None])).all(-1)
        return contrastive_loss(model.logit_scale.exp() * image @ text.T, shows)

    def optimise(steps: int, lr: float, loss_fn, stage: str) -> list[dict]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        schedule = _schedule(optimizer, steps)
        log = []
        for step in range(steps):
            loss, metrics = loss_fn()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=max_logit_scale)
            bar.set_postfix(stage=stage, loss=f"{loss.item():.3f}")
            bar.update()
            if (step + 1) % 100 == 0 or step + 1 == steps:
                log.append({"step": step + 1, "loss": round(loss.item(), 4), **metrics})
        return log

    bar = tqdm(
        total=cfg.contrastive_steps + cfg.preference_steps,
        desc="toy scorer",
        unit="step",
        disable=not progress,
    )
    logs = {
        "contrastive": optimise(
            cfg.contrastive_steps, cfg.contrastive_lr, lambda: (contrastive_batch(), {}), "clip"
        )
    }
    lap("contrastive")

    if cfg.preference_steps:
        first, second, label = (torch.from_numpy(a) for a in candidates.pairs())
        pair_pixels = _pixels(processor, candidates.images)
        pair_ids, pair_mask = _tokens(processor, candidates.captions)

        def preference_batch():
            index = torch.randint(len(label), (cfg.preference_batch,), generator=generator)
            a, b = first[index], second[index]
            image, text = _embeddings(model, pair_pixels[torch.cat([a, b])], pair_ids[a], pair_mask[a])
            scale = model.logit_scale.exp()
            score_a = scale * (image[: len(a)] * text).sum(-1)
            score_b = scale * (image[len(a) :] * text).sum(-1)
            loss, metrics = pairwise_preference_loss(score_a, score_b, label[index].float())
            total = loss.mean()
            if cfg.contrastive_weight:
                total = total + cfg.contrastive_weight * contrastive_batch()
            return total, {
                "accuracy": round(float(metrics["accuracy"]), 4),
                "logit_scale": round(scale.item(), 2),
            }

        logs["preference"] = optimise(cfg.preference_steps, cfg.preference_lr, preference_batch, "preference")
    bar.close()
    lap("preference")
    cpu["training"] = round(sum(cpu.values()), 1)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().half().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "training_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    clock = time.process_time()
    evaluation = None
    if cfg.eval_captions:
        held_out = toy_candidates(
            pipe, spaced(held_out_captions(), cfg.eval_captions), range(cfg.eval_candidates)
        )
        evaluation = pairwise_agreement(scorer_from_spec(f"pickscore:{out_dir}"), held_out)
    lap("evaluation")
    log = {"cpu_seconds": cpu, "evaluation": evaluation, **logs}
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return ToyScorerResult(out_dir=out_dir, cpu_seconds=cpu, evaluation=evaluation)
