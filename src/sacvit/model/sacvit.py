"""SAC-ViT: one shared-weight timm ViT run as an early-exit stage and a clustered stage.

:class:`SACViT` *is* a timm :class:`~timm.models.vision_transformer.VisionTransformer` (same
parameter names, so DeiT checkpoints load unchanged) plus a small feature-reuse MLP:
:meth:`~SACViT.forward_ee` (the downsampled image through the shared blocks, with the global class
attention, GCA), :attr:`~SACViT.policy` (the :class:`~.policy.ClusterPolicy` splitting the EE
tokens into target / non-target on every path), :meth:`~SACViT.forward_sac` (the target region
re-embedded at full resolution, the rest reused, attention within each cluster),
:meth:`~SACViT.forward` (training: both stages' logits; eval: the adaptive logits, differentiable
when gradients are enabled) and :meth:`~SACViT.predict` (real exit through
:func:`~.exit_loop.exit_loop`, the host loop shared with the staged / compiled / ONNX paths).

What keeps FLOPs savings wall-clock savings: one host sync per call (the exit decision and batch
compaction; adaptive mode adds one for its buckets); the crop gathers only the selected patches
from the uncompacted input; the SAC sequence ``[target, CLS, non-target]`` makes every cluster's
keys a contiguous slice for dense SDPA (:mod:`.attention`); EE embeddings, tokens and GCA are
reused; the EE position embedding is cached outside training; norm and head run on CLS only.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import flops
from ..config import SACConfig
from ..timm_ops import check_blocks
from . import accounting
from .attention import cluster_block, ee_block
from .clustering import Clusters
from .exit_loop import exit_loop
from .exit_score import exit_score
from .inputs import check_batch, check_input, nonfinite
from .outputs import EEOutput, Prediction
from .patches import gather_patches, gather_tokens
from .policy import ClusterPolicy
from .pos_embed import ResampledPosEmbed
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

    The timm contract: ``model(x)`` is ``(logits_ee, logits_sac)`` in training (every image through
    both stages, for :func:`~sacvit.engine.loss.sac_loss`) and ``(B, C)`` adaptive logits in eval.
    ``forward_features(x)`` is the SAC stage of every image (no early exit, window mode), its final
    tokens normed and laid out CLS first, ``(B, 1 + T + M, D)``; timm's ``forward_head`` pools the
    CLS token, so ``forward_head(forward_features(x))`` equals ``model(x)`` at η > 1 in eval (the
    SAC-only path). ``forward_intermediates`` (what ``features_only=True`` serves) keeps timm's
    meaning: the dense feature maps of the plain backbone at full resolution.

    Attributes:
        finite_check_in_training: also reject NaN/inf inputs in training ``forward`` (off by
            default: the check needs a host sync; ``predict`` always checks, at its one sync).
        PROFILE_PARTS: the parts of ``predict`` that :meth:`profiling` laps, in order.
    """

    PROFILE_PARTS = ("ee", "cluster", "reuse", "tokens", "sac_blocks", "head")
    #: The method's name, and the :class:`SACConfig` fields a ``sac`` dict is merged over (the
    #: predecessors of :mod:`.family` are SACViT with other defaults).
    METHOD: ClassVar[str] = "sacvit"
    DEFAULT_SAC: ClassVar[dict[str, Any]] = {}

    def __init__(self, sac: SACConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sac_config = sac if isinstance(sac, SACConfig) else SACConfig.from_dict({**self.DEFAULT_SAC, **(sac or {})})
        if self.cls_token is None or self.global_pool != "token" or self.num_reg_tokens:
            raise ValueError("SACViT needs a class token, global_pool='token' and no register tokens")
        if self.no_embed_class or self.dynamic_img_size or not isinstance(self.patch_drop, nn.Identity):
            raise ValueError("SACViT does not support no_embed_class, dynamic_img_size or patch_drop")
        check_blocks(self.blocks)
        self.patch_size: int = self.patch_embed.patch_size[0]
        self.ee_grid = ClusterPolicy.for_image(self.sac_config, self.patch_embed.img_size, self.patch_size).grid
        cfg = self.sac_config
        depth = len(self.blocks)
        self.gca_start: int = depth // 4 if cfg.gca_start is None else cfg.gca_start
        if self.gca_start >= depth:
            raise ValueError(f"gca_start={cfg.gca_start} must be below the depth {depth}: "
                             f"the global class attention needs at least one block")
        self.reuse = FeatureReuse(self.embed_dim, cfg.reuse_mlp_ratio) if cfg.reuse else None
        self.finite_check_in_training = False
        self._ee_pos = ResampledPosEmbed()
        self._profile_hook: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ geometry (timm setters)
    @property
    def policy(self) -> ClusterPolicy:
        """The :class:`~.policy.ClusterPolicy` of ``sac_config`` on the EE grid (read at each use, so a
        replaced or edited ``sac_config`` takes effect)."""
        return ClusterPolicy.from_config(self.sac_config, self.ee_grid, self.patch_size)

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
        ee_grid = ClusterPolicy.for_image(self.sac_config, size, patch[0]).grid  # validates before any change
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
        self._ee_pos.clear()

    def train(self, mode: bool = True) -> "SACViT":
        self.clear_cache()
        return super().train(mode)

    @contextlib.contextmanager
    def profiling(self, lap: Callable[[str], None]) -> Iterator["SACViT"]:
        """Within the block, ``lap(part)`` is called as each part of ``predict`` ends
        (:attr:`PROFILE_PARTS`; ``bench.profile`` syncs the device and reads a clock there)."""
        previous, self._profile_hook = self._profile_hook, lap
        try:
            yield self
        finally:
            self._profile_hook = previous

    def _lap(self, part: str) -> None:
        if self._profile_hook is not None:
            self._profile_hook(part)

    # ------------------------------------------------------------------ input checks
    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` is not a batch this model can run."""
        check_input(x, self.patch_embed, self.patch_size)

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

    def _ee_pos_embed(self) -> Tensor:
        """Position embedding resampled to the EE grid (cached for inference, see :class:`.ResampledPosEmbed`)."""
        return self._ee_pos(self.pos_embed, self.ee_grid, self.patch_embed.grid_size, self.training)

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
        beta = self.sac_config.gca_beta
        a = torch.stack(rows).detach().float().softmax(dim=-1).mean(dim=2)[..., 1:]  # (L, B, n)
        powers = torch.arange(len(rows) - 1, -1, -1, device=a.device, dtype=a.dtype)
        return torch.tensordot((1 - beta) * torch.pow(beta, powers), a, dims=1)

    # ------------------------------------------------------------------ stage 2
    def forward_sac(self, x: Tensor, ee: EEOutput, clusters: Clusters, rows: Tensor | None = None) -> Tensor:
        """SAC stage for a dense bucket: returns ``(B', C)`` logits.

        Args:
            x: ``(B, C, H, W)`` full-resolution images.
            ee: the EE outputs of the ``B'`` images of the bucket.
            clusters: their clusters.
            rows: ``(B',)`` which images of ``x`` form the bucket (``None``: all, ``B' = B``).
        """
        reused = self.reuse_tokens(ee)
        self._lap("reuse")
        z = self.sac_tokens(x, ee, clusters, rows, reused)
        self._lap("tokens")
        z = self.sac_blocks(z, clusters.num_target)
        self._lap("sac_blocks")
        logits = self.sac_head(z, clusters.num_target)
        self._lap("head")
        return logits

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
            if self.sac_config.reuse_non_target:
                non_target = non_target + gather_tokens(reused, clusters.non_target)
        cls = self._cls(target.shape[0], target.dtype)
        return self.norm_pre(self.pos_drop(torch.cat([target, cls, non_target], dim=1)))

    def sac_blocks(self, z: Tensor, n_target: int) -> Tensor:
        """The shared blocks with cluster attention on a ``[target, CLS, non-target]`` sequence."""
        within = self.sac_config.attention == "cluster"
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
        their EE outputs), one dense bucket per window side of the :attr:`policy`."""
        B = x.shape[0] if rows is None else rows.shape[0]
        plan = [(None, self.policy.full(B, x.device))] if full or ee.gca is None else self.policy.plan(ee.gca)
        self._lap("cluster")
        if plan[0][0] is None:  # one bucket of every image
            c = plan[0][1]
            return self.forward_sac(x, ee, c, rows), self._sac_gmacs(c, B, x.device), c.box
        logits = ee.logits.new_empty(B, ee.logits.shape[1])
        gmacs = x.new_empty(B, dtype=torch.float32)
        boxes = torch.empty(B, 4, dtype=torch.long, device=x.device)
        for idx, c in plan:
            logits[idx] = self.forward_sac(x, ee.index(idx), c, idx if rows is None else rows[idx]).to(logits.dtype)
            gmacs[idx] = self._sac_gmacs(c, idx.numel(), x.device)
            boxes[idx] = c.box
        return logits, gmacs, boxes

    def exit_confidence(self, logits: Tensor) -> Tensor:
        """``(B,)`` the exit score of EE logits (``sac_config.exit_score``; η is compared with it)."""
        return exit_score(logits, self.sac_config.exit_score, self.sac_config.exit_temperature)

    def target_selection(self, ee: EEOutput) -> tuple[Tensor, Tensor]:
        """What the SAC stage selects for each image of ``ee`` (whether it exits or not): the
        ``(B, h, w)`` mask of target EE tokens and the ``(B, 4)`` pixel box, as ``predict``."""
        return self.policy.selection(ee.gca)

    # ------------------------------------------------------------------ forward / predict
    def forward(self, x: Tensor, full_window: bool = False) -> tuple[Tensor, Tensor] | Tensor:  # type: ignore[override]
        """Training: the tuple ``(logits_ee, logits_sac)``, both ``(B, C)``, every image through
        both stages (the input of :func:`~sacvit.engine.loss.sac_loss`). Eval: adaptive logits.

        In eval mode the result is :meth:`predict`'s logits at ``sac_config.threshold``, but autograd
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
            return self._adaptive(x, self.sac_config.threshold).logits
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
            threshold: exit threshold η (default: ``sac_config.threshold``). 0 exits every image at
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
        return self._adaptive(x, self.sac_config.threshold if threshold is None else float(threshold))

    def _adaptive(self, x: Tensor, threshold: float) -> Prediction:
        """:meth:`predict`'s computation, differentiable when gradients are enabled."""
        self._check_shape(x)
        bad = nonfinite(x) if x.is_floating_point() else None  # read at the exit decision's sync
        ee = self.forward_ee(x, need_gca=threshold > 0)
        self._lap("ee")
        confidence = self.exit_confidence(ee.logits.detach())
        return exit_loop(ee.logits, confidence, threshold, self.gmacs_ee(),
                         lambda rest: self._sac_buckets(x, ee.index(rest), rows=rest), bad)

    def forward_features(self, x: Tensor, attn_mask: Tensor | None = None,  # type: ignore[override]
                         is_causal: bool = False) -> Tensor:
        """The SAC stage of every image (no early exit): its final tokens after the norm, CLS
        first, ``(B, 1 + T + M, D)`` = ``[CLS, target, non-target]``, so that timm's
        ``forward_head`` (which pools the CLS token) gives the SAC logits.

        Raises:
            ValueError: ``cluster_mode='adaptive'`` (one token count per window side, no single
                tensor): use :meth:`predict`, :meth:`forward_ee` / :meth:`forward_sac`, or
                ``forward_intermediates`` for the plain backbone's features; an ``attn_mask`` or
                ``is_causal`` (timm's options; the SAC stage's attention is its clusters).
        """
        if attn_mask is not None or is_causal:
            raise ValueError("SACViT.forward_features takes no attn_mask/is_causal: the SAC stage attends within "
                             "its clusters; use forward_backbone for the plain ViT")
        self._check_two_stage()
        self._check_shape(x)
        policy = self.policy
        if policy.mode != "window":
            raise ValueError("forward_features needs one token count for the batch; cluster_mode='adaptive' has "
                             "one per window side: use predict, forward_ee/forward_sac or forward_intermediates")
        ee = self.forward_ee(x)
        c = policy.cluster(ee.gca, policy.window)
        z, t = self.sac_blocks(self.sac_tokens(x, ee, c), c.num_target), c.num_target
        return self.norm(torch.cat([z[:, t:t + 1], z[:, :t], z[:, t + 1:]], dim=1))

    def forward_backbone(self, x: Tensor) -> Tensor:
        """The plain backbone at full resolution, ``(B, C)`` logits: timm's ``VisionTransformer``
        forward on these weights (the DeiT baseline; no EE, no clustering)."""
        return VisionTransformer.forward_head(self, VisionTransformer.forward_features(self, x))

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
        confidence = self.exit_confidence(ee.logits)
        gmacs_ee = torch.full((B,), self.gmacs_ee(), device=x.device)
        stage = torch.zeros(B, dtype=torch.long, device=x.device)
        sac_logits, sac_gmacs, box = self._sac_buckets(x, ee)
        return (Prediction(ee.logits, stage, gmacs_ee, torch.full_like(box, -1), confidence),
                Prediction(sac_logits.to(ee.logits.dtype), stage + 1, gmacs_ee + sac_gmacs, box, confidence))

    # ------------------------------------------------------------------ compute accounting
    def gmacs_ee(self) -> float:
        """Closed-form GMACs of the EE stage for one image (GCA rows included)."""
        return accounting.gmacs_ee(self)

    def gmacs_sac(self, n_target: int, n_non_target: int) -> float:
        """Closed-form GMACs of the SAC stage (reuse MLP included) for one image."""
        return accounting.gmacs_sac(self, n_target, n_non_target)

    def gmacs_full(self) -> float:
        """Closed-form GMACs of the plain backbone at full resolution (the DeiT baseline)."""
        return flops.vit_gmacs(self)

    def _sac_gmacs(self, c: Clusters, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch,), self.gmacs_sac(c.num_target, c.num_non_target), device=device)
