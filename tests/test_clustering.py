import math

import pytest
import torch

from sacvit.model import clustering as C


def test_best_window_finds_planted_mass():
    gca = torch.rand(3, 7, 7) * 0.1
    corners = [(0, 0), (2, 1), (2, 2)]
    for b, (r, c) in enumerate(corners):
        gca[b, r:r + 5, c:c + 5] += 1.0
    row, col = C.best_window(gca, 5)
    assert list(zip(row.tolist(), col.tolist())) == corners


def test_best_window_rejects_too_large_window():
    with pytest.raises(ValueError, match="does not fit"):
        C.best_window(torch.rand(1, 4, 4), 5)


@pytest.mark.parametrize("m,alpha", [(5, 1.0), (5, 0.88), (3, 1.0), (7, 1.0), (4, 0.5)])
def test_clusters_partition_ee_tokens(m, alpha):
    torch.manual_seed(0)
    gca = torch.rand(4, 7, 7)
    row, col = C.best_window(gca, m)
    c = C.make_clusters(gca, row, col, m, scale=2, token_px=32, alpha=alpha)
    k = math.ceil(alpha * m * m - 1e-9)
    assert c.num_target == 4 * k and c.num_non_target == 49 - k
    for b in range(4):
        target_ee = set(c.parent[b].tolist())
        non_target = set(c.non_target[b].tolist())
        assert len(target_ee) == k
        assert target_ee.isdisjoint(non_target)
        assert target_ee | non_target == set(range(49))
        # each target parent contributes its four children, and only those
        assert sorted(c.target[b].tolist()) == c.target[b].tolist()
        for p in target_ee:
            r, cc = divmod(p, 7)
            kids = {(2 * r + i) * 14 + 2 * cc + j for i in range(2) for j in range(2)}
            assert kids <= set(c.target[b].tolist())
        # targets lie inside the window
        r0, c0 = row[b].item(), col[b].item()
        assert all(r0 <= p // 7 < r0 + m and c0 <= p % 7 < c0 + m for p in target_ee)


def test_top_alpha_keeps_highest_scores():
    gca = torch.rand(2, 7, 7)
    row, col = C.best_window(gca, 5)
    c = C.make_clusters(gca, row, col, 5, 2, 32, alpha=0.88)
    for b in range(2):
        inside = C.window_mask(row[b:b + 1], col[b:b + 1], 5, (7, 7))[0]
        scores = gca[b].flatten()
        kept = set(c.parent[b].tolist())
        dropped = [i for i in range(49) if inside[i] and i not in kept]
        assert len(dropped) == 3
        assert max(scores[dropped]) <= min(scores[list(kept)])


def test_boxes_inside_image_and_round_trip():
    torch.manual_seed(0)
    for m in (1, 3, 5, 7):
        gca = torch.rand(16, 7, 7)
        row, col = C.best_window(gca, m)
        box = C.window_to_box(row, col, m, token_px=32)
        assert (box >= 0).all() and (box <= 224).all()
        assert ((box[:, 2] - box[:, 0]) == m * 32).all() and ((box[:, 3] - box[:, 1]) == m * 32).all()
        r2, c2, m2 = C.box_to_window(box, 32)
        assert torch.equal(r2, row) and torch.equal(c2, col) and (m2 == m).all()


def test_box_to_window_rejects_misaligned_box():
    with pytest.raises(ValueError, match="not aligned"):
        C.box_to_window(torch.tensor([[1, 0, 33, 32]]), 32)


def test_token_pixel_round_trip():
    idx = torch.arange(196)
    box = C.token_to_pixel(idx, grid_w=14, patch=16)
    assert box.min() >= 0 and box.max() <= 224
    centre_x, centre_y = (box[:, 0] + box[:, 2]) // 2, (box[:, 1] + box[:, 3]) // 2
    assert torch.equal(C.pixel_to_token(centre_x, centre_y, 14, 16), idx)
    assert torch.equal(C.pixel_to_token(box[:, 0], box[:, 1], 14, 16), idx)


def test_target_pixels_are_inside_box():
    gca = torch.rand(3, 7, 7)
    row, col = C.best_window(gca, 5)
    c = C.make_clusters(gca, row, col, 5, 2, 32)
    px = C.token_to_pixel(c.target, 14, 16)  # (B, T, 4)
    box = c.box[:, None]
    assert (px[..., 0] >= box[..., 0]).all() and (px[..., 2] <= box[..., 2]).all()
    assert (px[..., 1] >= box[..., 1]).all() and (px[..., 3] <= box[..., 3]).all()


def test_parent_index_matches_upsampling():
    fine = torch.arange(196)[None]
    parent = C.parent_index(fine, (7, 7), 2)[0]
    grid = torch.arange(49).view(7, 7).repeat_interleave(2, 0).repeat_interleave(2, 1).flatten()
    assert torch.equal(parent, grid)


def test_adaptive_window_size_smallest_sufficient():
    gca = torch.full((3, 7, 7), 1e-4)
    gca[0, 2:5, 2:5] = 1.0  # 3×3 object
    gca[1, 1:6, 1:6] = 1.0  # 5×5 object
    gca[2] = 1.0  # everywhere
    sizes = C.adaptive_window_size(gca, (3, 4, 5, 6, 7), rho=0.95)
    assert sizes.tolist() == [3, 5, 7]
