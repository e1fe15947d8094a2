"""The misclassified-digits figure a user opens in MLflow: every kept digit drawn whole, each
under its caption "#index: true→predicted (probability)", in reading order."""

from __future__ import annotations

import numpy as np

from itwinai_hpc.ml.evaluation import Evaluation, Example
from itwinai_hpc.ml.figures import misclassified_figure


def evaluation(n_examples: int) -> Evaluation:
    rng = np.random.default_rng(0)
    confusion = np.diag(np.full(10, 90))
    confusion[3, 5] = 40
    examples = [Example(100 + i, rng.integers(1, 256, (28, 28), dtype=np.uint8), 3, 5,
                        0.5 + i / 100) for i in range(n_examples)]
    return Evaluation(confusion, 1.0, examples)


def drawn(fig):
    (ax,) = fig.axes
    (image,) = ax.get_images()
    return ax, np.asarray(image.get_array())


def test_each_digit_is_drawn_whole_under_its_caption_in_reading_order():
    ev = evaluation(11)
    fig = misclassified_figure(ev, "test", columns=4)
    ax, mosaic = drawn(fig)
    texts = ax.texts
    assert [t.get_text() for t in texts] == [
        f"#{100 + i}: 3\u21925 ({0.5 + i / 100:.2f})" for i in range(11)]
    for e, t in zip(ev.examples, texts):
        x, y = t.get_position()             # centred over its digit, just above it
        top, left = int(round(y)) + 1, int(round(x - 14))
        assert np.array_equal(mosaic[top:top + 28, left:left + 28], e.pixels)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])) for t in texts}
    assert len(cells) == 11 and len({y for y, _ in cells}) == 3    # 3 rows of 4 columns
    assert (mosaic == 0).sum() == mosaic.size - 11 * 28 * 28      # the rest is white gutter
    assert "40 misclassified, first 11" in fig._suptitle.get_text()


def test_no_misclassified_digit_is_an_empty_figure_not_an_error():
    fig = misclassified_figure(evaluation(0), "test")
    ax, mosaic = drawn(fig)
    assert not ax.texts and not mosaic.any()
