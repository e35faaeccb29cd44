"""The quality and guidance networks: small plain CNNs (conv-BN-ReLU).

No depthwise convolutions: on this project's CPUs INT8 makes them slower
(docs FACTS.md), while plain 3x3 convolutions gain from VNNI/AMX. Input is
the run-time preprocessed frame, 1 x 128 x 128 (or `frames` stacked frames
for guidance). BatchNorm is folded into the convolutions at export.

Position matters for guidance (where the target lies in the image says
which way to slide), so the heads do not average the last feature map away:
a 1x1 convolution squeezes it and a small MLP reads the flattened 4x4 grid.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edge_assist.training.data import INPUT_SIZE
from edge_assist.vocab import ACTIONS, QUALITY_REASONS

# ONNX output names (manifest role -> name mapping is in export.py).
QUALITY_OUTPUTS = ("score", "reason_logits")
GUIDANCE_OUTPUTS = ("action_logits",)


@dataclass
class NetConfig:
    in_ch: int = 1
    action_in: int = 0  # guidance with memory: one-hot of the previous move, joined to the image features
    # One stride-2 stage each: 128 -> 4. Narrow at high resolution: on a CPU
    # the first stages dominate training time (8-16 channels there train
    # ~2x faster than 16-32 for the same depth).
    widths: tuple[int, ...] = (8, 16, 32, 64, 96)
    input_size: int = INPUT_SIZE[0]  # the (square) frame's side in pixels: the run-time preprocessed frame's
    extra: tuple[int, ...] = (0, 0, 1, 1, 1)  # extra stride-1 convs per stage
    squeeze: int = 32
    hidden: int = 128
    dropout: float = 0.1
    outputs: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["extra"] = list(self.widths), list(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        for k in ("widths", "extra"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """Stages of (stride-2 conv, [stride-1 convs]) down to 4x4, squeeze, MLP, one linear per output."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        layers, cin = [], cfg.in_ch
        for w, n in zip(cfg.widths, cfg.extra):
            layers.append(conv_bn_relu(cin, w, 2))
            layers += [conv_bn_relu(w, w, 1) for _ in range(n)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.squeeze = nn.Sequential(nn.Conv2d(cin, cfg.squeeze, 1, bias=False), nn.BatchNorm2d(cfg.squeeze), nn.ReLU(inplace=True))
        grid = cfg.input_size // (2 ** len(cfg.widths))
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(cfg.squeeze * grid * grid + cfg.action_in, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout)
        )
        self.out = nn.ModuleDict({k: nn.Linear(cfg.hidden, n) for k, n in cfg.outputs.items()})

    def forward(self, x: torch.Tensor, action: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        f = self.mlp[0](self.squeeze(self.features(x)))
        if self.cfg.action_in:
            if action is None:
                action = f.new_zeros(f.shape[0], self.cfg.action_in)
            f = torch.cat([f, action.to(f.dtype)], 1)
        h = self.mlp[1:](f)
        return {k: m(h) for k, m in self.out.items()}


class QualityNet(nn.Module):
    """forward -> (score_logit [B,1], reason_logits [B,9]) for training."""

    head = "quality"

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        cfg = cfg or NetConfig()
        cfg.outputs = {"score": 1, "reasons": len(QUALITY_REASONS)}
        self.cfg = cfg
        self.net = PlainCNN(cfg)

    def forward(self, x):
        o = self.net(x)
        return o["score"], o["reasons"]


POSE_COMPONENTS = ("u", "w", "rot", "fan", "rock", "depth", "gain")


class GuidanceNet(nn.Module):
    """forward -> (action_logits [B,15], pose [B,7]); input [B, frames, S, S] (S = cfg.input_size)
    and, with memory (cfg.action_in = 15), the previous move as a one-hot
    [B, 15] (zeros: none yet). With memory the two frames are the one before
    the previous move and the current one: from a single frame the sign of
    an out-of-plane slide, a rotation or a fan is often unreadable (the
    anatomy is near mirror-symmetric about the target plane); what the last
    move did to the image says which way to go on.

    The second output (training only, not exported) regresses the signed
    pose/setting errors in units of the simulator's tolerances: a dense
    auxiliary signal that teaches the features where the target view lies."""

    head = "guidance"

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        cfg = cfg or NetConfig()
        cfg.outputs = {"actions": len(ACTIONS), "pose": len(POSE_COMPONENTS)}
        self.cfg = cfg
        self.net = PlainCNN(cfg)

    def forward(self, x, action=None):
        o = self.net(x, action)
        return o["actions"], o["pose"]


class QualityExport(nn.Module):
    """What the ONNX file computes: the score as a probability (heads.py
    reads it as such), reason logits as they are."""

    def __init__(self, model: QualityNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        s, r = self.model(x)
        return torch.sigmoid(s), r


class GuidanceExport(nn.Module):
    def __init__(self, model: GuidanceNet):
        super().__init__()
        self.model = model

    def forward(self, x, action=None):
        return (self.model(x, action)[0],)


def build_model(head: str, cfg: dict | None = None) -> nn.Module:
    c = NetConfig.from_dict(cfg) if cfg else NetConfig()
    if head == "quality":
        return QualityNet(c)
    if head == "guidance":
        return GuidanceNet(c)
    raise ValueError(f"no built-in model for head {head!r}")


def export_module(head: str, model: nn.Module) -> nn.Module:
    """The module whose outputs are the ONNX outputs, in eval mode, BN folded."""
    m = copy.deepcopy(model).eval()
    fold_batchnorm(m)
    if head == "quality":
        return QualityExport(m).eval()
    if head == "guidance":
        return GuidanceExport(m).eval()
    return m


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential
    into the convolution (eval-mode statistics), in place."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        mods = list(module._modules.items())
        for (kc, conv), (kb, bn) in zip(mods, mods[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                _fold_into(conv, bn)
                module._modules[kb] = nn.Identity()
    return module


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    conv.bias = nn.Parameter(new_bias)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
