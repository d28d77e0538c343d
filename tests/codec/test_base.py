from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonica.codec import build_codec, num_frames
from harmonica.codec.kmeans import FrameReservoir, kmeans, nearest
from harmonica.config.schema import CodecConfig


@pytest.mark.parametrize(("n", "hop", "want"), [(1, 320, 1), (319, 320, 1), (320, 320, 1),
                                                (321, 320, 2), (24_000, 320, 75), (24_001, 320, 76)])
def test_num_frames_is_ceil(n: int, hop: int, want: int) -> None:
    assert num_frames(n, hop) == want


def test_duration_to_frames_matches_frame_rate() -> None:
    codec = build_codec(CodecConfig())
    assert codec.frame_rate == 75.0
    assert codec.duration_to_frames(1.0) == 75
    assert codec.duration_to_frames(0.5) == 38  # ceil(37.5)


def test_bad_inputs_are_rejected() -> None:
    codec = build_codec(CodecConfig())
    with pytest.raises(RuntimeError, match="fit"):
        codec.encode(np.zeros(1000, np.float32))
    with pytest.raises(ValueError):
        codec._check_wav(np.zeros((2, 100), np.float32))
    with pytest.raises(TypeError):
        codec._check_wav(np.zeros(100, np.int16))
    with pytest.raises(ValueError):
        codec._check_wav(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError):
        build_codec(CodecConfig(n_fft=512, hop_length=320))  # < 2x overlap for Griffin-Lim


def test_nearest_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(500, 16, generator=g), torch.randn(37, 16, generator=g)
    idx, dist = nearest(x, c)
    brute = torch.cdist(x, c).pow(2)
    assert torch.equal(idx, brute.argmin(1))
    torch.testing.assert_close(dist, brute.min(1).values, rtol=1e-4, atol=1e-4)


def test_kmeans_with_fewer_points_than_clusters() -> None:
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    cent, counts = kmeans(x, 32, 5, torch.Generator().manual_seed(0))
    assert cent.shape == (32, 4) and counts.sum() == 10
    assert torch.allclose(nearest(x, cent)[1], torch.zeros(10), atol=1e-5)  # every point exact


def test_reservoir_is_seeded_and_bounded() -> None:
    blocks = [np.full((50, 2), i, np.float32) for i in range(40)]  # 2000 rows
    a, b = FrameReservoir(300, seed=3), FrameReservoir(300, seed=3)
    for blk in blocks:
        a.add(blk)
        b.add(blk)
    sa = a.sample().numpy()
    assert sa.shape == (300, 2) and np.array_equal(sa, b.sample().numpy())
    # roughly uniform over the stream: late blocks are represented as well as early ones
    ids = sa[:, 0]
    assert 0.3 < (ids >= 20).mean() < 0.7
