"""SAC-ViT: one shared-weight timm ViT run as an early-exit stage and a clustered stage.

:class:`SACViT` *is* a timm :class:`~timm.models.vision_transformer.VisionTransformer` (same
parameter names, so DeiT checkpoints load unchanged) plus a small feature-reuse MLP. Its inherited
``forward_features`` / ``forward_head`` are the plain backbone; the method adds:

* :meth:`SACViT.forward_ee` — the image downsampled by ``ee_scale``, position embeddings resampled
  to the EE grid, the shared blocks and head; also the global class attention (GCA) of each token;
* :meth:`SACViT.cluster` — the non-iterative split of the EE tokens into target / non-target;
* :meth:`SACViT.forward_sac` — the target region re-embedded from the full-resolution image,
  non-target tokens reused from EE, attention within each cluster;
* :meth:`SACViT.forward` — in training, ``(logits_ee, logits_sac)`` for every image; in eval,
  the adaptive logits at the configured threshold (so timm's validation tools work unchanged);
* :meth:`SACViT.predict` — batched adaptive inference: confident images leave after EE.

Inference path (what keeps FLOPs savings real wall-clock savings): one host sync per call, at
the exit decision, where the batch is compacted to the images that continue; the crop and
re-embedding gather only the selected patches straight from the uncompacted input, for the whole
bucket at once; the SAC sequence is laid out ``[target, CLS, non-target]`` so that every cluster's
keys are a contiguous slice for dense SDPA (see :mod:`.attention`); the EE patch embeddings,
final tokens and GCA are reused, never recomputed; the resampled EE position embedding is cached
outside training; the final norm and head run on the CLS token only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .. import flops
from ..config import SACConfig
from .attention import block_forward
from .clustering import Clusters, adaptive_window_size, best_window, make_clusters

__all__ = ["SACViT", "EEOutput", "Prediction"]


@dataclass
class EEOutput:
    """What the early-exit stage hands to the SAC stage.

    Attributes:
        logits: ``(B, C)`` EE logits.
        tokens: ``(B, n, D)`` final EE patch tokens (before the last norm), input of the reuse MLP.
        embed: ``(B, n, D)`` EE input patch embeddings (patch embed + EE position embedding),
            reused as the non-target tokens.
        gca: ``(B, h, w)`` global class attention of each EE token, or ``None`` if not computed.
    """

    logits: Tensor
    tokens: Tensor
    embed: Tensor
    gca: Tensor | None

    def index(self, idx: Tensor) -> "EEOutput":
        """The outputs of the images ``idx`` only (batch compaction)."""
        return EEOutput(self.logits[idx], self.tokens[idx], self.embed[idx],
                        None if self.gca is None else self.gca[idx])


@dataclass
class Prediction:
    """Result of :meth:`SACViT.predict`.

    Attributes:
        logits: ``(B, C)`` logits of the stage each image ended in.
        stage: ``(B,)`` long, 0 = exited at EE, 1 = went through SAC.
        gmacs: ``(B,)`` GMACs spent on each image.
        box: ``(B, 4)`` target window in pixels ``(x0, y0, x1, y1)``; −1 for exited images.
    """

    logits: Tensor
    stage: Tensor
    gmacs: Tensor
    box: Tensor


class FeatureReuse(nn.Module):
    """``LayerNorm → MLP(D → rD → D)`` with the last layer zero-initialised (adds 0 at start)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        trunc_normal_(self.mlp.fc1.weight, std=0.02)
        nn.init.zeros_(self.mlp.fc1.bias)
        nn.init.zeros_(self.mlp.fc2.weight)
        nn.init.zeros_(self.mlp.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x))


