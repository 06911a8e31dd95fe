"""The picture grid: VLR, bicubic, each DSR and HR side by side for a few probes.

A row per probe; columns: the VLR input (nearest-neighbour enlarged, so its pixels show), bicubic,
each DSR, and HR. Under each tile: PSNR against HR, the cosine similarity of its EdgeFace
embedding to the HR face's, and the subject it is identified as (gallery: each subject's mean HR
embedding; "unknown" below the threshold) with a green tick or a red cross.

`comparison_grid` draws given faces (the trainer draws fixed validation probes with it at each
new best epoch); `probe_grid` picks and runs the probes of a set (``python -m tune_dsr.compare``);
`save_grid` writes either.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tune_dsr.config import GUIDE_THRESHOLD

if TYPE_CHECKING:
    import torch
    from PIL import Image, ImageDraw, ImageFont
    from torch import Tensor, nn

    from tune_dsr.data import PairedFaces
    from tune_dsr.evaluation.probes import LoadedDSR

__all__ = ["PICKS", "ProbeGrid", "comparison_grid", "grid_size", "pick_probes", "probe_grid",
           "save_grid"]


PICKS = ("random", "worst", "best")
GAP = 2  # pixels between tiles
HEADER = 14  # the column titles
LINE = 12  # one line of label text (PIL's default font is 10 px)
LABEL_LINES = 3
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)
GOOD, BAD = (0, 140, 0), (200, 0, 0)


def grid_size(rows: int, columns: int, tile: int = 112) -> tuple[int, int]:
    """(width, height) in pixels of a grid of `rows` × `columns` tiles of `tile` px."""
    width = columns * tile + (columns + 1) * GAP
    height = HEADER + rows * (tile + LABEL_LINES * LINE) + (rows + 1) * GAP
    return width, height


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
         width: int) -> str:
    """`text` cut (with "…" → "..") to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _mark(draw: ImageDraw.ImageDraw, x: int, y: int, ok: bool) -> None:
    """A drawn tick or cross, 9 px: legible whatever glyphs the default font has."""
    if ok:
        draw.line([(x, y + 5), (x + 3, y + 8), (x + 9, y + 1)], fill=GOOD, width=2)
    else:
        draw.line([(x + 1, y + 1), (x + 8, y + 8)], fill=BAD, width=2)
        draw.line([(x + 1, y + 8), (x + 8, y + 1)], fill=BAD, width=2)


def _to_pil(image: Tensor) -> Image.Image:
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def comparison_grid(vlr: Tensor, hr: Tensor, columns: Mapping[str, Tensor], identity_net: nn.Module,
                    gallery: Tensor, subject_names: Sequence[str], labels: Tensor, *,
                    threshold: float = GUIDE_THRESHOLD, probe_names: Sequence[str] | None = None
                    ) -> Image.Image:
    """A PIL image: a row per probe; columns VLR (nearest-neighbour enlarged), `columns` (name →
    faces, e.g. {"bicubic": ..., "DSR": ...}) in order, and HR.

    All images are float tensors in [0, 1]: `vlr` [N,3,s,s], `hr` and each column [N,3,H,H].
    `identity_net` (EdgeFace: images → (embedding, activations)) embeds every tile; `gallery`
    [C, D] holds one L2-normalised row per subject named by `subject_names`, and `labels` [N]
    gives each probe's gallery row. Each tile is labelled with its PSNR against HR, the cosine
    similarity of its embedding to the HR face's, and the subject it is identified as ("unknown"
    below `threshold`) with a tick (right) or a cross. Runs under ``torch.no_grad()``.
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageDraw, ImageFont

    from tune_dsr.quality import psnr
    from tune_dsr.recognition import embed

    count, size = hr.shape[0], hr.shape[-1]
    if vlr.shape[0] != count or labels.numel() != count or any(
            c.shape != hr.shape for c in columns.values()):
        shapes = {k: tuple(v.shape) for k, v in columns.items()}
        raise ValueError(f"vlr {tuple(vlr.shape)}, hr {tuple(hr.shape)}, columns {shapes} and "
                         f"{labels.numel()} labels must describe the same probes, with columns "
                         "shaped like hr")
    if gallery.shape[0] != len(subject_names):
        raise ValueError(f"{gallery.shape[0]} gallery rows for {len(subject_names)} names")
    try:
        device = next(identity_net.parameters()).device
    except StopIteration:
        device = hr.device
    enlarged = F.interpolate(vlr.float(), size=(size, size), mode="nearest")
    tiles = {f"VLR {vlr.shape[-1]}px": enlarged, **columns, "HR": hr}
    unit_gallery = F.normalize(gallery.float(), dim=1).to(device)
    with torch.no_grad():
        hr_embedding = F.normalize(embed(identity_net, hr.float().to(device)), dim=1)
        stats = {}
        for name, images in tiles.items():
            images = images.float().to(device)
            embedding = F.normalize(embed(identity_net, images), dim=1)
            best, predicted = (embedding @ unit_gallery.T).max(dim=1)
            stats[name] = {"psnr": psnr(images, hr.float().to(device)).cpu().tolist(),
                           "cos": (embedding * hr_embedding).sum(1).cpu().tolist(),
                           "best": best.cpu().tolist(), "predicted": predicted.cpu().tolist()}

    width, height = grid_size(count, len(tiles), size)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    truth = labels.flatten().tolist()
    for col, (name, images) in enumerate(tiles.items()):
        x = GAP + col * (size + GAP)
        draw.text((x + 1, 1), _fit(draw, name, font, size - 2), fill=INK, font=font)
        for row in range(count):
            y = HEADER + GAP + row * (size + LABEL_LINES * LINE + GAP)
            canvas.paste(_to_pil(images[row]), (x, y))
            s = {key: value[row] for key, value in stats[name].items()}
            known = s["best"] >= threshold
            answer = subject_names[s["predicted"]] if known else "unknown"
            right = known and s["predicted"] == truth[row]
            first = (f"{probe_names[row]}" if probe_names is not None and col == 0
                     else f"PSNR {s['psnr']:.2f} dB" if name != "HR" else "HR (target)")
            lines = [first, f"cos to HR {s['cos']:.3f}"]
            top = y + size + 1
            for i, text in enumerate(lines):
                draw.text((x + 1, top + i * LINE), _fit(draw, text, font, size - 2), fill=INK,
                          font=font)
            third = top + 2 * LINE
            _mark(draw, x + 1, third + 1, right)
            draw.text((x + 13, third), _fit(draw, f"{answer} {s['best']:.2f}", font, size - 14),
                      fill=GOOD if right else BAD, font=font)
    return canvas


def save_grid(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as a PNG (whatever the suffix), creating the folder; atomic (write then
    rename), so a reader never sees half a file, and a failed write leaves no temporary file.
    Returns the resolved path."""
    from tune_dsr.files import atomic_write

    return atomic_write(path, lambda out: image.save(out, format="PNG"))


