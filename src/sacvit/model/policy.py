"""Where the SAC stage looks: the cluster policy, written once for every path.

A :class:`ClusterPolicy` turns the EE stage's global class attention (GCA, ``(B, h, w)``) into the
target / non-target :class:`~sacvit.model.clustering.Clusters`. It owns every choice of that step:

* **where** the window goes — a *window policy*, one entry of :data:`WINDOW_POLICIES` (``gca``:
  the largest GCA mass; ``center``; ``random``). Adding a policy is one edit: one more entry
  (:func:`register_window_policy`), after which ``SACConfig(window_policy=name)`` selects it in eager
  ``predict``, training, the staged / compiled / ONNX graphs and ``sacvit visualize`` alike;
* **how big** — the window side per image: fixed (``cluster_mode='window'``, one bucket) or
  adaptive (the smallest side holding ``rho`` of the GCA mass; images bucketed by side);
* **how many** — the target-token rule: the top ``k = ⌈α·m²⌉`` EE tokens of the window by GCA
  (:meth:`ClusterPolicy.num_selected`), and the token counts ``(T, M)`` of the static geometry.

It is pure (a frozen dataclass of the SAC configuration, the EE grid and the patch size; no
parameters) and is used by :class:`~sacvit.model.sacvit.SACViT` (``model.policy``), by
:mod:`~sacvit.model.stages` (the graph-capturable stages and their geometry) and, through
:meth:`SACViT.target_selection <sacvit.model.sacvit.SACViT.target_selection>`, by visualize.

Selection is *a window, then the top k of it by GCA*, so the predecessors are compositions of the
same parts (:mod:`.family`): LF-ViT is an ``m×m`` window with ``k = m²`` (or α = 0.88) and
``attention='full'``; CF-ViT is the window of the whole grid with ``k < h·w`` (its informative
tokens anywhere on the grid: ``alpha_whole_grid=True``) and full attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..config import SACConfig
from .clustering import (Clusters, adaptive_window_size, best_window, center_window, make_clusters,
                         random_window, target_count, window_to_box)

__all__ = ["ClusterPolicy", "WindowRule", "WINDOW_POLICIES", "register_window_policy"]

#: ``(gca (B, h, w), m, (h, w)) → (row, col)``, each ``(B,)`` long: the top-left EE token of each
#: image's ``m×m`` window.
WindowFn = Callable[[Tensor, int, tuple[int, int]], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class WindowRule:
    """A window policy.

    Attributes:
        corners: the :data:`WindowFn` placing each image's window.
        static: deterministic, so the stages have static graphs (``torch.compile``, ONNX).
    """

    corners: WindowFn
    static: bool = True


#: The window policies by ``SACConfig.window_policy`` name: the one place a policy is written.
WINDOW_POLICIES: dict[str, WindowRule] = {
    "gca": WindowRule(lambda gca, m, grid: best_window(gca, m)),
    "center": WindowRule(lambda gca, m, grid: center_window(gca.shape[0], m, grid, gca.device)),
    "random": WindowRule(lambda gca, m, grid: random_window(gca.shape[0], m, grid, gca.device), static=False),
}


def register_window_policy(name: str, corners: WindowFn, static: bool = True) -> None:
    """Add (or replace) the window policy ``name``: ``SACConfig(window_policy=name)`` then uses it."""
    WINDOW_POLICIES[name] = WindowRule(corners, static)


@dataclass(frozen=True)
class ClusterPolicy:
    """Window choice, window side and target-token rule of a SAC-ViT (see the module doc).

    Attributes:
        grid: the EE grid ``(h, w)``.
        scale: the EE downsampling factor ``s`` (one EE token is the parent of ``s×s`` full tokens).
        patch: the patch size ``p`` in pixels.
        window_policy: a :data:`WINDOW_POLICIES` name.
        mode: ``"window"`` (every image has side ``window``) or ``"adaptive"``.
        window: the fixed window side ``m`` in EE tokens.
        adaptive_sizes, rho: the adaptive mode's candidate sides and GCA mass fraction.
        alpha: fraction of the window's EE tokens (top by GCA) that are target.
        alpha_whole_grid: apply ``alpha`` also when the window is the whole grid (CF-ViT's
            selection); by default a whole-grid window is "no clustering", every token target.

    Raises:
        ValueError: an unregistered window policy, or a window that does not fit the grid.
    """

    grid: tuple[int, int]
    scale: int
    patch: int
    window_policy: str = "gca"
    mode: str = "window"
    window: int = 5
    adaptive_sizes: tuple[int, ...] = field(default=(3, 4, 5, 6, 7))
    rho: float = 0.7
    alpha: float = 1.0
    alpha_whole_grid: bool = False

    def __post_init__(self) -> None:
        h, w = self.grid
        if self.window_policy not in WINDOW_POLICIES:
            raise ValueError(f"window_policy={self.window_policy!r} is not a registered window policy "
                             f"({', '.join(map(repr, WINDOW_POLICIES))}; see sacvit.model.policy.register_window_policy)")
        if self.mode == "window" and self.window > min(h, w):
            raise ValueError(f"window={self.window} does not fit the {h}×{w} EE grid")
        if self.mode == "adaptive" and min(self.adaptive_sizes) > min(h, w):
            raise ValueError(f"no adaptive window size of {self.adaptive_sizes} fits the {h}×{w} EE grid")

    @classmethod
    def from_config(cls, cfg: SACConfig, grid: tuple[int, int], patch: int) -> "ClusterPolicy":
        """The policy of a SAC configuration on an EE grid at a patch size."""
        return cls(grid=tuple(grid), scale=cfg.ee_scale, patch=patch, window_policy=cfg.window_policy,
                   mode=cfg.cluster_mode, window=cfg.window, adaptive_sizes=tuple(cfg.adaptive_sizes),
                   rho=cfg.rho, alpha=cfg.alpha, alpha_whole_grid=cfg.alpha_whole_grid)

    @classmethod
    def for_image(cls, cfg: SACConfig, img_size: tuple[int, int], patch: int) -> "ClusterPolicy":
        """The policy of a model whose full-resolution input is ``img_size`` at ``patch``.

        Raises:
            ValueError: the image is not whole patches, the token grid not a whole EE grid, or the
                window does not fit the EE grid.
        """
        h, w = img_size
        if h % patch or w % patch:
            raise ValueError(f"image size {h}×{w} is not divisible by the patch size {patch}")
        gh, gw, s = h // patch, w // patch, cfg.ee_scale
        if gh % s or gw % s:
            raise ValueError(f"the {gh}×{gw} token grid is not divisible by ee_scale={s}: the EE grid must be whole")
        return cls.from_config(cfg, (gh // s, gw // s), patch)

    # ------------------------------------------------------------------ geometry
    @property
    def token_px(self) -> int:
        """Pixels of the full-resolution image covered by one EE token (``s·p``)."""
        return self.scale * self.patch

    @property
    def static(self) -> bool:
        """Whether the two stages have static graphs: one window side, a deterministic policy."""
        return self.mode == "window" and WINDOW_POLICIES[self.window_policy].static

    def check_static(self) -> None:
        """``ValueError`` saying why the stages have no static graph (unless :attr:`static`)."""
        if self.mode != "window":
            raise ValueError("cluster_mode='adaptive' picks a window side per image (data-dependent bucket sizes), "
                             "which has no static graph: compile and export support cluster_mode='window' only")
        if not WINDOW_POLICIES[self.window_policy].static:
            static = [n for n, r in WINDOW_POLICIES.items() if r.static]
            raise ValueError(f"window_policy={self.window_policy!r} draws windows at random (an ablation); compile "
                             f"and export support the deterministic window policies {', '.join(map(repr, static))}")

    def num_selected(self, m: int) -> int:
        """The target-token rule: how many EE tokens of an ``m×m`` window are target (``⌈α·m²⌉``)."""
        whole = m >= min(self.grid) and not self.alpha_whole_grid
        return target_count(1.0 if whole else self.alpha, m)

    def counts(self, m: int | None = None) -> tuple[int, int]:
        """SAC token counts ``(T, M)`` for window side ``m`` (default: the fixed ``window``)."""
        k = self.num_selected(self.window if m is None else m)
        return self.scale * self.scale * k, self.grid[0] * self.grid[1] - k

    def box(self, row: Tensor, col: Tensor, m: int) -> Tensor:
        """``(B, 4)`` pixel boxes ``(x0, y0, x1, y1)`` of windows on the EE grid."""
        return window_to_box(row, col, m, self.token_px)

    # ------------------------------------------------------------------ choice per image
    def sides(self, gca: Tensor) -> Tensor:
        """Window side ``m`` of each image, ``(B,)`` long."""
        if self.mode == "adaptive":
            return adaptive_window_size(gca, self.adaptive_sizes, self.rho)
        return torch.full((gca.shape[0],), self.window, dtype=torch.long, device=gca.device)

    def buckets(self, gca: Tensor) -> list[tuple[int, Tensor | None]]:
        """``(m, images)`` of the images sharing each window side, ascending ``m``.

        The fixed mode is one bucket of every image (``None``, no host sync); the adaptive mode
        reads the bucket sizes (one host sync).
        """
        if self.mode != "adaptive":
            return [(self.window, None)]
        sizes = self.sides(gca)
        order = torch.argsort(sizes, stable=True)
        buckets, start = [], 0
        for m, n in enumerate(torch.bincount(sizes).tolist()):
            if n:
                buckets.append((m, order[start:start + n]))
                start += n
        return buckets

    def corners(self, gca: Tensor, m: int) -> tuple[Tensor, Tensor]:
        """Top-left ``(row, col)`` of each image's ``m×m`` window under the window policy."""
        return WINDOW_POLICIES[self.window_policy].corners(gca, m, self.grid)

    def clusters(self, gca: Tensor, row: Tensor, col: Tensor, m: int) -> Clusters:
        """The clusters of windows ``(row, col)`` of side ``m``: the top :meth:`num_selected` tokens
        of each window by GCA are target, every other EE token non-target."""
        return make_clusters(gca, row, col, m, self.scale, self.token_px, k=self.num_selected(m))

    def cluster(self, gca: Tensor, m: int) -> Clusters:
        """Window choice and clusters of a bucket of images sharing window side ``m``."""
        return self.clusters(gca, *self.corners(gca, m), m)

    def plan(self, gca: Tensor) -> list[tuple[Tensor | None, Clusters]]:
        """``(images, clusters)`` per bucket (``images`` ``None``: the whole batch, one bucket)."""
        return [(idx, self.cluster(gca if idx is None else gca[idx], m)) for m, idx in self.buckets(gca)]

    def full(self, batch: int, device: torch.device | str) -> Clusters:
        """The whole image as target (the selection warm-up, or a reference full-resolution pass)."""
        gca = torch.ones(batch, *self.grid, device=device)
        m = min(self.grid)
        return make_clusters(gca, *best_window(gca, m), m, self.scale, self.token_px)

    def selection(self, gca: Tensor) -> tuple[Tensor, Tensor]:
        """What the SAC stage selects for every image: the ``(B, h, w)`` boolean mask of the target
        EE tokens and the ``(B, 4)`` pixel box of the window — from :meth:`plan`, as ``predict``."""
        B, (h, w) = gca.shape[0], self.grid
        target = torch.ones(B, h * w, dtype=torch.bool, device=gca.device)
        boxes = torch.empty(B, 4, dtype=torch.long, device=gca.device)
        for idx, c in self.plan(gca):
            rows = torch.ones(c.non_target.shape[0], h * w, dtype=torch.bool, device=gca.device)
            rows.scatter_(1, c.non_target, False)
            if idx is None:
                target, boxes = rows, c.box
            else:
                target[idx], boxes[idx] = rows, c.box
        return target.view(B, h, w), boxes
