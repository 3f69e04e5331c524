"""What the chest and mammography trainers share: cases, the network, training, CV, export.

The model is a small fully-convolutional network that maps an image to a heat map of logits (one
cell per ``stride`` pixels). It learns from crops: crops around marked lesions (target: a
Gaussian bump at the lesion centre, sized by the lesion) and crops of background (lung fields or
breast tissue, anywhere in the image, and, later in training, the places where the model itself
fired wrongly: hard negatives). Applied to a whole image it points at what it found; the image
score is the heat map's maximum.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from qamqor.ai.bundle import (
    Calibration,
    FindingSpec,
    InputSpec,
    Manifest,
    OperatingPoint,
    OutputSpec,
    Task,
    sha256_hex,
    write_bundle,
)
from qamqor.ai.inference import find_peaks
from qamqor.ai.preprocess import Prepared
from training import evaluate

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import torch  # noqa: E402  (after OMP_NUM_THREADS)
from torch import nn  # noqa: E402

torch.set_num_threads(THREADS)


def set_threads(threads: int) -> None:
    """Torch's intra-op threads (results are reproducible for a given thread count)."""
    torch.set_num_threads(max(1, threads))


# --------------------------------------------------------------------------------------------
# Cases


@dataclass
class Lesion:
    """A marked lesion, in model pixels."""

    x: float | None
    y: float | None
    radius: float
    """Radius in model pixels (JSRT: half the nodule size; MIAS: the circle's radius)."""
    radius_mm: float
    kind: str
    malignant: bool

    @property
    def positioned(self) -> bool:
        return self.x is not None and self.y is not None


@dataclass
class Case:
    """One image, preprocessed exactly as at inference time."""

    case_id: str
    patient: str
    prepared: Prepared
    lesions: list[Lesion]
    tissue: np.ndarray
    """Boolean mask (model pixels, unpadded) where background crops are centred most often."""
    malignant: bool
    groups: dict[str, str] = field(default_factory=dict)
    """Subgroup attributes for the tables (subtlety, density, class...)."""

    @property
    def image(self) -> np.ndarray:
        image: np.ndarray = self.prepared.tensor[0, 0]
        return image

    @property
    def abnormal(self) -> bool:
        return bool(self.lesions)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; fixed in advance per task (no tuning on test)."""

    width: int = 16
    crop: int = 64
    batch: int = 32
    iterations: int = 1200
    lr: float = 2e-3
    weight_decay: float = 1e-4
    positive_fraction: float = 0.4
    """Share of crops centred (with jitter) on a lesion."""
    anywhere_fraction: float = 0.2
    """Share of background crops centred anywhere (not only in the tissue mask)."""
    hard_fraction: float = 0.5
    """Share of background crops taken from hard negatives once mining has started."""
    mining_at: tuple[float, ...] = (0.4, 0.7)
    """Fractions of training after which hard negatives are mined on the training images."""
    mining_peaks: int = 8
    sigma_scale: float = 0.5
    """Target bump's sigma = sigma_scale * lesion radius (at least min_sigma_px)."""
    min_sigma_px: float = 3.0
    max_sigma_px: float = 24.0
    positive_weight: float = 8.0
    flip_vertical: bool = True
    flip_horizontal: bool = True
    synthetic_fraction: float = 0.0
    """Share of crops with a simulated lesion (see ``CropSampler._synthetic``)."""
    synthetic_radius_px: tuple[float, float] = (2.0, 10.0)
    synthetic_contrast: tuple[float, float] = (0.08, 0.45)
    synthetic_blur_px: float = 0.8
    synthetic_min_axis_ratio: float = 1.0
    """Simulated masses are ellipses with axis ratio between this and 1."""
    synthetic_lobulation: float = 0.0
    """Up to this relative amplitude of 2-5 lobes on a simulated mass's outline."""
    synthetic_calcification_share: float = 0.0
    """Share of simulated lesions that are clusters of calcification-like specks."""
    synthetic_calcification_contrast: tuple[float, float] = (0.5, 2.0)
    field_gating: bool = False
    """Train a :class:`FieldNet` on the tissue masks and gate the heat map with it."""
    field_iterations: int = 250
    flip_averaging: bool = False
    """Average each heat map with that of the mirrored image (evaluation, mining, export)."""
    rotate_degrees: float = 0.0
    """Crops are rotated by up to this many degrees either way."""
    max_zoom: float = 1.0
    """Crops are scaled by a factor between 1 / max_zoom and max_zoom (log-uniform)."""
    ensemble: int = 1
    """Heat networks trained with different seeds (sharing the field network) whose logits are
    averaged (inside the exported graph); member 0 is the single model of the same seed."""
    seed: int = 20240601


