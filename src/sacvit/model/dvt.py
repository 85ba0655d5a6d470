"""DVT (Wang et al., NeurIPS 2021, "Not All Images are Worth 16x16 Words"): a cascade of ViTs.

:class:`DVT` runs separately parameterised timm :class:`~timm.models.vision_transformer.VisionTransformer`
s (:attr:`DVT.stages`) on the same image at growing token grids (DeiT-S: 7×7, 10×10, 14×14
tokens at 112, 160, 224 px); an image leaves after the first stage whose top-1 softmax
probability reaches η. Every stage is built from the same constructor arguments and has plain
timm parameter names, so a DeiT checkpoint loads unchanged into each of them (position embeddings
resampled to the stage's grid by timm's filter). The stages differ in their input only: the image
resized (bilinear, antialiased, as ``SACViT.forward_ee``) to ``grid · patch`` pixels. DVT's own
code keeps the 224-px image and grows the *patch* (32, 23, 16 px); resizing the image instead
keeps DeiT's 16-px patch-embedding weights valid in every stage.

What a downstream stage takes from the one before it (both paths zero-initialised, so an untrained
DVT stage computes exactly the plain ViT of its weights):

* **feature reuse** (``DVTConfig.feature_reuse``) — the upstream stage's final normed patch tokens
  → LayerNorm → MLP (D → r·D → D, GELU, last layer zero) on the upstream grid, bilinearly resized
  to the downstream grid and added to the downstream patch embeddings (the first block's input; the
  CLS token gets nothing). DVT concatenates the reused features into the MLP of every downstream
  layer; this embedding-level variant (CF-/LF-ViT's, and SAC-ViT's :class:`~.reuse.FeatureReuse`)
  keeps the timm blocks unmodified, so DeiT weights load as they are. Bilinear because 7 → 10 is
  no whole-number ratio, where nearest would repeat rows unevenly.
* **relationship reuse** (``DVTConfig.relation_reuse``) — the patch×patch attention logits of every
  upstream layer, ``(B, L·h, n, n)``, through a 1×1 map to the downstream layers' ``L·h`` channels
  (zero-initialised), bilinearly resized to the downstream ``n' × n'`` and added to each
  downstream layer's attention logits (CLS row and column: bias 0). The reused logits are the
  ones the upstream stage used, its own bias included, so the relations accumulate down the
  cascade as in DVT.

Both paths read only the immediately upstream stage (which carries the earlier ones in it).
Gradients flow through them in training: the loss of a later exit also trains the earlier stages.

Inference (:meth:`DVT.predict`) really exits: after each stage but the last, the images that are
confident enough leave the batch (``index_select`` compaction, one host sync per stage), and only
the rest (with their upstream tokens and logits) run the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import flops, timm_ops
from ..config import DVTConfig
from .inputs import check_batch, check_input, nonfinite
from .outputs import Prediction
from .reuse import FeatureReuse

__all__ = ["DVT", "StageOutput", "RelationReuse"]


@dataclass
class StageOutput:
    """What one DVT stage hands to the next.

    Attributes:
        logits: ``(B, C)`` the stage's logits.
        tokens: ``(B, n, D)`` its final patch tokens after the last norm (feature-reuse input).
        relations: ``(B, L·h, n, n)`` the patch×patch attention logits of all its layers (layer
            major), or ``None`` when no stage reads them.
    """

    logits: Tensor
    tokens: Tensor
    relations: Tensor | None

    def index(self, idx: Tensor) -> "StageOutput":
        """The outputs of the images ``idx`` only (batch compaction)."""
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return StageOutput(pick(self.logits), pick(self.tokens), pick(self.relations))


class RelationReuse(nn.Module):
    """``(B, C_in, n, n)`` attention logits → 1×1 map (zero-initialised) → bilinear to ``(B, C_out, m, m)``."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.map = nn.Conv2d(channels_in, channels_out, kernel_size=1)
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)

    def forward(self, relations: Tensor, side: int) -> Tensor:
        return F.interpolate(self.map(relations), size=(side, side), mode="bilinear", align_corners=False)