def pick_probes(similarity: Sequence[float] | None, count: int, pick: str, total: int,
                seed: int = 0) -> list[int]:
    """Indices of the probes to show: ``worst`` / ``best`` by `similarity` (lowest / highest
    first; ties by index), ``random`` a seeded sample in index order."""
    import random

    count = min(count, total)
    if pick == "random":
        return sorted(random.Random(seed).sample(range(total), count))
    if similarity is None or len(similarity) != total:
        raise ValueError(f"pick={pick!r} needs one similarity per probe")
    order = sorted(range(total), key=lambda i: (similarity[i] if pick == "worst"
                                                else -similarity[i], i))
    return order[:count]


@dataclass
class ProbeGrid:
    """A grid drawn for a probe set: the image, the probes shown (indices into the set), and the
    first DSR's cosine similarity to HR for every probe (None with ``pick="random"``)."""

    image: Image.Image
    chosen: list[int]
    similarity: list[float] | None
    columns: list[str]


def probe_grid(data: PairedFaces, dsrs: Sequence[LoadedDSR], identity_net: nn.Module, *,
               count: int = 8, pick: str = "random", seed: int = 0,
               threshold: float = GUIDE_THRESHOLD, batch_size: int = 32,
               device: str | torch.device = "cpu") -> ProbeGrid:
    """`comparison_grid` for `count` probes of `data`, picked at random or where the first DSR's
    face is least (``worst``) or most (``best``) like HR; the gallery holds every subject's mean
    HR embedding."""
    import torch
    import torch.nn.functional as F

    from tune_dsr.data import bicubic_upscale, to_float
    from tune_dsr.recognition import embed, embed_batches, gallery_means

    device = torch.device(device)
    index_batches = list(torch.arange(len(data)).split(batch_size))
    with torch.no_grad():
        hr_embeddings = embed_batches(functools.partial(embed, identity_net),
                                      (data.hr[i] for i in index_batches), device)
        similarity = None
        if pick != "random":
            similarity = torch.cat([
                F.cosine_similarity(
                    embed(identity_net, dsrs[0].model(to_float(data.vlr[i].to(device)))),
                    hr_embeddings[i].to(device)).cpu()
                for i in index_batches]).tolist()
    gallery = gallery_means(hr_embeddings, data.subject_index, len(data.unique_subjects))
    chosen = pick_probes(similarity, count, pick, len(data), seed)

    index = torch.tensor(chosen, dtype=torch.long)
    vlr = to_float(data.vlr[index].to(device))
    hr = to_float(data.hr[index].to(device))
    with torch.no_grad():
        columns = {"bicubic": bicubic_upscale(vlr, hr.shape[-1])}
        columns.update({d.label: d.model(vlr) for d in dsrs})
    image = comparison_grid(vlr, hr, columns, identity_net, gallery, data.unique_subjects,
                            data.subject_index[index], threshold=threshold,
                            probe_names=[data.names[i] for i in chosen])
    return ProbeGrid(image, chosen, similarity, list(columns))
