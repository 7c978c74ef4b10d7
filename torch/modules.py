"""The tutorial's U-Net in PyTorch (dome272/Diffusion-Models-pytorch, modules.py), at any width: the same module
names, so the same state_dict keys as the tutorial's files and as `deno task export`. One copy, used by
torch/train_ddp.py, torch/torch_ref.py and tests/fixtures/torch_parity.py. Needs Debian's python3-torch.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    def __init__(self, cin, cout, cmid=None, residual=False):
        super().__init__()
        cmid = cmid or cout
        self.residual = residual
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cmid, 3, padding=1, bias=False), nn.GroupNorm(1, cmid), nn.GELU(),
            nn.Conv2d(cmid, cout, 3, padding=1, bias=False), nn.GroupNorm(1, cout))

    def forward(self, x):
        return F.gelu(x + self.double_conv(x)) if self.residual else self.double_conv(x)


def emb_layer(time_dim, cout):
    return nn.Sequential(nn.SiLU(), nn.Linear(time_dim, cout))


class Down(nn.Module):
    def __init__(self, cin, cout, time_dim):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cin, residual=True), DoubleConv(cin, cout))
        self.emb_layer = emb_layer(time_dim, cout)

    def forward(self, x, t):
        return self.maxpool_conv(x) + self.emb_layer(t)[:, :, None, None]


class Up(nn.Module):
    def __init__(self, cin, cout, time_dim):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(DoubleConv(cin, cin, residual=True), DoubleConv(cin, cout, cin // 2))
        self.emb_layer = emb_layer(time_dim, cout)

    def forward(self, x, skip, t):
        return self.conv(torch.cat([skip, self.up(x)], dim=1)) + self.emb_layer(t)[:, :, None, None]


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.mha = nn.MultiheadAttention(c, 4, batch_first=True)
        self.ln = nn.LayerNorm([c])
        self.ff_self = nn.Sequential(nn.LayerNorm([c]), nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))

    def forward(self, x):
        b, c, h, w = x.shape
        s = x.flatten(2).transpose(1, 2)
        n = self.ln(s)
        # the tutorial drops the attention weights mha returns; need_weights=False does not compute them
        s = self.mha(n, n, n, need_weights=False)[0] + s
        s = self.ff_self(s) + s
        return s.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """The tutorial's UNet at width c (64 there); num_classes: UNet_conditional; remove_deep_conv: its later variant
    without bot2."""

    def __init__(self, c=64, time_dim=256, num_classes=None, remove_deep_conv=False):
        super().__init__()
        self.time_dim = time_dim
        bot = 4 * c if remove_deep_conv else 8 * c
        self.inc = DoubleConv(3, c)
        self.down1 = Down(c, 2 * c, time_dim)
        self.sa1 = SelfAttention(2 * c)
        self.down2 = Down(2 * c, 4 * c, time_dim)
        self.sa2 = SelfAttention(4 * c)
        self.down3 = Down(4 * c, 4 * c, time_dim)
        self.sa3 = SelfAttention(4 * c)
        self.bot1 = DoubleConv(4 * c, bot)
        self.bot2 = None if remove_deep_conv else DoubleConv(bot, bot)
        self.bot3 = DoubleConv(bot, 4 * c)
        self.up1 = Up(8 * c, 2 * c, time_dim)
        self.sa4 = SelfAttention(2 * c)
        self.up2 = Up(4 * c, c, time_dim)
        self.sa5 = SelfAttention(c)
        self.up3 = Up(2 * c, c, time_dim)
        self.sa6 = SelfAttention(c)
        self.outc = nn.Conv2d(c, 3, kernel_size=1)
        if num_classes:
            self.label_emb = nn.Embedding(num_classes, time_dim)

    def pos_encoding(self, t):
        """The Transformer's sinusoidal encoding of the step t (Vaswani et al. 2017, §3.5)."""
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.time_dim, 2, device=t.device).float() / self.time_dim))
        angle = t[:, None].float() * inv_freq[None]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)

    def forward(self, x, t, y=None):
        t = self.pos_encoding(t)
        if y is not None:
            t = t + self.label_emb(y)
        x1 = self.inc(x)
        x2 = self.sa1(self.down1(x1, t))
        x3 = self.sa2(self.down2(x2, t))
        x4 = self.sa3(self.down3(x3, t))
        x4 = self.bot1(x4)
        if self.bot2 is not None:
            x4 = self.bot2(x4)
        x4 = self.bot3(x4)
        x = self.sa4(self.up1(x4, x3, t))
        x = self.sa5(self.up2(x, x2, t))
        x = self.sa6(self.up3(x, x1, t))
        return self.outc(x)


class UNet_conditional(UNet):
    """The tutorial's conditional U-Net: a label embedding added to the time encoding."""

    def __init__(self, c=64, time_dim=256, num_classes=10, remove_deep_conv=False):
        super().__init__(c, time_dim, num_classes, remove_deep_conv)