class DVT(nn.Module):
    """Dynamic Vision Transformer: a cascade of timm ViTs on growing token grids, with early exit.

    Args:
        dvt: the method's configuration (:class:`~sacvit.config.DVTConfig` or a dict of its fields).
        img_size: full-resolution input side (optional); must be ``grids[-1] · patch_size``.
        patch_size: patch side of every stage.
        **kwargs: timm ``VisionTransformer`` arguments shared by every stage (``embed_dim``,
            ``depth``, ``num_heads``, ``num_classes``, ``drop_path_rate``, …). Each stage must use
            a class token with ``global_pool='token'``, timm's standard blocks, no register tokens,
            no pre-norm and no patch dropout, as DeiT does.

    The timm contract: ``model(x)`` is the tuple of every stage's ``(B, C)`` logits in training
    (every image through every stage, for :func:`~sacvit.engine.loss.cascade_loss`) and the adaptive
    logits at ``dvt_cfg.threshold`` in eval. :attr:`patch_embed` and :attr:`num_classes` are the
    last stage's, so tools reading ``model.patch_embed.img_size`` see the full-resolution input.
    """

    def __init__(self, dvt: DVTConfig | dict[str, Any] | None = None, img_size: Any = None,
                 patch_size: int = 16, **kwargs: Any) -> None:
        super().__init__()
        self.dvt_cfg = dvt if isinstance(dvt, DVTConfig) else DVTConfig.from_dict(dict(dvt or {}))
        self.grids: tuple[int, ...] = self.dvt_cfg.grids
        self.patch_size = int(patch_size)
        full = self.grids[-1] * self.patch_size
        size = (img_size, img_size) if isinstance(img_size, int) else img_size
        if size is not None and tuple(size) != (full, full):
            raise ValueError(f"DVT: img_size {img_size} is not the last grid {self.grids[-1]} × patch "
                             f"{self.patch_size} = {full} px; pass dvt=dict(grids=…) that ends at the full grid")
        self.stages = nn.ModuleList(VisionTransformer(img_size=g * self.patch_size, patch_size=self.patch_size,
                                                      **kwargs) for g in self.grids)
        for vit in self.stages:
            if vit.cls_token is None or vit.global_pool != "token" or vit.num_reg_tokens:
                raise ValueError("DVT stages need a class token, global_pool='token' and no register tokens")
            if vit.no_embed_class or vit.dynamic_img_size or not isinstance(vit.patch_drop, nn.Identity) \
                    or not isinstance(vit.norm_pre, nn.Identity):
                raise ValueError("DVT does not support no_embed_class, dynamic_img_size, patch_drop or pre_norm")
            timm_ops.check_blocks(vit.blocks)
        self.embed_dim: int = self.stages[0].embed_dim
        cfg, n = self.dvt_cfg, len(self.grids)
        self.feature_reuse = nn.ModuleList(FeatureReuse(self.embed_dim, cfg.reuse_mlp_ratio) for _ in range(n - 1)) \
            if cfg.feature_reuse else None
        channels = len(self.stages[0].blocks) * self.stages[0].blocks[0].attn.num_heads
        self.relation_reuse = nn.ModuleList(RelationReuse(channels, channels) for _ in range(n - 1)) \
            if cfg.relation_reuse else None
        self.finite_check_in_training = False

    # ------------------------------------------------------------------ timm surface
    @property
    def patch_embed(self) -> nn.Module:
        """The last (full-resolution) stage's patch embedding."""
        return self.stages[-1].patch_embed

    @property
    def num_classes(self) -> int:
        return self.stages[-1].num_classes

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ``reset_classifier`` on every stage (each exit reads its class token)."""
        if global_pool not in (None, "token"):
            raise ValueError(f"DVT reads the class token in every stage, got global_pool={global_pool!r}")
        for vit in self.stages:
            vit.reset_classifier(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for vit in self.stages:
            vit.set_grad_checkpointing(enable)

    def load_backbone_state(self, state: Mapping[str, Tensor]) -> None:
        """Load one ViT state dict (DeiT/timm, or a SAC-ViT's backbone) into every stage, position
        embeddings resampled to each stage's grid; a head of another class count is skipped.

        Raises:
            ValueError: keys or shapes that do not fit a stage.
        """
        for vit in self.stages:
            own = vit.state_dict()
            sd = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith("reuse.")}, vit)
            if "head.weight" in sd and sd["head.weight"].shape != own["head.weight"].shape:
                sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            result = vit.load_state_dict(sd, strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("head.")]
            if result.unexpected_keys or missing:
                raise ValueError(f"the state does not fit a DVT stage: unexpected keys {result.unexpected_keys[:5]}, "
                                 f"missing keys {missing[:5]}")

    # ------------------------------------------------------------------ input checks
    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` is not a batch this model can run."""
        check_input(x, self.patch_embed, self.patch_size)

    def _check_shape(self, x: Tensor) -> None:
        check_batch(x, self.patch_embed.proj.in_channels, tuple(self.patch_embed.img_size), self.patch_size)

    # ------------------------------------------------------------------ one stage
    def _resize(self, x: Tensor, i: int) -> Tensor:
        """``x`` resized to stage ``i``'s side (bilinear, antialiased; the full side: unchanged)."""
        side = self.grids[i] * self.patch_size
        if tuple(x.shape[-2:]) == (side, side):
            return x
        # the antialiased resize has no half-precision CPU kernel: resize in float, compute in x's dtype
        src = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return F.interpolate(src, size=(side, side), mode="bilinear", antialias=True, align_corners=False).to(x.dtype)

    def _reused_features(self, i: int, tokens: Tensor) -> Tensor:
        """Feature-reuse term of stage ``i`` ``(B, n_i, D)`` from stage ``i−1``'s final tokens."""
        g_up, g = self.grids[i - 1], self.grids[i]
        r = self.feature_reuse[i - 1](tokens)
        r = r.transpose(1, 2).reshape(r.shape[0], -1, g_up, g_up)
        return F.interpolate(r, size=(g, g), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)

    def forward_stage(self, i: int, x: Tensor, up: StageOutput | None = None) -> StageOutput:
        """Stage ``i`` on the full-resolution images ``x`` ``(B, C, H, W)``, reusing ``up`` (stage
        ``i−1``'s outputs of the same images; ``None`` for stage 0)."""
        vit = self.stages[i]
        z = timm_ops.embed_tokens(vit, self._resize(x, i))
        if up is not None and self.feature_reuse is not None:
            z = torch.cat([z[:, :1], z[:, 1:] + self._reused_features(i, up.tokens).to(z.dtype)], dim=1)
        bias = None
        if up is not None and self.relation_reuse is not None:
            bias = self.relation_reuse[i - 1](up.relations, self.grids[i] ** 2).to(z.dtype)
            bias = bias.unflatten(1, (len(vit.blocks), -1))  # (B, L, h, n, n)
        want = self.relation_reuse is not None and i < len(self.stages) - 1
        rows = []
        for j, blk in enumerate(vit.blocks):
            b = None if bias is None else F.pad(bias[:, j], (1, 0, 1, 0))  # CLS row and column: 0
            if vit.grad_checkpointing and torch.is_grad_enabled():
                z, logits = checkpoint(timm_ops.block_forward_with_logits, blk, z, b, want, use_reentrant=False)
            else:
                z, logits = timm_ops.block_forward_with_logits(blk, z, b, want)
            if want:
                rows.append(logits[:, :, 1:, 1:])
        z = vit.norm(z)
        return StageOutput(vit.forward_head(z), z[:, 1:], torch.cat(rows, dim=1) if want else None)

    def _all_stages(self, x: Tensor) -> list[StageOutput]:
        outs: list[StageOutput] = []
        for i in range(len(self.stages)):
            outs.append(self.forward_stage(i, x, outs[-1] if outs else None))
        return outs

    # ------------------------------------------------------------------ forward / predict
    def forward(self, x: Tensor) -> tuple[Tensor, ...] | Tensor:
        """Training: the tuple of every stage's ``(B, C)`` logits, every image through every stage
        (the input of :func:`~sacvit.engine.loss.cascade_loss`). Eval: :meth:`predict`'s logits at
        ``dvt_cfg.threshold``, differentiable when gradients are enabled."""
        if not self.training:
            return self._adaptive(x, self.dvt_cfg.threshold).logits
        self._check_shape(x)
        if self.finite_check_in_training and x.is_floating_point() and bool(nonfinite(x)):
            raise ValueError("input contains NaN or infinite values")
        return tuple(o.logits for o in self._all_stages(x))

    @torch.no_grad()
    def predict(self, x: Tensor, threshold: float | None = None) -> Prediction:
        """Batched adaptive inference with real exit.

        After every stage but the last, the images whose top-1 softmax probability is ≥ η leave
        the batch; the rest (compacted, with their upstream tokens and logits) run the next stage.

        Args:
            x: ``(B, C, H, W)`` full-resolution images.
            threshold: η (default ``dvt_cfg.threshold``). 0 exits every image after stage 0; a
                value above 1 sends every image through the last stage.

        Returns:
            A :class:`~.outputs.Prediction`: ``stage`` is the index of the stage that answered,
            ``gmacs`` the sum of :meth:`gmacs_stage` over the stages an image ran, ``box`` −1
            (no region), ``confidence`` stage 0's top-1 probability.

        Raises:
            RuntimeError: the model is in training mode.
            ValueError: a bad input batch (wrong shape, NaN/inf), or no classifier.
        """
        if self.training:
            raise RuntimeError("DVT.predict on a model in training mode: call model.eval() first")
        if self.num_classes == 0:
            raise ValueError("predict needs a classifier (the model has num_classes=0): the exit rule "
                             "reads the class probabilities")
        return self._adaptive(x, self.dvt_cfg.threshold if threshold is None else float(threshold))

    def _adaptive(self, x: Tensor, threshold: float) -> Prediction:
        """:meth:`predict`'s computation, differentiable when gradients are enabled."""
        self._check_shape(x)
        bad = nonfinite(x) if x.is_floating_point() else None  # read at the first exit decision's sync
        B, last = x.shape[0], len(self.stages) - 1
        up = self.forward_stage(0, x)
        out = up.logits
        confidence = _top1(up.logits)
        stage = torch.zeros(B, dtype=torch.long, device=x.device)
        gmacs = torch.full((B,), self.gmacs_stage(0), device=x.device)
        rows, conf = None, confidence  # rows: which images of x are still running (None: all)
        for i in range(1, last + 1):
            go_on = conf < threshold
            if i == 1 and bad is not None:  # a bad input adds B + 1 entries: one nonzero answers both
                go_on = torch.cat([go_on, bad.expand(B + 1)])
            keep = go_on.nonzero().squeeze(1)  # this stage's one host sync: batch compaction
            if i == 1 and keep.numel() > B:
                raise ValueError("input contains NaN or infinite values")
            if keep.numel() == 0:
                break
            rows = keep if rows is None else rows.index_select(0, keep)
            up = self.forward_stage(i, x.index_select(0, rows), up.index(keep))
            out = out.index_copy(0, rows, up.logits.to(out.dtype))
            stage.index_fill_(0, rows, i)
            gmacs.index_add_(0, rows, torch.full((rows.numel(),), self.gmacs_stage(i), device=x.device))
            conf = _top1(up.logits)
        box = torch.full((B, 4), -1, dtype=torch.long, device=x.device)
        return Prediction(logits=out, stage=stage, gmacs=gmacs, box=box, confidence=confidence)

    @torch.no_grad()
    def predict_stages(self, x: Tensor) -> tuple[Prediction, ...]:
        """Every image's prediction at every stage, from one pass of the cascade.

        Returns:
            One :class:`~.outputs.Prediction` per stage ``i``, as if every image exited there:
            stage ``i``'s logits, ``stage = i``, ``gmacs`` = the stages 0…i, ``box`` −1, and
            ``confidence`` = stage ``i``'s *own* top-1 probability (for stage 0 the same as
            :meth:`predict`'s). A threshold sweep reads the cascade off them: an image answers at
            the first stage ``i`` < last whose confidence is ≥ η, else at the last; that equals
            :meth:`predict` (tested).
        """
        self.check_input(x)
        B, spent, preds = x.shape[0], 0.0, []
        box = torch.full((B, 4), -1, dtype=torch.long, device=x.device)
        for i, o in enumerate(self._all_stages(x)):
            spent += self.gmacs_stage(i)
            preds.append(Prediction(o.logits, torch.full((B,), i, dtype=torch.long, device=x.device),
                                    torch.full((B,), spent, device=x.device), box.clone(), _top1(o.logits)))
        return tuple(preds)

    # ------------------------------------------------------------------ compute accounting
    def gmacs_stage(self, i: int) -> float:
        """Closed-form GMACs of stage ``i`` for one image: its ViT at its grid plus, from stage 1 on,
        the reuse it runs (the feature MLP on the upstream tokens, the 1×1 relation map on the
        upstream ``n×n`` logits; resizes are not counted, as in :mod:`sacvit.flops`)."""
        vit, g = self.stages[i], self.grids[i]
        macs = flops.vit_macs(g, self.patch_size, self.embed_dim, len(vit.blocks), vit.num_classes,
                              timm_ops.mlp_ratio(vit.blocks[0]), vit.patch_embed.proj.in_channels)
        if i > 0:
            n_up = self.grids[i - 1] ** 2
            if self.feature_reuse is not None:
                macs += n_up * 2 * self.embed_dim * self.feature_reuse[i - 1].mlp.fc1.out_features
            if self.relation_reuse is not None:
                conv = self.relation_reuse[i - 1].map
                macs += n_up * n_up * conv.in_channels * conv.out_channels
        return macs / flops.GIGA

    def gmacs_full(self) -> float:
        """Closed-form GMACs of the whole cascade for one image (every stage run)."""
        return sum(self.gmacs_stage(i) for i in range(len(self.stages)))


def _top1(logits: Tensor) -> Tensor:
    """``(B,)`` top-1 softmax probability (float32, detached): what η is compared with."""
    return logits.detach().float().softmax(dim=-1).amax(dim=-1)