@dataclass(frozen=True)
class TaskSpec:
    """A model's identity, its preprocessing, and how its findings are judged."""

    name: str
    task: Task
    labels: list[str]
    input: InputSpec
    stride: int
    min_distance_mm: float
    localization_floor_mm: float
    """A top finding hits a lesion within max(lesion radius, this) of its centre."""
    intended_use: str
    training_data: str
    license: str
    group_keys: tuple[str, ...]
    config: TrainConfig


# --------------------------------------------------------------------------------------------
# Network


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HeatNet(nn.Module):
    """Fully-convolutional heat-map network: output stride 4, receptive field ~ 130 pixels.

    Channels ``width``, ``1.5 width``, ``2 width`` at full, half and quarter resolution; four
    dilated blocks (1, 2, 4, 8) at quarter resolution give the context; a 1x1 head gives the
    logit of each cell.
    """

    stride = 4

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3 = width, (3 * width) // 2, 2 * width
        self.features = nn.Sequential(
            _block(1, w1),
            _block(w1, w2, stride=2),
            _block(w2, w3, stride=2),
            _block(w3, w3),
            _block(w3, w3, dilation=2),
            _block(w3, w3, dilation=4),
            _block(w3, w3, dilation=8),
        )
        hidden, last = nn.Conv2d(w3, w3, 1), nn.Conv2d(w3, 1, 1)
        self.head = nn.Sequential(hidden, nn.ReLU(inplace=True), last)
        assert last.bias is not None
        nn.init.constant_(last.bias, -4.0)  # start near "nothing here"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class FlipAveraged(nn.Module):
    """A heat-map network averaged with its left-right mirror (test-time augmentation).

    The mirrored branch gets the mirrored image padded by one column on the left, so that its
    cells fall on the same image pixels as the direct branch's (cell k centred on pixel 4k).
    Inputs must have a width that is a multiple of the stride (the preprocessing pads to 8).
    """

    stride = 4

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        direct = self.net(x)
        mirrored = nn.functional.pad(torch.flip(x, dims=[3]), (1, 0, 0, 0), mode="replicate")
        back = torch.flip(self.net(mirrored)[..., 1:], dims=[3])
        out: torch.Tensor = 0.5 * (direct + back)
        return out


