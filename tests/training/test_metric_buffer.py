"""ResumeDedupMetrics: a resumed run logs no second value of a metric, and no second image of a key, at a
step the run already has."""

from harmonica.training.metric_buffer import ResumeDedupMetrics
from tests.tiny import RecordingSink


def test_a_resumed_run_drops_metrics_and_images_at_steps_it_already_has():
    sink = RecordingSink()
    asked = []

    def image_steps():
        asked.append(1)
        return {"nar/util_heatmap": [4, 8], "samples/u1/spectrogram": [8]}

    dedup = ResumeDedupMetrics(sink, lambda key: [(2, 1.0), (4, 0.5)] if key == "nar/loss" else [], image_steps)
    dedup.log_metrics({"nar/loss": 0.4, "val/loss": 1.0}, step=4)
    dedup.log_metrics({"nar/loss": 0.3}, step=6)
    for key, step in (("nar/util_heatmap", 8), ("nar/util_heatmap", 12), ("samples/u1/spectrogram", 8),
                      ("samples/u2/spectrogram", 8)):
        dedup.log_image(key, f"{key}@{step}", step)
    assert sink.metrics == {"val/loss": {4: 1.0}, "nar/loss": {6: 0.3}}
    assert sink.images == {"nar/util_heatmap": {12: "nar/util_heatmap@12"},
                           "samples/u2/spectrogram": {8: "samples/u2/spectrogram@8"}}
    assert len(asked) == 1  # the run's images are listed once

    fresh = RecordingSink()
    new_run = ResumeDedupMetrics(fresh)
    new_run.log_image("nar/util_heatmap", "x", 4)
    assert fresh.images == {"nar/util_heatmap": {4: "x"}}
