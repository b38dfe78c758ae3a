"""NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs", §H): a U-Net with
BigGAN residual blocks, FIR [1,3,3,1] resampling, skip rescaling, progressive output skips
(`output_skip`) and input skips (`input_skip`), DDPM attention at chosen resolutions and a
Gaussian Fourier embedding of log sigma (scale 16).

`NCSNpp.forward(x, c_noise)` returns the raw network output F (same shape as x); the
scaling conventions (divide by sigma, or EDM preconditioning) live in `scoreinv.score` only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (AttnBlock, FIRResample, GaussianFourierEmbedding, ResBlock, Resample, conv, dense,
                     group_norm, sinusoidal_embedding)


class NCSNpp(nn.Module):
    def __init__(self, image_size=64, num_channels=1, nf=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                 attn_resolutions=(16,), dropout=0.0, resamp_with_conv=True, fir=True, fir_kernel=(1, 3, 3, 1),
                 skip_rescale=True, resblock_type="biggan", progressive="output_skip",
                 progressive_input="input_skip", progressive_combine="sum", embedding_type="fourier",
                 fourier_scale=16.0, init_scale=0.0, in_channels=None):
        super().__init__()
        cin_img = num_channels if in_channels is None else in_channels  # input: image (+ position) channels
        self.nf, self.num_res_blocks, self.embedding_type = nf, num_res_blocks, embedding_type
        self.ch_mult = list(ch_mult)
        self.progressive, self.progressive_input, self.combine = progressive, progressive_input, progressive_combine
        self.num_levels = len(self.ch_mult)
        resolutions = [image_size // 2 ** i for i in range(self.num_levels)]
        attn = set(attn_resolutions)
        kern = tuple(fir_kernel)
        biggan = resblock_type == "biggan"
        temb_dim = 4 * nf

        if embedding_type == "fourier":
            self.embed = GaussianFourierEmbedding(nf, fourier_scale)
            emb_in = 2 * nf
        else:
            self.embed = None
            emb_in = nf
        self.temb = nn.Sequential(dense(emb_in, temb_dim), nn.SiLU(), dense(temb_dim, temb_dim))

        def res(cin, cout, up=False, down=False):
            return ResBlock(cin, cout, temb_dim, dropout, up=up, down=down, fir=fir, kernel=kern,
                            skip_rescale=skip_rescale, init_scale=init_scale, biggan=biggan)

        def resample(c, up):
            if biggan:
                return res(c, c, up=up, down=not up)
            return Resample(c, up=up, with_conv=resamp_with_conv, fir=fir, kernel=kern)

        # ---- down path
        self.conv_in = conv(cin_img, nf, 3)
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleDict()
        self.down_sample = nn.ModuleList()
        self.input_skip = nn.ModuleList()
        skips = [nf]
        c = nf
        for i, mult in enumerate(self.ch_mult):
            blocks = nn.ModuleList()
            for j in range(num_res_blocks):
                blocks.append(res(c, nf * mult))
                c = nf * mult
                if resolutions[i] in attn:
                    self.down_attn[f"{i}_{j}"] = AttnBlock(c, skip_rescale, init_scale)
                skips.append(c)
            self.down.append(blocks)
            if i != self.num_levels - 1:
                self.down_sample.append(resample(c, up=False))
                if progressive_input == "input_skip":
                    self.input_skip.append(conv(cin_img, c, 1))
                elif progressive_input == "residual":
                    self.input_skip.append(conv(cin_img, c, 1))
                skips.append(c)
        self.pyramid_down = FIRResample(kern, up=False) if fir else None

        # ---- middle
        self.mid1, self.mid_attn, self.mid2 = res(c, c), AttnBlock(c, skip_rescale, init_scale), res(c, c)

        # ---- up path
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleDict()
        self.up_sample = nn.ModuleList()
        self.out_skip = nn.ModuleList()
        for i in reversed(range(self.num_levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(res(c + skips.pop(), nf * self.ch_mult[i]))
                c = nf * self.ch_mult[i]
            self.up.append(blocks)
            if resolutions[i] in attn:
                self.up_attn[str(i)] = AttnBlock(c, skip_rescale, init_scale)
            if progressive != "none":
                self.out_skip.append(nn.Sequential(group_norm(c), nn.SiLU(), conv(c, num_channels, 3, init_scale=init_scale)))
            if i != 0:
                self.up_sample.append(resample(c, up=True))
        self.pyramid_up = FIRResample(kern, up=True) if fir else None
        if progressive == "none":
            self.out = nn.Sequential(group_norm(c), nn.SiLU(), conv(c, num_channels, 3, init_scale=init_scale))
        assert not skips

    def _pyr_down(self, x):
        return self.pyramid_down(x) if self.pyramid_down is not None else F.avg_pool2d(x, 2)

    def _pyr_up(self, x):
        return self.pyramid_up(x) if self.pyramid_up is not None else F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W); c_noise: (B,) noise conditioning (log sigma). Returns (B, C, H, W)
        (C = num_channels; C_in = in_channels, the image channels plus any conditioning channels)."""
        if self.embed is not None:
            emb = self.embed(c_noise)
        else:
            emb = sinusoidal_embedding(c_noise, self.nf)
        temb = self.temb(emb)

        inp = x
        h = self.conv_in(x)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for j, blk in enumerate(blocks):
                h = blk(h, temb)
                a = self.down_attn[f"{i}_{j}"] if f"{i}_{j}" in self.down_attn else None
                if a is not None:
                    h = a(h)
                hs.append(h)
            if i != self.num_levels - 1:
                ds = self.down_sample[i]
                h = ds(h, temb) if isinstance(ds, ResBlock) else ds(h)
                if self.progressive_input != "none":
                    inp = self._pyr_down(inp)
                    h = h + self.input_skip[i](inp)
                    if self.progressive_input == "residual":
                        h = h / (2 ** 0.5)
                hs.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)

        pyramid = None
        for k, blocks in enumerate(self.up):
            i = self.num_levels - 1 - k
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), temb)
            if str(i) in self.up_attn:
                h = self.up_attn[str(i)](h)
            if self.progressive != "none":
                o = self.out_skip[k](h)
                if pyramid is None:
                    pyramid = o
                elif self.progressive == "output_skip":
                    pyramid = self._pyr_up(pyramid) + o
                else:
                    pyramid = (self._pyr_up(pyramid) + o) / (2 ** 0.5)
            if i != 0:
                us = self.up_sample[k]
                h = us(h, temb) if isinstance(us, ResBlock) else us(h)
        assert not hs
        return pyramid if self.progressive != "none" else self.out(h)