class FieldNet(nn.Module):
    """Where findings may be: a coarse segmentation of the field (lungs and heart) at stride 4.

    Works on the image averaged over 4 x 4 blocks, with dilations up to 16 cells, so that it
    sees most of the image (~250 px): enough to tell a lung from the abdomen below the
    diaphragm, which a crop-trained lesion network cannot.
    """

    stride = 4

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(4, stride=4, ceil_mode=True)
        self.body = nn.Sequential(
            _block(1, width),
            _block(width, width, dilation=2),
            _block(width, width, dilation=4),
            _block(width, width, dilation=8),
            _block(width, width, dilation=16),
            _block(width, width, dilation=2),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(self.pool(x))
        return out


class Gated(nn.Module):
    """Heat-map logits plus the log-probability of being inside the field."""

    stride = 4

    def __init__(self, heat: nn.Module, field: nn.Module) -> None:
        super().__init__()
        self.heat = heat
        self.field = field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.heat(x) + nn.functional.logsigmoid(self.field(x))
        return out


def train_field(cases: Sequence[Case], cfg: TrainConfig, seed: int) -> FieldNet:
    """Train :class:`FieldNet` on whole images against their tissue masks (dilated one cell)."""
    from scipy.ndimage import binary_dilation

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(c.prepared.tensor) for c in cases]
    targets = []
    for c, image in zip(cases, images, strict=True):
        rows, cols = image.shape[2] // 4, image.shape[3] // 4
        mask = np.zeros((rows * 4, cols * 4), dtype=np.float32)
        mask[: c.tissue.shape[0], : c.tissue.shape[1]] = c.tissue
        coarse = mask.reshape(rows, 4, cols, 4).mean(axis=(1, 3)) > 0.25
        coarse = binary_dilation(coarse, iterations=1)
        targets.append(torch.from_numpy(coarse.astype(np.float32))[None, None])
    net = FieldNet()
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(cfg.field_iterations):
        chosen = rng.choice(len(cases), size=min(8, len(cases)), replace=False)
        flip = rng.random() < 0.5
        batch_x = torch.cat([images[k] for k in chosen])
        batch_y = torch.cat([targets[k] for k in chosen])
        if flip:  # same width for the whole batch is not guaranteed: flip per batch
            batch_x, batch_y = torch.flip(batch_x, dims=[3]), torch.flip(batch_y, dims=[3])
        gain = 1.0 + 0.1 * torch.randn(len(chosen), 1, 1, 1)
        logits = net(batch_x * gain)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    net.eval()
    return net


class Averaged(nn.Module):
    """The mean of several heat-map networks' logits (an ensemble of seeds)."""

    stride = 4

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.nets[0](x)
        for net in self.nets[1:]:
            out = out + net(x)
        return out / len(self.nets)


def inference_model(net: nn.Module, cfg: TrainConfig, field: nn.Module | None = None) -> nn.Module:
    """The network as it is evaluated and exported."""
    model = FlipAveraged(net) if cfg.flip_averaging else net
    if field is not None:
        model = Gated(model, field)
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# Training


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _targets(bumps: Sequence[tuple[float, float, float]], size: int, stride: int) -> np.ndarray:
    """Target heat map of a crop: the maximum of Gaussian bumps (x, y, sigma in crop pixels)."""
    cells = size // stride
    grid = np.arange(cells, dtype=np.float32) * stride
    target = np.zeros((cells, cells), dtype=np.float32)
    for x, y, sigma in bumps:
        gx = np.exp(-((grid - x) ** 2) / (2 * sigma**2))
        gy = np.exp(-((grid - y) ** 2) / (2 * sigma**2))
        np.maximum(target, np.outer(gy, gx), out=target)
    return target


