"""SAC-ViT: one shared-weight timm ViT run as an early-exit stage and a clustered stage.

:class:`SACViT` *is* a timm :class:`~timm.models.vision_transformer.VisionTransformer` (same
parameter names, so DeiT checkpoints load unchanged) plus a small feature-reuse MLP. Its inherited
``forward_features`` / ``forward_head`` / ``forward_intermediates`` are the plain backbone at full
resolution (what ``features_only`` serves); the method adds:

* :meth:`SACViT.forward_ee` — the image downsampled by ``ee_scale``, position embeddings resampled
  to the EE grid, the shared blocks and head; also the global class attention (GCA) of each token;
* :meth:`SACViT.cluster` — the non-iterative split of the EE tokens into target / non-target;
* :meth:`SACViT.forward_sac` — the target region re-embedded from the full-resolution image,
  non-target tokens reused from EE, attention within each cluster;
* :meth:`SACViT.forward` — in training, ``(logits_ee, logits_sac)`` for every image; in eval,
  the adaptive logits at the configured threshold (so timm's validation tools work unchanged),
  differentiable when gradients are enabled;
* :meth:`SACViT.predict` — batched adaptive inference: confident images leave after EE.

Inference path (what keeps FLOPs savings real wall-clock savings): one host sync per call, at
the exit decision, where the batch is compacted to the images that continue (the adaptive
clustering mode needs one more, for its bucket sizes); the crop and re-embedding gather only the
selected patches straight from the uncompacted input; the SAC sequence is laid out
``[target, CLS, non-target]`` so that every cluster's keys are a contiguous slice for dense SDPA
(see :mod:`.attention`); the EE patch embeddings, final tokens and GCA are reused, never
recomputed; the resampled EE position embedding is cached outside training; the final norm and
head run on the CLS token only.

The module is a little over 450 lines because the two stages share state that belongs to one
class (the EE outputs, the cached EE position embedding, timm's setters that must keep the EE grid
consistent); every pure part lives beside it: :mod:`.clustering` (the geometry), :mod:`.patches`
(the gathers), :mod:`.attention` (the block passes), :mod:`.inputs`, :mod:`.outputs`, :mod:`.reuse`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import flops
from ..config import SACConfig
from ..timm_ops import check_blocks
from .attention import cluster_block, ee_block
from .clustering import (Clusters, adaptive_window_size, best_window, center_window, make_clusters,
                         random_window)
from .inputs import check_batch, nonfinite
from .outputs import EEOutput, Prediction
from .patches import gather_patches, gather_tokens
from .reuse import FeatureReuse

__all__ = ["SACViT", "EEOutput", "Prediction"]


class SACViT(VisionTransformer):
    """Semantic-Aware Clustering ViT with early exit, on timm's ``VisionTransformer``.

    Args:
        sac: the method's configuration (:class:`~sacvit.config.SACConfig` or a dict of its fields).
        **kwargs: timm ``VisionTransformer`` arguments (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``num_classes``, ``drop_path_rate``, …).
            The backbone must use a class token with ``global_pool='token'``, timm's standard
            blocks, no register tokens and no patch dropout, as DeiT does.

    Attributes:
        finite_check_in_training: also reject NaN/inf inputs in training ``forward`` (off by
            default: the check needs a host sync; ``predict`` always checks, at its one sync).
    """

    def __init__(self, sac: SACConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sac_cfg = sac if isinstance(sac, SACConfig) else SACConfig(**(sac or {}))
        if self.cls_token is None or self.global_pool != "token" or self.num_reg_tokens:
            raise ValueError("SACViT needs a class token, global_pool='token' and no register tokens")
        if self.no_embed_class or self.dynamic_img_size or not isinstance(self.patch_drop, nn.Identity):
            raise ValueError("SACViT does not support no_embed_class, dynamic_img_size or patch_drop")
        check_blocks(self.blocks)
        self.patch_size: int = self.patch_embed.patch_size[0]
        self.ee_grid: tuple[int, int] = self._ee_geometry(tuple(self.patch_embed.img_size), self.patch_size)
        cfg = self.sac_cfg
        depth = len(self.blocks)
        self.gca_start: int = depth // 4 if cfg.gca_start is None else cfg.gca_start
        if self.gca_start >= depth:
            raise ValueError(f"gca_start={cfg.gca_start} must be below the depth {depth}: "
                             f"the global class attention needs at least one block")
        self.reuse = FeatureReuse(self.embed_dim, cfg.reuse_mlp_ratio) if cfg.reuse else None
        self.finite_check_in_training = False
        self._ee_pos_cache: tuple[Tensor, Any, Tensor] | None = None

    # ------------------------------------------------------------------ geometry (timm setters)
    def _ee_geometry(self, img_size: tuple[int, int], patch: int) -> tuple[int, int]:
        """The EE grid of ``img_size`` at ``patch``; ``ValueError`` unless it is whole and fits the window."""
        h, w = img_size
        if h % patch or w % patch:
            raise ValueError(f"image size {h}×{w} is not divisible by the patch size {patch}")
        gh, gw, s = h // patch, w // patch, self.sac_cfg.ee_scale
        if gh % s or gw % s:
            raise ValueError(f"the {gh}×{gw} token grid is not divisible by ee_scale={s}: "
                             f"the EE grid must be whole")
        ee = (gh // s, gw // s)
        cfg = self.sac_cfg
        if cfg.cluster_mode == "window" and cfg.window > min(ee):
            raise ValueError(f"window={cfg.window} does not fit the {ee[0]}×{ee[1]} EE grid")
        if cfg.cluster_mode == "adaptive" and min(cfg.adaptive_sizes) > min(ee):
            raise ValueError(f"no adaptive window size of {cfg.adaptive_sizes} fits the {ee[0]}×{ee[1]} EE grid")
        return ee

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """timm's ``set_input_size``, keeping the EE grid and every derived value consistent.

        Raises ``ValueError`` (and changes nothing) when the new size gives no whole EE grid or
        the window does not fit it.
        """
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        size = pair(img_size) if img_size is not None else tuple(self.patch_embed.img_size)
        patch = pair(patch_size) if patch_size is not None else tuple(self.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ValueError(f"SACViT needs square patches, got {patch}")
        ee_grid = self._ee_geometry(size, patch[0])  # validates before anything changes
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        self.ee_grid, self.patch_size = ee_grid, patch[0]
        self.clear_cache()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ``reset_classifier``. Both stages read the class token: ``global_pool`` may be
        ``'token'``, or ``''`` for feature extraction only (timm's ``prune_intermediate_layers``),
        after which the two-stage forward refuses to run."""
        if global_pool not in (None, "token", ""):
            raise ValueError(f"SACViT reads the class token in both stages: global_pool must stay "
                             f"'token' (or '' for feature extraction), got {global_pool!r}")
        super().reset_classifier(num_classes, global_pool)

    def _check_two_stage(self) -> None:
        if self.global_pool != "token" or len(self.blocks) <= self.gca_start:
            raise RuntimeError("this SACViT was reset or pruned for feature extraction (global_pool="
                               f"{self.global_pool!r}, {len(self.blocks)} blocks): the two-stage forward "
                               "needs the class token and every block; use forward_intermediates")

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
        if x.is_floating_point() and bool(nonfinite(x)):
            raise ValueError("input contains NaN or infinite values")

    def _check_shape(self, x: Tensor) -> None:
        check_batch(x, self.patch_embed.proj.in_channels, tuple(self.patch_embed.img_size), self.patch_size)

    # ------------------------------------------------------------------ embeddings
    def _embed(self, x: Tensor) -> Tensor:
        """Patch embedding of an image of any whole-patch size, as ``(B, n, D)`` tokens."""
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return self.patch_embed.norm(tokens)

    def _embed_patches(self, x: Tensor, index: Tensor, rows: Tensor | None = None) -> Tensor:
        """Patch-embed only the full-resolution patches ``index`` ``(B', T)`` of images ``rows``,
        with the patch-embedding convolution's weights as one matmul (see :func:`gather_patches`)."""
        proj = self.patch_embed.proj
        patches = gather_patches(x, index, self.patch_size, rows).to(proj.weight.dtype)
        return self.patch_embed.norm(F.linear(patches, proj.weight.flatten(1), proj.bias))

    def _resample_ee_pos(self, pos: Tensor) -> Tensor:
        return resample_abs_pos_embed(pos, new_size=list(self.ee_grid),
                                      old_size=self.patch_embed.grid_size, num_prefix_tokens=1)

    def _ee_pos_embed(self) -> Tensor:
        """Position embedding resampled to the EE grid (cached outside training, autograd and
        graph capture: ``torch.compile`` / ``torch.export`` trace the resampling itself)."""
        pos = self.pos_embed
        if self.training or (torch.is_grad_enabled() and pos.requires_grad) or torch.compiler.is_compiling():
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

    def _cls(self, batch: int, dtype: torch.dtype) -> Tensor:
        return (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1).to(dtype)

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and torch.is_grad_enabled()

    # ------------------------------------------------------------------ stage 1
    def forward_ee(self, x: Tensor, need_gca: bool = True) -> EEOutput:
        """Early-exit stage on ``x`` downsampled by ``ee_scale``.

        Args:
            x: ``(B, C, H, W)`` full-resolution images.
            need_gca: accumulate the global class attention (needed to cluster).
        """
        h, w = self.ee_grid
        p = self.patch_size
        # the antialiased resize has no half-precision CPU kernel: resize in float, compute in x's dtype
        src = x if x.dtype in (torch.float32, torch.float64) else x.float()
        x_ee = F.interpolate(src, size=(h * p, w * p), mode="bilinear", antialias=True,
                             align_corners=False).to(x.dtype)
        embed = self._embed(x_ee) + self._ee_pos_embed()[:, 1:]
        z = self.norm_pre(self.pos_drop(torch.cat([self._cls(x.shape[0], embed.dtype), embed], dim=1)))
        rows = []  # the CLS query's logits of each GCA block: one matmul per block
        for i, blk in enumerate(self.blocks):
            want = need_gca and i >= self.gca_start
            if self._checkpointing():
                z, r = checkpoint(ee_block, blk, z, want, use_reentrant=False)
            else:
                z, r = ee_block(blk, z, want)
            if want:
                rows.append(r)
        logits = self.forward_head(self.norm(z[:, :1]))  # norm is per token: CLS only
        gca = self._gca(rows).view(-1, h, w) if rows else None
        return EEOutput(logits=logits, tokens=z[:, 1:], embed=embed, gca=gca)

    def _gca(self, rows: list[Tensor]) -> Tensor:
        """The EMA ``g = β·g + (1−β)·a_l`` (from ``g = 0``) over the blocks' CLS attention rows.

        ``a_l`` is the head-averaged softmax of block ``l``'s CLS logits, CLS column dropped;
        unrolled, ``g = Σ_l (1−β)·β^(L−1−l)·a_l`` — one softmax, mean and weighted sum for all
        blocks at once. The weights are made on the device (no tensor from Python data).
        """
        beta = self.sac_cfg.gca_beta
        a = torch.stack(rows).detach().float().softmax(dim=-1).mean(dim=2)[..., 1:]  # (L, B, n)
        powers = torch.arange(len(rows) - 1, -1, -1, device=a.device, dtype=a.dtype)
        return torch.tensordot((1 - beta) * torch.pow(beta, powers), a, dims=1)

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
        cfg = self.sac_cfg
        if cfg.window_policy == "gca":
            row, col = best_window(gca, m)
        elif cfg.window_policy == "center":
            row, col = center_window(gca.shape[0], m, self.ee_grid, gca.device)
        else:
            row, col = random_window(gca.shape[0], m, self.ee_grid, gca.device)
        alpha = cfg.alpha if m < min(self.ee_grid) else 1.0
        return make_clusters(gca, row, col, m, cfg.ee_scale, cfg.ee_scale * self.patch_size, alpha)

    def full_clusters(self, batch: int, device: torch.device) -> Clusters:
        """The whole image as target (selection warm-up, or a reference full-resolution pass)."""
        gca = torch.ones(batch, *self.ee_grid, device=device)
        m = min(self.ee_grid)
        return make_clusters(gca, *best_window(gca, m), m, self.sac_cfg.ee_scale,
                             self.sac_cfg.ee_scale * self.patch_size)

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
        target = self._embed_patches(x, index, rows) + gather_tokens(self.pos_embed[:, 1:], index)
        non_target = gather_tokens(ee.embed, clusters.non_target)
        if reused is not None:
            target = target + gather_tokens(reused, clusters.parent)
            if self.sac_cfg.reuse_non_target:
                non_target = non_target + gather_tokens(reused, clusters.non_target)
        cls = self._cls(target.shape[0], target.dtype)
        return self.norm_pre(self.pos_drop(torch.cat([target, cls, non_target], dim=1)))

    def sac_blocks(self, z: Tensor, n_target: int) -> Tensor:
        """The shared blocks with cluster attention on a ``[target, CLS, non-target]`` sequence."""
        within = self.sac_cfg.attention == "cluster"
        for blk in self.blocks:
            if self._checkpointing():
                z = checkpoint(cluster_block, blk, z, n_target, within, use_reentrant=False)
            else:
                z = cluster_block(blk, z, n_target, within)
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
        logits = ee.logits.new_empty(B, ee.logits.shape[1])
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

        In eval mode the result is :meth:`predict`'s logits at ``sac_cfg.threshold``, but autograd
        is kept when gradients are enabled (Grad-CAM, adversarial evaluation, distillation).
        Without a classifier (``num_classes=0``) there is no exit rule: eval returns the SAC
        stage's pooled features of every image.

        Args:
            x: ``(B, C, H, W)`` images at the configured full resolution.
            full_window: SAC sees the whole image as target (selection warm-up).
        """
        self._check_two_stage()
        if not self.training:
            if self.num_classes == 0:
                self.check_input(x)
                return self._sac_buckets(x, self.forward_ee(x))[0]
            return self._adaptive(x, self.sac_cfg.threshold).logits
        self._check_shape(x)
        if self.finite_check_in_training and x.is_floating_point() and bool(nonfinite(x)):
            raise ValueError("input contains NaN or infinite values")
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

        Raises:
            RuntimeError: the model is in training mode (drop-path would make the answer random).
            ValueError: a bad input batch, or a model without a classifier (``num_classes=0``).
        """
        if self.training:
            raise RuntimeError("SACViT.predict on a model in training mode: call model.eval() first "
                               "(drop-path and dropout would make the prediction random)")
        self._check_two_stage()
        if self.num_classes == 0:
            raise ValueError("predict needs a classifier (the model has num_classes=0): the exit rule "
                             "reads the EE class probabilities; use model(x) for SAC features")
        return self._adaptive(x, self.sac_cfg.threshold if threshold is None else float(threshold))

    def _adaptive(self, x: Tensor, threshold: float) -> Prediction:
        """:meth:`predict`'s computation, differentiable when gradients are enabled."""
        self._check_shape(x)
        bad = nonfinite(x) if x.is_floating_point() else None  # read at the sync below
        B = x.shape[0]
        ee = self.forward_ee(x, need_gca=threshold > 0)
        logits = ee.logits.clone()
        stage = torch.zeros(B, dtype=torch.long, device=x.device)
        gmacs = torch.full((B,), self.gmacs_ee(), device=x.device)
        box = torch.full((B, 4), -1, dtype=torch.long, device=x.device)
        confidence = ee.logits.detach().float().softmax(dim=-1).amax(dim=-1)
        go_on = confidence < threshold
        if bad is not None:  # a bad input adds B + 1 entries, so one nonzero answers both questions
            go_on = torch.cat([go_on, bad.expand(B + 1)])
        rest = go_on.nonzero().squeeze(1)  # the one host sync: batch compaction
        if rest.numel() > B:
            raise ValueError("input contains NaN or infinite values")
        if rest.numel():
            sac_logits, sac_gmacs, sac_box = self._sac_buckets(x, ee.index(rest), rows=rest)
            logits[rest] = sac_logits.to(logits.dtype)
            stage.index_fill_(0, rest, 1)
            gmacs[rest] += sac_gmacs
            box[rest] = sac_box
        return Prediction(logits=logits, stage=stage, gmacs=gmacs, box=box, confidence=confidence)

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
        confidence = ee.logits.float().softmax(dim=-1).amax(dim=-1)
        gmacs_ee = torch.full((B,), self.gmacs_ee(), device=x.device)
        stage = torch.zeros(B, dtype=torch.long, device=x.device)
        sac_logits, sac_gmacs, box = self._sac_buckets(x, ee)
        return (Prediction(ee.logits, stage, gmacs_ee, torch.full_like(box, -1), confidence),
                Prediction(sac_logits.to(ee.logits.dtype), stage + 1, gmacs_ee + sac_gmacs, box, confidence))

    # ------------------------------------------------------------------ compute accounting
    def gmacs_ee(self) -> float:
        """Closed-form GMACs of the EE stage for one image (GCA rows included)."""
        h, w = self.ee_grid
        macs = flops.vit_macs((h, w), self.patch_size, self.embed_dim, len(self.blocks), self.num_classes,
                              self._mlp_ratio(), self.patch_embed.proj.in_channels)
        macs += (len(self.blocks) - self.gca_start) * (h * w + 1) * self.embed_dim  # q_cls·Kᵀ of the GCA
        return macs / flops.GIGA

    def gmacs_sac(self, n_target: int, n_non_target: int) -> float:
        """Closed-form GMACs of the SAC stage (reuse MLP included) for one image."""
        d = self.embed_dim
        macs = flops.patch_embed_macs(n_target, self.patch_size, d, self.patch_embed.proj.in_channels)
        block = flops.sac_block_macs if self.sac_cfg.attention == "cluster" else flops.sac_block_macs_full
        macs += len(self.blocks) * block(n_target, n_non_target, d, self._mlp_ratio())
        macs += d * self.num_classes
        if self.reuse is not None:
            h, w = self.ee_grid
            macs += h * w * 2 * d * self.reuse.mlp.fc1.out_features
        return macs / flops.GIGA

    def gmacs_full(self) -> float:
        """Closed-form GMACs of the plain backbone at full resolution (the DeiT baseline)."""
        return flops.vit_gmacs(self)

    def _sac_gmacs(self, c: Clusters, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch,), self.gmacs_sac(c.num_target, c.num_non_target), device=device)

    def _mlp_ratio(self) -> float:
        return self.blocks[0].mlp.fc1.out_features / self.embed_dim
