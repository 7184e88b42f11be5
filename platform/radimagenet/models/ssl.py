"""Self-supervised pretraining objectives on any timm backbone, for unlabelled radiology archives.

    net = build_ssl("dino", "resnet50", in_chans=3, image_size=224, settings=SSLSection())
    losses = net(images)       # train mode: one loss per image [B] (the engine averages them)
    feats = net(images)        # eval mode: the exported backbone's pooled features [B, D]
    net.after_step(progress)   # DINO: the teacher follows the student (EMA); nothing for mae
    net.backbone               # what is registered: the timm model without a head (num_classes=0)

``dino`` (Caron et al. 2021, self-distillation without labels): a student and an EMA teacher of the same
architecture, each with a projection head (MLP, L2-normalised bottleneck, weight-normalised prototypes);
the student learns to predict, from every crop, the teacher's centred and sharpened softmax over the
prototypes for the two global crops. The teacher is what is registered.

``mae`` (masked-image modelling): random square patches of the image (``mask_ratio`` of them) are
blanked, the backbone encodes the masked image and a light decoder (a 1x1 convolution and a pixel
shuffle from its last feature map) reconstructs the pixels; the loss is the L1 error on the blanked
pixels. Masking in pixel space (SimMIM, Xie et al. 2022) rather than dropping tokens (MAE, He et al.
2022) is what lets the same objective run on CNNs (ResNet, DenseNet, Inception) and ViTs alike.

Views are made on the device from the loader's batch (already a random resized crop with a flip), so
the loader stays the supervised one: further random resized crops (``roi_align``), horizontal flips,
brightness/contrast jitter and Gaussian blur; no colour jitter, no vertical flips (grey images, fixed
cranio-caudal anatomy). Random draws use torch's generator, which the engine seeds per batch from
``(seed, epoch, position, rank)``: a run resumed on as many workers draws the same views.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radimagenet.models.ssl_config import SSLSection

# ----------------------------------------------------------------------------------- views


def random_crops(x: torch.Tensor, size: int, scale: tuple[float, float]) -> torch.Tensor:
    """A random resized crop of each image (area ``scale`` of the image, aspect 3/4-4/3), ``size`` square."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale) * h * w
    ratio = torch.exp(torch.empty(b, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)))
    cw = torch.sqrt(area * ratio).clamp(4, w)
    ch = torch.sqrt(area / ratio).clamp(4, h)
    x0 = torch.rand(b, device=dev) * (w - cw)
    y0 = torch.rand(b, device=dev) * (h - ch)
    boxes = torch.stack([torch.arange(b, device=dev, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], 1).to(x.dtype)
    return roi_align(x.contiguous(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def gaussian_blur(x: torch.Tensor, p: float, size_ref: int = 224) -> torch.Tensor:
    """Blur a random ``p`` share of the images (one sigma in 0.1-2.0 px at 224 px, scaled to the size)."""
    if p <= 0:
        return x
    sigma = float(torch.empty(()).uniform_(0.1, 2.0)) * x.shape[-1] / size_ref
    radius = min(max(1, math.ceil(3 * sigma)), (x.shape[-1] - 1) // 2)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    pick = torch.rand(len(x), device=x.device) < p
    return torch.where(pick.view(-1, 1, 1, 1), y, x)


def view(x: torch.Tensor, size: int, scale: tuple[float, float], blur: float) -> torch.Tensor:
    """One augmented view of a batch of normalised grey images: crop, flip, intensity jitter, blur."""
    v = random_crops(x, size, scale)
    b = len(v)
    flip = torch.rand(b, device=v.device) < 0.5
    v = torch.where(flip.view(-1, 1, 1, 1), v.flip(-1), v)
    jitter = torch.rand(b, device=v.device) < 0.8
    contrast = torch.where(jitter, torch.empty(b, device=v.device).uniform_(0.6, 1.4), torch.ones(b, device=v.device))
    shift = torch.where(jitter, torch.empty(b, device=v.device).uniform_(-0.4, 0.4), torch.zeros(b, device=v.device))
    v = v * contrast.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)
    return gaussian_blur(v, blur)


# ----------------------------------------------------------------------------------- networks


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map ``[B, D, h, w]`` (a ViT's patch tokens laid out on their grid)."""
    from radimagenet.eval.explain import token_grid

    return token_grid(backbone, backbone.forward_features(x))


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP, an L2-normalised bottleneck, weight-normalised prototypes
    (their norm fixed to 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


def teacher_momentum(base: float, progress: float) -> float:
    """DINO's teacher momentum after ``progress`` (0-1) of training: ``base`` rising to 1 by a half cosine."""
    return 1 - (1 - base) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2


class DINO(nn.Module):
    """Self-distillation with no labels (see the module doc); ``backbone`` is the EMA teacher."""

    objective = "dino"

    def __init__(self, student: nn.Module, image_size: int, s: SSLSection):
        super().__init__()
        dim = student.num_features
        self.student = student
        self.student_head = DINOHead(dim, s.out_dim, s.hidden_dim, s.bottleneck_dim)
        self.backbone = copy.deepcopy(student)
        self.teacher_head = copy.deepcopy(self.student_head)
        for p in [*self.backbone.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, s.out_dim))
        self.s, self.image_size = s, image_size
        self.local_size = s.local_size or max(8, round(image_size * 96 / 224))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.backbone(x)
        s, size = self.s, self.image_size
        globals_ = torch.cat([view(x, size, (0.4, 1.0), 1.0), view(x, size, (0.4, 1.0), 0.1)])
        with torch.no_grad():
            t = self.teacher_head(self.backbone(globals_)).float()
            probs = F.softmax((t - self.center) / s.teacher_temp, dim=-1).chunk(2)
            self._update_center(t)
        out = [self.student_head(self.student(globals_))]
        if s.local_crops:
            locals_ = torch.cat([view(x, self.local_size, (0.05, 0.4), 0.5) for _ in range(s.local_crops)])
            out.append(self.student_head(self.student(locals_)))
        logp = F.log_softmax(torch.cat(out).float() / s.student_temp, dim=-1).chunk(2 + s.local_crops)
        pairs = [(i, j) for i in range(2) for j in range(len(logp)) if i != j]
        return sum(-(probs[i] * logp[j]).sum(-1) for i, j in pairs) / len(pairs)

    @torch.no_grad()
    def _update_center(self, t: torch.Tensor) -> None:
        mean = t.mean(0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
            mean /= torch.distributed.get_world_size()
        self.center.mul_(self.s.center_momentum).add_(mean, alpha=1 - self.s.center_momentum)

    @torch.no_grad()
    def after_step(self, progress: float = 0.0) -> None:
        """The teacher moves towards the student: an EMA whose momentum rises from ``ssl.teacher_momentum``
        to 1 by a cosine over training (``progress``: the share of the run's steps done), as DINO's recipe."""
        m = teacher_momentum(self.s.teacher_momentum, progress)
        for student, teacher in ((self.student, self.backbone), (self.student_head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)


class MaskedImageModel(nn.Module):
    """Masked-image modelling (``objective=mae``, see the module doc); ``backbone`` is the encoder."""

    objective = "mae"

    def __init__(self, backbone: nn.Module, in_chans: int, image_size: int, s: SSLSection):
        super().__init__()
        self.backbone = backbone
        # the pooled head's norm (a ViT pooling patch tokens has fc_norm) never sees the reconstruction loss:
        # frozen, or DDP (find_unused_parameters=False) stops at the second step waiting for its gradient
        for p in backbone.fc_norm.parameters() if isinstance(getattr(backbone, "fc_norm", None), nn.Module) else ():
            p.requires_grad_(False)
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            fmap = feature_map(backbone, torch.zeros(2, in_chans, image_size, image_size))
        backbone.train(was)
        dim, side = fmap.shape[1], fmap.shape[-1]
        self.scale = max(1, image_size // side)
        self.decoder = nn.Conv2d(dim, in_chans * self.scale**2, kernel_size=1)
        self.image_size, self.ratio = image_size, s.mask_ratio
        self.patch = s.mask_patch or max(1, min(self.scale, image_size // 4))

    def mask(self, b: int, device: Any) -> torch.Tensor:
        """``[B, 1, S, S]`` of 0/1: exactly ``mask_ratio`` of each image's patches are 1 (blanked)."""
        grid = math.ceil(self.image_size / self.patch)
        k = max(1, round(self.ratio * grid * grid))
        rank = torch.rand(b, grid * grid, device=device).argsort(1).argsort(1)
        m = (rank < k).float().view(b, 1, grid, grid)
        m = m.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        return m[:, :, : self.image_size, : self.image_size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.backbone(x)
        m = self.mask(len(x), x.device).to(x.dtype)
        pred = F.pixel_shuffle(self.decoder(feature_map(self.backbone, x * (1 - m))), self.scale)
        if pred.shape[-1] != x.shape[-1]:
            pred = F.interpolate(pred, size=x.shape[-2:], mode="bilinear", align_corners=False)
        err = ((pred.float() - x.float()).abs() * m).sum((1, 2, 3))
        return err / (m.sum((1, 2, 3)) * x.shape[1]).clamp_min(1)


def pooling(objective: str, arch: str) -> str:
    """The pooling of an ``objective``'s backbone: masked-image modelling never trains a ViT's class token,
    so its ViTs pool the patch tokens (``avg``, as MAE fine-tunes them); otherwise the architecture's own."""
    from radimagenet.models.factory import takes_img_size

    return "avg" if objective == "mae" and takes_img_size(arch) else ""


def build_ssl(objective: str, arch: str, *, in_chans: int, image_size: int, settings: SSLSection,
              drop_rate: float = 0.0) -> nn.Module:
    """The training network of a self-supervised ``objective`` on a fresh ``arch`` backbone (no head)."""
    from radimagenet.models.factory import create_model

    if objective not in ("dino", "mae"):
        raise ValueError(f"objective {objective!r} is not self-supervised (dino | mae)")
    backbone = create_model(arch, 0, in_chans, drop_rate, img_size=image_size, dynamic=objective == "dino",
                            global_pool=pooling(objective, arch))
    if objective == "dino":
        return DINO(backbone, image_size, settings)
    return MaskedImageModel(backbone, in_chans, image_size, settings)


def backbone_state(state: dict[str, Any]) -> dict[str, Any]:
    """The registered backbone's weights from a self-supervised network's state dict (``backbone.*``)."""
    out = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not out:
        raise ValueError("not a self-supervised checkpoint: no backbone.* weights")
    return out