class CropSampler:
    """Draws training crops: lesions, background in tissue, anywhere, and hard negatives."""

    def __init__(self, cases: Sequence[Case], cfg: TrainConfig, stride: int, seed: int) -> None:
        self.cases = list(cases)
        self.cfg = cfg
        self.stride = stride
        self.rng = np.random.default_rng(seed)
        grid = np.arange(cfg.crop, dtype=np.float64) - (cfg.crop - 1) / 2
        self.offsets = np.stack(np.meshgrid(grid, grid, indexing="ij"))
        self.positives = [
            (i, lesion)
            for i, c in enumerate(self.cases)
            for lesion in c.lesions
            if lesion.positioned
        ]
        self.tissue = [np.argwhere(c.tissue) for c in self.cases]
        self.hard: list[tuple[int, float, float]] = []

    def _centre(self) -> tuple[int, float, float]:
        rng, cfg = self.rng, self.cfg
        if self.positives and rng.random() < cfg.positive_fraction:
            i, lesion = self.positives[rng.integers(len(self.positives))]
            assert lesion.x is not None and lesion.y is not None
            jitter = rng.uniform(-0.3, 0.3, size=2) * cfg.crop
            return i, lesion.x + jitter[0], lesion.y + jitter[1]
        if self.hard and rng.random() < cfg.hard_fraction:
            i, x, y = self.hard[rng.integers(len(self.hard))]
            jitter = rng.uniform(-0.25, 0.25, size=2) * cfg.crop
            return i, x + jitter[0], y + jitter[1]
        i = int(rng.integers(len(self.cases)))
        case = self.cases[i]
        if rng.random() < cfg.anywhere_fraction or len(self.tissue[i]) == 0:
            return i, rng.uniform(0, case.prepared.width), rng.uniform(0, case.prepared.height)
        y, x = self.tissue[i][rng.integers(len(self.tissue[i]))]
        return i, float(x), float(y)

    def _synthetic(self) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
        """A crop with a simulated lesion: the projection of a sphere (a nodule-like opacity)
        added at a random place in the tissue mask, contrast and size drawn log-uniformly from
        the configured ranges (in standardised grey levels and model pixels)."""
        from scipy.ndimage import gaussian_filter

        cfg, rng = self.cfg, self.rng
        i = int(rng.integers(len(self.cases)))
        if len(self.tissue[i]) == 0:
            return self._crop(*self._centre())
        y, x = self.tissue[i][rng.integers(len(self.tissue[i]))]
        low, high = cfg.synthetic_radius_px
        radius = math.exp(rng.uniform(math.log(low), math.log(high)))
        low, high = cfg.synthetic_contrast
        contrast = math.exp(rng.uniform(math.log(low), math.log(high)))
        fake = Lesion(
            x=float(x), y=float(y), radius=radius, radius_mm=0.0, kind="synthetic", malignant=False
        )
        jitter = rng.uniform(-0.3, 0.3, size=2) * cfg.crop
        crop, bumps = self._crop(i, x + jitter[0], y + jitter[1], extra=[fake])
        bx, by, r = bumps[-1]
        mid = (cfg.crop - 1) / 2
        dx, dy = self.offsets[1] + mid - bx, self.offsets[0] + mid - by
        if rng.random() < cfg.synthetic_calcification_share:
            # a cluster of specks: tiny Gaussian dots scattered in a disc of radius r
            dots = np.zeros_like(crop)
            for _ in range(int(rng.integers(4, 16))):
                rho, phi = r * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
                ex, ey = rho * math.cos(phi), rho * math.sin(phi)
                width = rng.uniform(0.5, 0.9)
                dots += np.exp(-((dx - ex) ** 2 + (dy - ey) ** 2) / (2 * width**2))
            low, high = cfg.synthetic_calcification_contrast
            crop = crop + math.exp(rng.uniform(math.log(low), math.log(high))) * dots
            return crop.astype(np.float32), bumps
        # a mass: projection of an ellipsoid with a lobulated outline
        theta = rng.uniform(0, math.pi)
        ratio = rng.uniform(cfg.synthetic_min_axis_ratio, 1.0)
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / ratio
        angle = np.arctan2(v, u)
        lobes = 1.0 + cfg.synthetic_lobulation * rng.random() * np.cos(
            int(rng.integers(2, 6)) * angle + rng.uniform(0, 2 * math.pi)
        )
        d2 = (u**2 + v**2) / (r * lobes) ** 2
        sphere = np.sqrt(np.clip(1.0 - d2, 0.0, None))
        crop = crop + contrast * gaussian_filter(sphere, cfg.synthetic_blur_px)
        return crop.astype(np.float32), bumps

    def _crop(
        self, i: int, cx: float, cy: float, extra: Sequence[Lesion] = ()
    ) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
        """A crop centred on (cx, cy), randomly rotated, scaled and flipped; and where the
        case's lesions and the ``extra`` ones land in it: (x, y, radius) in crop pixels."""
        from scipy.ndimage import map_coordinates

        cfg, size, rng = self.cfg, self.cfg.crop, self.rng
        angle = math.radians(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
        zoom = math.exp(rng.uniform(-1, 1) * math.log(cfg.max_zoom))
        flip_x = cfg.flip_horizontal and rng.random() < 0.5
        flip_y = cfg.flip_vertical and rng.random() < 0.5
        # crop pixel (u, v) samples the image at centre + rotation(angle) @ (u - mid) / zoom
        cos, sin = math.cos(angle), math.sin(angle)
        mid = (size - 1) / 2
        d = self.offsets
        du = -d[1] if flip_x else d[1]
        dv = -d[0] if flip_y else d[0]
        src_x = cx + (cos * du - sin * dv) / zoom
        src_y = cy + (sin * du + cos * dv) / zoom
        image = self.cases[i].image
        crop = map_coordinates(
            image, [src_y, src_x], order=1, mode="constant", cval=float(image.min())
        )
        bumps = []
        for lesion in [*self.cases[i].lesions, *extra]:
            if lesion.x is None or lesion.y is None:
                continue
            ex, ey = lesion.x - cx, lesion.y - cy
            u = zoom * (cos * ex + sin * ey)
            v = zoom * (-sin * ex + cos * ey)
            u, v = (-u if flip_x else u), (-v if flip_y else v)
            bumps.append((mid + u, mid + v, lesion.radius * zoom))
        return crop.astype(np.float32), bumps

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, size = self.cfg, self.cfg.crop
        images = np.empty((cfg.batch, 1, size, size), dtype=np.float32)
        targets = np.empty((cfg.batch, 1, size // self.stride, size // self.stride), np.float32)
        for b in range(cfg.batch):
            if cfg.synthetic_fraction and self.rng.random() < cfg.synthetic_fraction:
                crop, bumps = self._synthetic()
            else:
                crop, bumps = self._crop(*self._centre())
            gain = 1.0 + 0.1 * self.rng.standard_normal()
            shift = 0.1 * self.rng.standard_normal()
            images[b, 0] = crop * gain + shift
            sized = [
                (x, y, float(np.clip(cfg.sigma_scale * r, cfg.min_sigma_px, cfg.max_sigma_px)))
                for x, y, r in bumps
            ]
            targets[b, 0] = _targets(sized, size, self.stride)
        return torch.from_numpy(images), torch.from_numpy(targets)


def heatmap(model: nn.Module, case: Case) -> np.ndarray:
    """Heat-map logits of a whole image (cropped to the unpadded image)."""
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(case.prepared.tensor)).numpy()[0, 0]
    stride = HeatNet.stride
    rows, cols = math.ceil(case.prepared.height / stride), math.ceil(case.prepared.width / stride)
    return out[:rows, :cols]


def mine_hard_negatives(
    model: nn.Module, sampler: CropSampler, spec: TaskSpec
) -> list[tuple[int, float, float]]:
    """The strongest peaks of each training image that are not on a lesion."""
    model.eval()
    hard: list[tuple[int, float, float]] = []
    spacing = spec.input.pixel_spacing_mm
    for i, case in enumerate(sampler.cases):
        peaks = find_peaks(
            heatmap(model, case),
            stride=HeatNet.stride,
            min_distance=spec.min_distance_mm / spacing,
            max_peaks=spec.config.mining_peaks,
        )
        for x, y, _ in peaks:
            if not _hits(case, x, y, spec):
                hard.append((i, x, y))
    model.train()
    return hard


def train_model(
    cases: Sequence[Case],
    spec: TaskSpec,
    *,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train one network (or ``cfg.ensemble`` of them) from scratch on ``cases``; returned as
    evaluated and exported."""
    cfg = spec.config
    seed_everything(seed)
    field = train_field(cases, cfg, seed) if cfg.field_gating else None
    nets = []
    for member in range(cfg.ensemble):
        member_seed = seed + 7919 * member
        if member:
            seed_everything(member_seed)
        offset = member * cfg.iterations

        def member_progress(step: int, loss: float, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + step, loss)

        nets.append(_train_heat(cases, spec, field, member_seed, member_progress))
    net = nets[0] if len(nets) == 1 else Averaged(nets)
    return inference_model(net, cfg, field)


def _train_heat(
    cases: Sequence[Case],
    spec: TaskSpec,
    field: nn.Module | None,
    seed: int,
    progress: Callable[[int, float], None],
) -> nn.Module:
    """One heat network (hard negatives mined with the field gate, if any)."""
    cfg = spec.config
    model = HeatNet(cfg.width)
    model.train()
    sampler = CropSampler(cases, cfg, HeatNet.stride, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.iterations, pct_start=0.15
    )
    mining = sorted({int(f * cfg.iterations) for f in cfg.mining_at})
    running = 0.0
    for step in range(cfg.iterations):
        if step in mining:
            sampler.hard = mine_hard_negatives(inference_model(model, cfg, field), sampler, spec)
        images, targets = sampler.batch()
        logits = model(images)
        weights = 1.0 + cfg.positive_weight * targets
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        progress(step + 1, running)
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# Predictions and cross-validation


def _hits(case: Case, x: float, y: float, spec: TaskSpec) -> bool:
    """Whether a model-pixel position lies on one of the case's positioned lesions."""
    spacing = spec.input.pixel_spacing_mm
    for lesion in case.lesions:
        if not lesion.positioned:
            continue
        assert lesion.x is not None and lesion.y is not None
        tolerance = max(lesion.radius_mm, spec.localization_floor_mm)
        if math.hypot(x - lesion.x, y - lesion.y) * spacing <= tolerance:
            return True
    return False


def predict(model: nn.Module, case: Case, spec: TaskSpec) -> evaluate.Prediction:
    """Score and top finding of one case, judged against its marked lesions."""
    peaks = find_peaks(
        heatmap(model, case),
        stride=HeatNet.stride,
        min_distance=spec.min_distance_mm / spec.input.pixel_spacing_mm,
        max_peaks=1,
    )
    x, y, logit = peaks[0]
    positioned = [lesion for lesion in case.lesions if lesion.positioned]
    hit = _hits(case, x, y, spec) if positioned else True
    return evaluate.Prediction(
        case_id=case.case_id,
        patient=case.patient,
        abnormal=case.abnormal,
        malignant=case.malignant,
        score=logit,
        hit=hit,
        x=x,
        y=y,
        groups=dict(case.groups),
    )


def folds_for(cases: Sequence[Case], n_folds: int, seed: int) -> list[np.ndarray]:
    """Patient-level folds, stratified by abnormal / normal: test indices per fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.array([int(c.abnormal) for c in cases])
    groups = np.array([c.patient for c in cases])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(cases)), labels, groups)]


def cross_validate(
    cases: Sequence[Case], spec: TaskSpec, *, n_folds: int, console: Any
) -> list[evaluate.Prediction]:
    """Out-of-fold predictions for every case; each fold's model never sees its test patients."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    folds = folds_for(cases, n_folds, spec.config.seed)
    predictions: list[evaluate.Prediction] = []
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        for k, test in enumerate(folds):
            test_set = set(test.tolist())
            train = [c for i, c in enumerate(cases) if i not in test_set]
            total = spec.config.iterations * spec.config.ensemble
            task = bar.add_task(f"fold {k + 1}/{n_folds}", total=total, loss=0.0)

            def update(step: int, loss: float, task: Any = task) -> None:
                bar.update(task, completed=step, loss=loss)

            model = train_model(train, spec, seed=spec.config.seed + k + 1, progress=update)
            fold_predictions = [predict(model, cases[i], spec) for i in sorted(test_set)]
            predictions.extend(fold_predictions)
            summary = evaluate.summarise_fold(fold_predictions)
            bar.console.print(f"  fold {k + 1}: {summary}")
    return predictions


_POOL: tuple[list[Case], TaskSpec, list[np.ndarray], Path | None] | None = None


def _pool_init(
    cases: list[Case],
    spec: TaskSpec,
    folds: list[np.ndarray],
    threads: int,
    work_dir: Path | None,
) -> None:
    global _POOL
    _POOL = (cases, spec, folds, work_dir)
    set_threads(threads)


def _job_file(work_dir: Path, spec: TaskSpec, folds: list[np.ndarray], k: int) -> Path:
    """Where job ``k``'s result is kept: named by everything that decides it."""
    import hashlib

    key = json.dumps(
        {
            "spec": repr(spec),
            "folds": [f.tolist() for f in folds],
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return work_dir / f"{spec.name}-{digest}-{'final' if k < 0 else f'fold{k + 1}'}.pt"


def _pool_job(k: int) -> tuple[int, Any, float]:
    """Fold ``k``'s out-of-fold predictions, or (k = -1) the shipped model; and the seconds.

    With a work folder, a finished job's result is kept there and reused by a later run with
    the same recipe, folds, thread count and library versions (resuming an interrupted run).
    """
    assert _POOL is not None
    cases, spec, folds, work_dir = _POOL
    kept = _job_file(work_dir, spec, folds, k) if work_dir is not None else None
    if kept is not None and kept.is_file():
        result, took = torch.load(kept, weights_only=False)
        return k, result, took
    timer = Timer()
    if k < 0:
        result: Any = train_model(cases, spec, seed=spec.config.seed)
    else:
        test_set = set(folds[k].tolist())
        train = [c for i, c in enumerate(cases) if i not in test_set]
        model = train_model(train, spec, seed=spec.config.seed + k + 1)
        result = [predict(model, cases[i], spec) for i in sorted(test_set)]
    took = timer.seconds()
    if kept is not None and k >= 0:  # the fold's model too, for later analysis of its maps
        kept.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, kept.with_name(kept.stem + "-model.pt"))
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        torch.save((result, took), kept.with_suffix(".tmp"))
        kept.with_suffix(".tmp").replace(kept)
    return k, result, took


def cross_validate_parallel(
    cases: Sequence[Case],
    spec: TaskSpec,
    *,
    n_folds: int,
    jobs: int,
    threads: int,
    console: Any,
    final: bool,
    work_dir: Path | None = None,
) -> tuple[list[evaluate.Prediction], nn.Module | None, dict[str, float]]:
    """The folds (and the shipped model) in ``jobs`` worker processes of ``threads`` threads.

    Every fold and the shipped model are seeded on their own, so the predictions and weights
    are those of the sequential run with the same thread count; only the wall time changes.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    folds = folds_for(cases, n_folds, spec.config.seed)
    timer = Timer()
    by_fold: dict[int, list[evaluate.Prediction]] = {}
    model: nn.Module | None = None
    seconds: dict[str, float] = {}
    fold_seconds = 0.0
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_pool_init,
        initargs=(list(cases), spec, folds, threads, work_dir),
    ) as pool:
        ks = ([-1] if final else []) + list(range(n_folds))  # the longest job first
        futures = [pool.submit(_pool_job, k) for k in ks]
        for future in as_completed(futures):
            k, result, took = future.result()
            if k < 0:
                model, seconds["final_training"] = result, round(took, 1)
                console.print(f"  shipped model trained in {took / 60:.1f} min")
            else:
                by_fold[k] = result
                fold_seconds += took
                summary = evaluate.summarise_fold(result)
                console.print(f"  fold {k + 1}: {summary} ({took / 60:.1f} min)")
            if len(by_fold) == n_folds and "cross_validation" not in seconds:
                # one worker: the folds' own times (also right when they were kept from an
                # earlier, interrupted run); several: the wall time
                wall = fold_seconds if jobs == 1 else timer.seconds()
                seconds["cross_validation"] = round(wall, 1)
    predictions = [p for k in range(n_folds) for p in by_fold[k]]
    return predictions, model, seconds


def train_final(cases: Sequence[Case], spec: TaskSpec, *, console: Any) -> nn.Module:
    """The shipped model: the same recipe on every case."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("[bold]final model"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        console=console,
    ) as bar:
        total = spec.config.iterations * spec.config.ensemble
        task = bar.add_task("final", total=total, loss=0.0)
        return train_model(
            cases,
            spec,
            seed=spec.config.seed,
            progress=lambda step, loss: bar.update(task, completed=step, loss=loss),
        )


# --------------------------------------------------------------------------------------------
# Export


def export_onnx(model: nn.Module, spec: TaskSpec) -> bytes:
    """ONNX bytes with dynamic height and width."""
    import io

    model.eval()
    dummy = torch.zeros(1, 1, 4 * spec.input.size_multiple, 4 * spec.input.size_multiple)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (dummy,),
        buffer,  # type: ignore[arg-type]
        input_names=[spec.input.tensor_name],
        output_names=["heatmap"],
        dynamic_axes={
            spec.input.tensor_name: {2: "height", 3: "width"},
            "heatmap": {2: "cells_y", 3: "cells_x"},
        },
        opset_version=17,
        dynamo=False,
    )
    return buffer.getvalue()


def calibration_from(predictions: Sequence[evaluate.Prediction]) -> Calibration:
    """Platt scaling of out-of-fold image scores (heat-map maxima) to probabilities."""
    from sklearn.linear_model import LogisticRegression

    scores = np.array([[p.score] for p in predictions])
    labels = np.array([int(p.abnormal) for p in predictions])
    fit = LogisticRegression(C=1e4).fit(scores, labels)
    slope = float(fit.coef_[0, 0])
    if slope <= 0:  # scores carry no signal; keep a monotone map rather than invert it
        slope = 1e-3
    return Calibration(slope=slope, intercept=float(fit.intercept_[0]))


def operating_points(
    predictions: Sequence[evaluate.Prediction], calibration: Calibration
) -> dict[str, OperatingPoint]:
    from qamqor.ai.inference import calibrate

    probability = calibrate(np.array([p.score for p in predictions]), calibration)
    abnormal = np.array([p.abnormal for p in predictions])
    points: dict[str, OperatingPoint] = {}
    for name, specificity in (("default", 0.9), ("sensitive", 0.8)):
        threshold, sens, spec = evaluate.threshold_at_specificity(
            probability[abnormal], probability[~abnormal], specificity
        )
        points[name] = OperatingPoint(
            threshold=float(np.clip(threshold, 0.0, 1.0)),
            specificity=spec,
            sensitivity=sens,
            description=f"{specificity:.0%} specificity in cross-validation (image level)",
        )
    return points


def build_bundle(
    model: nn.Module,
    spec: TaskSpec,
    *,
    version: str,
    report: evaluate.Report,
    predictions: Sequence[evaluate.Prediction],
    out_dir: Path,
) -> tuple[Path, Manifest]:
    onnx = export_onnx(model, spec)
    calibration = calibration_from(predictions)
    manifest = Manifest(
        name=spec.name,
        version=version,
        task=spec.task,
        labels=spec.labels,
        input=spec.input,
        output=OutputSpec(tensor_name="heatmap", stride=HeatNet.stride),
        calibration=calibration,
        findings=FindingSpec(min_distance_mm=spec.min_distance_mm, max_findings=3, min_score=0.05),
        operating_points=operating_points(predictions, calibration),
        intended_use=spec.intended_use,
        training_data=spec.training_data,
        validation=report.manifest_metrics(),
        license=spec.license,
        created=datetime.now(UTC).replace(microsecond=0),
        onnx_sha256=sha256_hex(onnx),
    )
    path = write_bundle(out_dir / manifest.file_name, manifest, onnx)
    return path, manifest


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def config_dict(spec: TaskSpec) -> dict[str, Any]:
    return {"stride": HeatNet.stride, **asdict(spec.config)}


def write_predictions(path: Path, predictions: Sequence[evaluate.Prediction]) -> None:
    """Out-of-fold predictions as JSON lines (dataset image ids and scores; no patient data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for p in predictions:
            handle.write(json.dumps(asdict(p)) + "\n")


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