def build_network(mcfg, image_size: int) -> nn.Module:
    """Build NCSN++ from a ModelConfig (plain attribute access; no config reading here); with
    `patch_size` > 0, an NCSN++ on P x P patches plus two position channels inside a PatchNet."""
    if getattr(mcfg, "patch_size", 0):
        from .patch import PatchNet
        inner = _ncsnpp(mcfg, mcfg.patch_size, in_channels=mcfg.num_channels + 2)
        return PatchNet(inner, mcfg.patch_size, mcfg.num_channels, max_patches=mcfg.max_patches)
    return _ncsnpp(mcfg, image_size)


def _ncsnpp(mcfg, image_size: int, in_channels=None) -> NCSNpp:
    return NCSNpp(image_size=image_size, in_channels=in_channels, num_channels=mcfg.num_channels, nf=mcfg.nf, ch_mult=tuple(mcfg.ch_mult),
                  num_res_blocks=mcfg.num_res_blocks, attn_resolutions=tuple(mcfg.attn_resolutions),
                  dropout=mcfg.dropout, resamp_with_conv=mcfg.resamp_with_conv, fir=mcfg.fir,
                  fir_kernel=tuple(mcfg.fir_kernel), skip_rescale=mcfg.skip_rescale,
                  resblock_type=mcfg.resblock_type, progressive=mcfg.progressive,
                  progressive_input=mcfg.progressive_input, progressive_combine=mcfg.progressive_combine,
                  embedding_type=mcfg.embedding_type, fourier_scale=mcfg.fourier_scale, init_scale=mcfg.init_scale)
