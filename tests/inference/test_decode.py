import torch

from harmonica.config.schema import DecodeConfig
from harmonica.inference.decode import cut_loops, find_loop, max_frames_for_text


def test_loops_are_found_and_cut_keeping_one_period():
    speech_like = torch.arange(100) % 97
    looped = torch.cat([speech_like, torch.tensor([5, 6, 7] * 30)])
    assert find_loop(looped, 75.0) == (100, 3)
    cut, was_cut = cut_loops(looped, 75.0)
    assert was_cut and cut.tolist() == speech_like.tolist() + [5, 6, 7]
    assert find_loop(torch.tensor([9] * 60), 75.0) == (0, 1)  # a stuck token is a period-1 loop


def test_no_loop_in_varied_tokens_or_short_repeats():
    torch.manual_seed(0)
    assert find_loop(torch.randint(0, 256, (450,)), 75.0) is None
    short = torch.cat([torch.randint(0, 256, (50,)), torch.tensor([1, 2] * 10), torch.randint(0, 256, (50,))])
    assert find_loop(short, 75.0) is None  # 20 frames = 0.27 s < 0.6 s


def test_length_bound_follows_text_and_model():
    d = DecodeConfig(max_length_per_char=0.25)
    assert max_frames_for_text(40, d, 75.0, 511) == 511  # 750 by the text, capped by the model
    assert max_frames_for_text(10, d, 75.0, 511) == round(10 * 0.25 * 75)
