"""Patch-based prior network (docs/design.md §2.12; Hu, Song, Xu, Shen, Fessler, NeurIPS 2024,
"Learning Image Priors through Patch-based Diffusion Models for Solving Inverse Problems").

`PatchNet` wraps an NCSN++ that sees P x P patches with two extra input channels holding each
pixel's absolute position in the whole image, u = 2 (i + 1/2) / H − 1 (rows) and
v = 2 (j + 1/2) / W − 1 (columns), so u, v ∈ (−1, 1) inside the image and beyond it outside.

- Training (`crop`): random P x P windows of full-resolution slices with their position
  channels and a mask of the pixels inside the image; windows may hang over the image edge by up
  to P − 1 pixels (zero-filled there), which is exactly the distribution of the windows the
  tiling below produces, so the network learns the image border as it meets it at sampling time.
  The training loss counts only pixels inside the image (loss.dsm_loss).
- Whole-image evaluation (`forward` without `pos`): the image of any size H x W is placed on a
  zero canvas at a random offset (o_r, o_c) ∈ [0, P)², whose size is the next multiple of P; the
  canvas is cut into non-overlapping P x P patches, all patches of all images go through the
  network in batches of at most `max_patches`, and the outputs are put back and cropped. A new
  offset at every call averages the patch seams away (the product-of-patches prior of §2.12).
  Pixels outside the image are exactly zero on the canvas, as in training.

The network output F is per pixel, so the EDM preconditioning of `scoreinv.score` (pixel-wise
scalings) commutes with the tiling: score(x, σ) of the whole image is the tiled score.
Offsets come from the module's own generator (`reseed`), so a run repeats with the same seed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import ScoreinvError


def position_grid(rows: torch.Tensor, cols: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Position channels (2, len(rows), len(cols)) for absolute pixel indices of an h x w image."""
    u = (2 * (rows.to(torch.float32) + 0.5) / h - 1)
    v = (2 * (cols.to(torch.float32) + 0.5) / w - 1)
    return torch.stack(torch.broadcast_tensors(u[:, None], v[None, :]))


class PatchNet(nn.Module):
    """net(x, c_noise, pos=None): patches with positions (training) or whole images (tiling)."""

    def __init__(self, inner: nn.Module, patch_size: int, num_channels: int = 1, max_patches: int = 64,
                 seed: int = 0):
        super().__init__()
        if patch_size < 8 or patch_size % 8:
            raise ScoreinvError(f"model.patch_size: expected a multiple of 8 of at least 8, got {patch_size}")
        self.inner, self.patch_size, self.num_channels = inner, int(patch_size), int(num_channels)
        self.max_patches = int(max_patches)
        self.offsets = torch.Generator().manual_seed(int(seed))

    def reseed(self, seed: int) -> None:
        """Restart the sequence of tiling offsets (a run with the same seed repeats)."""
        self.offsets.manual_seed(int(seed))

    # --- training ----------------------------------------------------------------------------
    def crop(self, x: torch.Tensor, generator: torch.Generator):
        """One random P x P window per image of x (B, C, H, W): (patches, pos, inside), with
        patches (B, C, P, P) zero outside the image, pos (B, 2, P, P), inside (B, 1, P, P) in {0, 1}.
        Window corners are uniform in [−(P−1), H−1] x [−(P−1), W−1] (the tiling's distribution)."""
        b, c, h, w = x.shape
        p = self.patch_size
        r0 = torch.randint(-(p - 1), h, (b,), generator=generator)
        c0 = torch.randint(-(p - 1), w, (b,), generator=generator)
        ar = torch.arange(p)
        patches = x.new_zeros(b, c, p, p)
        pos = x.new_empty(b, 2, p, p)
        inside = x.new_zeros(b, 1, p, p)
        for k in range(b):
            rows, cols = int(r0[k]) + ar, int(c0[k]) + ar
            pos[k] = position_grid(rows, cols, h, w).to(x)
            ri = rows[(rows >= 0) & (rows < h)]
            ci = cols[(cols >= 0) & (cols < w)]
            dr, dc = int(ri[0]) - int(rows[0]), int(ci[0]) - int(cols[0])
            patches[k, :, dr:dr + len(ri), dc:dc + len(ci)] = x[k, :, int(ri[0]):int(ri[-1]) + 1, int(ci[0]):int(ci[-1]) + 1]
            inside[k, :, dr:dr + len(ri), dc:dc + len(ci)] = 1
        return patches, pos, inside

    # --- evaluation --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if pos is not None:
            return self.inner(torch.cat([x, pos.to(x)], dim=1), c_noise)
        return self.tiled(x, c_noise)

    def tiled(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """Whole-image output (B, C, H, W) from non-overlapping patches at a random offset."""
        b, c, h, w = x.shape
        p = self.patch_size
        o_r, o_c = (int(v) for v in torch.randint(0, p, (2,), generator=self.offsets))
        nh, nw = math.ceil((h + o_r) / p), math.ceil((w + o_c) / p)
        canvas = x.new_zeros(b, c, nh * p, nw * p)
        canvas[:, :, o_r:o_r + h, o_c:o_c + w] = x
        pos = position_grid(torch.arange(nh * p) - o_r, torch.arange(nw * p) - o_c, h, w).to(x)

        def cut(t):  # (N, C, nh p, nw p) -> (N nh nw, C, p, p)
            n, ch = t.shape[:2]
            return t.reshape(n, ch, nh, p, nw, p).permute(0, 2, 4, 1, 3, 5).reshape(n * nh * nw, ch, p, p)

        patches = torch.cat([cut(canvas), cut(pos[None]).repeat(b, 1, 1, 1)], dim=1)
        cn = c_noise.reshape(-1).expand(b).repeat_interleave(nh * nw)
        if x.is_contiguous(memory_format=torch.channels_last) or x.device.type == "cpu":
            patches = patches.contiguous(memory_format=torch.channels_last)
        outs = [self.inner(patches[i:i + self.max_patches], cn[i:i + self.max_patches]).float()
                for i in range(0, patches.shape[0], self.max_patches)]
        out = torch.cat(outs).reshape(b, nh, nw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, nh * p, nw * p)
        return out[:, :, o_r:o_r + h, o_c:o_c + w].contiguous()