class SACViT(VisionTransformer):
    """Semantic-Aware Clustering ViT with early exit, on timm's ``VisionTransformer``.

    Args:
        sac: the method's configuration (:class:`~sacvit.config.SACConfig` or a dict of its fields).
        **kwargs: timm ``VisionTransformer`` arguments (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``num_classes``, ``drop_path_rate``, …).
            The backbone must use a class token with ``global_pool='token'``, no register tokens
            and no patch dropout, as DeiT does.
    """

    def __init__(self, sac: SACConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sac_cfg = sac if isinstance(sac, SACConfig) else SACConfig(**(sac or {}))
        cfg = self.sac_cfg
        if self.cls_token is None or self.global_pool != "token" or self.num_reg_tokens:
            raise ValueError("SACViT needs a class token, global_pool='token' and no register tokens")
        if self.no_embed_class or self.dynamic_img_size or not isinstance(self.patch_drop, nn.Identity):
            raise ValueError("SACViT does not support no_embed_class, dynamic_img_size or patch_drop")
        gh, gw = self.patch_embed.grid_size
        s = cfg.ee_scale
        if gh % s or gw % s:
            raise ValueError(f"the {gh}×{gw} token grid is not divisible by ee_scale={s}: "
                             f"the EE grid must be whole")
        self.ee_grid: tuple[int, int] = (gh // s, gw // s)
        if cfg.cluster_mode == "window" and cfg.window > min(self.ee_grid):
            raise ValueError(f"window={cfg.window} does not fit the {self.ee_grid} EE grid")
        self.patch_size: int = self.patch_embed.patch_size[0]
        self.gca_start = min(cfg.gca_start, len(self.blocks) - 1)
        self.reuse = FeatureReuse(self.embed_dim, cfg.reuse_mlp_ratio) if cfg.reuse else None
        self._ee_pos_cache: tuple[Tensor, Any, Tensor] | None = None

    def clear_cache(self) -> None:
        """Drop the cached EE position embedding.

        The cache is keyed on the ``pos_embed`` tensor (identity, storage and in-place version),
        so ``load_state_dict``, optimizer steps and ``.to()`` invalidate it by themselves; call
        this only after editing ``pos_embed.data`` in place behind autograd's back.
        """
        self._ee_pos_cache = None

    def train(self, mode: bool = True) -> "SACViT":
        self.clear_cache()
        return super().train(mode)

    # ------------------------------------------------------------------ input checks
    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` is not a batch this model can run."""
        self._check_shape(x)
        if x.is_floating_point() and bool(self._nonfinite(x)):
            raise ValueError("input contains NaN or infinite values")

    @staticmethod
    def _nonfinite(x: Tensor) -> Tensor:
        """0-dim bool tensor: does ``x`` hold a NaN or an infinity? One pass, no host sync."""
        if x.numel() == 0:
            return torch.zeros((), dtype=torch.bool, device=x.device)
        lo, hi = torch.aminmax(x)  # NaN propagates into both, ±inf shows in one
        return ~(torch.isfinite(lo) & torch.isfinite(hi))

    def _check_shape(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got {shape}")
        _, c, h, w = x.shape
        in_chans = self.patch_embed.proj.in_channels
        if c != in_chans:
            raise ValueError(f"expected {in_chans} channels, got {c} (input shape {tuple(x.shape)})")
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"image {h}×{w} is smaller than one {self.patch_size}-px patch")
        if (h, w) != tuple(self.patch_embed.img_size):
            raise ValueError(f"expected {tuple(self.patch_embed.img_size)} px images, got {h}×{w}; "
                             f"resize the input or create the model with img_size=({h}, {w})")

    # ------------------------------------------------------------------ embeddings
    def _embed(self, x: Tensor) -> Tensor:
        """Patch embedding of an image of any whole-patch size, as ``(B, n, D)`` tokens."""
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return self.patch_embed.norm(tokens)

    def _embed_patches(self, x: Tensor, index: Tensor, rows: Tensor | None = None) -> Tensor:
        """Patch-embed only the full-resolution patches ``index`` ``(B', T)`` of images ``rows``.

        The selected patches are gathered straight from the full images (a crop without
        resizing; only the ``T`` patches are copied, never the images) and projected with the
        patch-embedding convolution's weights as one matmul. For a contiguous batch each patch is
        ``C·p`` runs of ``p`` adjacent pixels, gathered as rows of an ``(·, p)`` view by one
        ``index_select`` (a memcpy per run; several times faster than elementwise indexing).

        Args:
            x: ``(B, C, H, W)`` full-resolution images.
            index: ``(B', T)`` full-grid token indices.
            rows: ``(B',)`` which images of ``x`` the rows of ``index`` belong to (batch
                compaction without copying ``x``); ``None`` for all of them in order.
        """
        B, C, H, W = x.shape
        p = self.patch_size
        gw = W // p
        if rows is None:
            rows = torch.arange(B, device=x.device)
        r, c = index // gw, index % gw  # (B', T) patch row and column
        if x.is_contiguous():
            # run (b, ch, pixel row y, patch column c) is row ((b·C + ch)·H + y)·gw + c of x.view(-1, p)
            img = rows.view(-1, 1, 1, 1) * C + torch.arange(C, device=x.device).view(1, 1, C, 1)
            y = (r * p)[..., None, None] + torch.arange(p, device=x.device).view(1, 1, 1, p)
            runs = (img * H + y) * gw + c[..., None, None]  # (B', T, C, p)
            patches = x.view(-1, p).index_select(0, runs.flatten())
        else:
            grid = x.view(B, C, H // p, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p) view
            patches = grid[rows[:, None], r, c]  # (B', T, C, p, p)
        proj = self.patch_embed.proj
        patches = patches.reshape(*index.shape, C * p * p).to(proj.weight.dtype)
        return self.patch_embed.norm(F.linear(patches, proj.weight.flatten(1), proj.bias))

    def _resample_ee_pos(self, pos: Tensor) -> Tensor:
        return resample_abs_pos_embed(pos, new_size=list(self.ee_grid),
                                      old_size=self.patch_embed.grid_size, num_prefix_tokens=1)

    def _ee_pos_embed(self) -> Tensor:
        """Position embedding resampled to the EE grid (cached outside training and autograd)."""
        pos = self.pos_embed
        if self.training or (torch.is_grad_enabled() and pos.requires_grad):
            return self._resample_ee_pos(pos)
        try:
            key = (pos.data_ptr(), pos._version, pos.dtype, pos.device)
        except RuntimeError:  # an inference tensor has no version counter: do not cache
            return self._resample_ee_pos(pos)
        cached = self._ee_pos_cache
        # holding ``pos`` keeps its storage alive, so a data pointer is never reused for another
        if cached is None or cached[0] is not pos or cached[1] != key:
            with torch.no_grad():
                cached = (pos, key, self._resample_ee_pos(pos))
            self._ee_pos_cache = cached
        return cached[2]

    def _with_cls(self, tokens: Tensor) -> Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return self.norm_pre(self.pos_drop(torch.cat([cls, tokens], dim=1)))

    # ------------------------------------------------------------------ stage 1
    def forward_ee(self, x: Tensor, need_gca: bool = True) -> EEOutput:
        """Early-exit stage on ``x`` downsampled by ``ee_scale``.

        Args:
            x: ``(B, C, H, W)`` full-resolution images.
            need_gca: accumulate the global class attention (needed to cluster).
        """
        h, w = self.ee_grid
        p = self.patch_size
        x_ee = F.interpolate(x, size=(h * p, w * p), mode="bilinear", antialias=True, align_corners=False)
        pos = self._ee_pos_embed()
        embed = self._embed(x_ee) + pos[:, 1:]
        z = self._with_cls(embed)
        rows = []  # the CLS query's logits of each GCA block: one matmul per block
        for i, blk in enumerate(self.blocks):
            want = need_gca and i >= self.gca_start
            z, r = block_forward(blk, z, want_cls_logits=want)
            if want:
                rows.append(r)
        tokens = z[:, 1:]
        logits = self.forward_head(self.norm(z[:, :1]))  # norm is per token: CLS only
        gca = self._gca(rows).view(-1, h, w) if rows else None
        return EEOutput(logits=logits, tokens=tokens, embed=embed, gca=gca)

    def _gca(self, rows: list[Tensor]) -> Tensor:
        """The EMA ``g = β·g + (1−β)·a_l`` over the blocks' CLS attention rows, in closed form.

        ``a_l`` is the head-averaged softmax of block ``l``'s CLS logits, CLS column dropped;
        unrolled, ``g = Σ_l (1−β)·β^(L−1−l)·a_l`` — one softmax, mean and weighted sum for all
        blocks at once instead of a handful of small ops per block.
        """
        beta = self.sac_cfg.gca_beta
        a = torch.stack(rows).detach().float().softmax(dim=-1).mean(dim=2)[..., 1:]  # (L, B, n)
        n = len(rows)
        weights = torch.tensor([(1 - beta) * beta ** (n - 1 - j) for j in range(n)], device=a.device)
        return torch.tensordot(weights, a, dims=1)

    # ------------------------------------------------------------------ clustering
    def window_sizes(self, gca: Tensor) -> Tensor:
        """Window side ``m`` of each image ``(B,)`` under the configured clustering mode."""
        cfg = self.sac_cfg
        if cfg.cluster_mode == "adaptive":
            return adaptive_window_size(gca, cfg.adaptive_sizes, cfg.rho)
        return torch.full((gca.shape[0],), cfg.window, dtype=torch.long, device=gca.device)

    def window_buckets(self, gca: Tensor) -> list[tuple[int, Tensor]]:
        """``(m, indices)`` of the images sharing each window side, ascending ``m`` (one host sync)."""
        sizes = self.window_sizes(gca)
        order = torch.argsort(sizes, stable=True)
        counts = torch.bincount(sizes).tolist()
        buckets, start = [], 0
        for m, n in enumerate(counts):
            if n:
                buckets.append((m, order[start:start + n]))
                start += n
        return buckets

    def cluster(self, gca: Tensor, m: int) -> Clusters:
        """Target / non-target clusters of a bucket of images sharing window side ``m``."""
        row, col = best_window(gca, m)
        alpha = self.sac_cfg.alpha if m < min(self.ee_grid) else 1.0
        return make_clusters(gca, row, col, m, self.sac_cfg.ee_scale,
                             self.sac_cfg.ee_scale * self.patch_size, alpha)

    def full_clusters(self, batch: int, device: torch.device) -> Clusters:
        """The whole image as target (selection warm-up, or a reference full-resolution pass)."""
        gca = torch.ones(batch, *self.ee_grid, device=device)
        return make_clusters(gca, *best_window(gca, min(self.ee_grid)), min(self.ee_grid),
                             self.sac_cfg.ee_scale, self.sac_cfg.ee_scale * self.patch_size)

    # ------------------------------------------------------------------ stage 2
    def forward_sac(self, x: Tensor, ee: EEOutput, clusters: Clusters, rows: Tensor | None = None) -> Tensor:
        """SAC stage for a dense bucket: returns ``(B', C)`` logits.

        Args:
            x: ``(B, C, H, W)`` full-resolution images.
            ee: the EE outputs of the ``B'`` images of the bucket.
            clusters: their clusters.
            rows: ``(B',)`` which images of ``x`` form the bucket (``None``: all, ``B' = B``).
        """
        z = self.sac_tokens(x, ee, clusters, rows)
        z = self.sac_blocks(z, clusters.num_target)
        return self.sac_head(z, clusters.num_target)

    def reuse_tokens(self, ee: EEOutput) -> Tensor | None:
        """The feature-reuse term ``reuse(z_ee)`` of every EE token ``(B', n, D)`` (``None`` if off)."""
        return None if self.reuse is None else self.reuse(ee.tokens)

    def sac_tokens(self, x: Tensor, ee: EEOutput, clusters: Clusters, rows: Tensor | None = None,
                   reused: Tensor | None = None) -> Tensor:
        """Crop + re-embed + token assembly: the SAC input sequence ``[target, CLS, non-target]``.

        The target tokens are re-embedded at full resolution; the non-target tokens and the
        reuse term come from the EE outputs (nothing of EE is recomputed). See :meth:`forward_sac`;
        ``reused`` is :meth:`reuse_tokens` when already computed.
        """
        if self.reuse is not None and reused is None:
            reused = self.reuse_tokens(ee)
        index = clusters.target
        target = self._embed_patches(x, index, rows) + _gather(self.pos_embed[:, 1:], index)
        non_target = _gather(ee.embed, clusters.non_target)
        if reused is not None:
            target = target + _gather(reused, clusters.parent)
            if self.sac_cfg.reuse_non_target:
                non_target = non_target + _gather(reused, clusters.non_target)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(target.shape[0], -1, -1).to(target.dtype)
        return self.norm_pre(self.pos_drop(torch.cat([target, cls, non_target], dim=1)))

    def sac_blocks(self, z: Tensor, n_target: int) -> Tensor:
        """The shared blocks with cluster attention on a ``[target, CLS, non-target]`` sequence."""
        for blk in self.blocks:
            z, _ = block_forward(blk, z, n_target=n_target, cls_mid=True)
        return z

    def sac_head(self, z: Tensor, n_target: int) -> Tensor:
        """Final norm and head on the CLS token (at position ``n_target``) → ``(B', C)`` logits."""
        return self.forward_head(self.norm(z[:, n_target:n_target + 1]))

    def _sac_buckets(self, x: Tensor, ee: EEOutput, full: bool = False,
                     rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """SAC logits, per-image GMACs and boxes of the images ``rows`` of ``x`` (``ee`` holds
        their EE outputs), bucketed by window side."""
        B = x.shape[0] if rows is None else rows.shape[0]
        if full or ee.gca is None:
            c = self.full_clusters(B, x.device)
            return self.forward_sac(x, ee, c, rows), self._sac_gmacs(c, B, x.device), c.box
        if self.sac_cfg.cluster_mode == "window":
            c = self.cluster(ee.gca, self.sac_cfg.window)
            return self.forward_sac(x, ee, c, rows), self._sac_gmacs(c, B, x.device), c.box
        logits = ee.logits.new_empty(B, self.num_classes)
        gmacs = x.new_empty(B, dtype=torch.float32)
        boxes = torch.empty(B, 4, dtype=torch.long, device=x.device)
        for m, idx in self.window_buckets(ee.gca):
            sub = ee.index(idx)
            c = self.cluster(sub.gca, m)
            logits[idx] = self.forward_sac(x, sub, c, idx if rows is None else rows[idx]).to(logits.dtype)
            gmacs[idx] = self._sac_gmacs(c, idx.numel(), x.device)
            boxes[idx] = c.box
        return logits, gmacs, boxes

    # ------------------------------------------------------------------ forward / predict
    def forward(self, x: Tensor, full_window: bool = False) -> tuple[Tensor, Tensor] | Tensor:  # type: ignore[override]
        """Training: ``(logits_ee, logits_sac)`` for every image. Eval: adaptive logits.

        Args:
            x: ``(B, C, H, W)`` images at the configured full resolution.
            full_window: SAC sees the whole image as target (selection warm-up).
        """
        if not self.training:
            return self.predict(x).logits
        self.check_input(x)
        ee = self.forward_ee(x, need_gca=not full_window)
        logits_sac, _, _ = self._sac_buckets(x, ee, full=full_window)
        return ee.logits, logits_sac

    @torch.no_grad()
    def predict(self, x: Tensor, threshold: float | None = None) -> Prediction:
        """Batched adaptive inference.

        Images whose EE top-1 softmax probability is ≥ ``threshold`` leave the batch after EE;
        the rest (compacted into a smaller batch) go through SAC.

        Args:
            x: ``(B, C, H, W)`` images.
            threshold: exit threshold η (default: ``sac_cfg.threshold``). 0 exits every image at
                EE; a value above 1 sends every image through SAC.
        """
        self._check_shape(x)
        bad = self._nonfinite(x) if x.is_floating_point() else None  # read at the sync below
        threshold = self.sac_cfg.threshold if threshold is None else float(threshold)
        B = x.shape[0]
        ee = self.forward_ee(x, need_gca=threshold > 0)
        logits = ee.logits.clone()
        stage = torch.zeros(B, dtype=torch.long, device=x.device)
        gmacs = torch.full((B,), self.gmacs_ee(), device=x.device)
        box = torch.full((B, 4), -1, dtype=torch.long, device=x.device)
        confidence = ee.logits.float().softmax(dim=-1).amax(dim=-1)
        rest = (confidence < threshold).nonzero().squeeze(1)  # the one host sync: batch compaction
        if bad is not None and bool(bad):
            raise ValueError("input contains NaN or infinite values")
        if rest.numel():
            sac_logits, sac_gmacs, sac_box = self._sac_buckets(x, ee.index(rest), rows=rest)
            logits[rest] = sac_logits.to(logits.dtype)
            stage[rest] = 1
            gmacs[rest] += sac_gmacs
            box[rest] = sac_box
        return Prediction(logits=logits, stage=stage, gmacs=gmacs, box=box)

    @torch.no_grad()
    def predict_stages(self, x: Tensor) -> tuple[Prediction, Prediction]:
        """Every image's prediction at both stages from one EE pass.

        Returns:
            ``(predict(x, 0), predict(x, >1))``: all images exiting at EE, and all going through
            SAC — what a threshold sweep needs, without running the EE stage twice.
        """
        self.check_input(x)
        B = x.shape[0]
        ee = self.forward_ee(x)
        gmacs_ee = torch.full((B,), self.gmacs_ee(), device=x.device)
        stage = torch.zeros(B, dtype=torch.long, device=x.device)
        sac_logits, sac_gmacs, box = self._sac_buckets(x, ee)
        return (Prediction(logits=ee.logits, stage=stage, gmacs=gmacs_ee, box=torch.full_like(box, -1)),
                Prediction(logits=sac_logits.to(ee.logits.dtype), stage=stage + 1, gmacs=gmacs_ee + sac_gmacs,
                           box=box))

    # ------------------------------------------------------------------ compute accounting
    def gmacs_ee(self) -> float:
        """Closed-form GMACs of the EE stage for one image (GCA rows included)."""
        h, w = self.ee_grid
        n = h * w + 1
        depth = len(self.blocks)
        macs = flops.vit_macs((h, w), self.patch_size, self.embed_dim, depth, self.num_classes,
                              self._mlp_ratio(), self.patch_embed.proj.in_channels)
        macs += (depth - self.gca_start) * n * self.embed_dim  # q_cls·Kᵀ of the GCA
        return macs / flops.GIGA

    def gmacs_sac(self, n_target: int, n_non_target: int) -> float:
        """Closed-form GMACs of the SAC stage (reuse MLP included) for one image."""
        d = self.embed_dim
        macs = flops.patch_embed_macs(n_target, self.patch_size, d, self.patch_embed.proj.in_channels)
        macs += len(self.blocks) * flops.sac_block_macs(n_target, n_non_target, d, self._mlp_ratio())
        macs += d * self.num_classes
        if self.reuse is not None:
            h, w = self.ee_grid
            macs += h * w * 2 * d * self.reuse.mlp.fc1.out_features
        return macs / flops.GIGA

    def gmacs_full(self) -> float:
        """Closed-form GMACs of the plain backbone at full resolution (the DeiT baseline)."""
        return flops.vit_macs(self.patch_embed.grid_size, self.patch_size, self.embed_dim, len(self.blocks),
                              self.num_classes, self._mlp_ratio(), self.patch_embed.proj.in_channels) / flops.GIGA

    def _sac_gmacs(self, c: Clusters, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch,), self.gmacs_sac(c.num_target, c.num_non_target), device=device)

    def _mlp_ratio(self) -> float:
        return self.blocks[0].mlp.fc1.out_features / self.embed_dim


def _gather(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens[b, index[b]]`` for a ``(B, n, D)`` (or ``(1, n, D)``, shared) tensor and ``(B, k)``
    indices: one ``index_select`` of whole token rows (``torch.gather`` with an expanded index
    is an elementwise kernel, an order of magnitude slower here)."""
    b, n, d = tokens.shape
    flat = index if b == 1 else index + torch.arange(b, device=index.device)[:, None] * n
    return tokens.reshape(b * n, d).index_select(0, flat.flatten()).view(*index.shape, d)
