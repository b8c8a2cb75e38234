"""pooling.py on hand-made arrays: each mode, padding on either side, the prompt left out, Dense and normalise."""

from __future__ import annotations

import numpy as np
import pytest

from llmkit.pooling import DenseLayer, Head, activation_name, exclude_prefix, normalize, pool

# two inputs, 4 positions, 2 dims; row 0 has 3 real tokens then a pad (right padding), row 1 a pad then 3 (left)
HIDDEN = np.array(
    [
        [[1.0, 2.0], [3.0, -4.0], [5.0, 0.0], [100.0, 100.0]],
        [[100.0, 100.0], [2.0, 2.0], [-4.0, 6.0], [0.0, 1.0]],
    ],
    dtype=np.float32,
)
MASK = np.array([[1, 1, 1, 0], [0, 1, 1, 1]])


def test_mean_ignores_padding_on_either_side() -> None:
    np.testing.assert_allclose(pool(HIDDEN, MASK, "mean"), [[3.0, -2 / 3], [-2 / 3, 3.0]], rtol=1e-6)


def test_cls_is_the_first_real_token() -> None:
    np.testing.assert_array_equal(pool(HIDDEN, MASK, "cls"), [[1.0, 2.0], [2.0, 2.0]])


def test_lasttoken_is_the_last_real_token() -> None:
    np.testing.assert_array_equal(pool(HIDDEN, MASK, "lasttoken"), [[5.0, 0.0], [0.0, 1.0]])


def test_max_never_takes_a_pad() -> None:
    np.testing.assert_array_equal(pool(HIDDEN, MASK, "max"), [[5.0, 2.0], [2.0, 6.0]])


def test_mean_sqrt_len_divides_by_the_root_of_the_count() -> None:
    np.testing.assert_allclose(pool(HIDDEN, MASK, "mean_sqrt_len_tokens"),
                               np.array([[9.0, -2.0], [-2.0, 9.0]]) / np.sqrt(3), rtol=1e-6)


def test_weightedmean_weights_count_from_the_first_real_token() -> None:
    # weights 1, 2, 3 for the three real tokens of each row, whichever side the pad is on
    expected = np.array([[1 + 6 + 15, 2 - 8 + 0], [2 - 8 + 0, 2 + 12 + 3]]) / 6
    np.testing.assert_allclose(pool(HIDDEN, MASK, "weightedmean"), expected, rtol=1e-6)


def test_several_modes_concatenate_in_the_order_given() -> None:
    both = pool(HIDDEN, MASK, ("cls", "mean"))
    assert both.shape == (2, 4)
    np.testing.assert_allclose(both[:, :2], pool(HIDDEN, MASK, "cls"))
    np.testing.assert_allclose(both[:, 2:], pool(HIDDEN, MASK, "mean"))


def test_unknown_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown pooling mode 'median'"):
        pool(HIDDEN, MASK, "median")


def test_exclude_prefix_masks_the_first_real_tokens() -> None:
    assert exclude_prefix(MASK, 2).tolist() == [[0, 0, 1, 0], [0, 0, 0, 1]]
    assert exclude_prefix(MASK, 0).tolist() == MASK.tolist()


def test_head_pools_without_the_prompt_only_when_the_model_says_so() -> None:
    without = Head(pooling=("mean",), include_prompt=False)(HIDDEN, MASK, prefix_tokens=1)
    np.testing.assert_allclose(without, [[4.0, -2.0], [-2.0, 3.5]])
    with_prompt = Head(pooling=("mean",), include_prompt=True)(HIDDEN, MASK, prefix_tokens=1)
    np.testing.assert_allclose(with_prompt, pool(HIDDEN, MASK, "mean"))


def test_weightedmean_without_the_prompt_keeps_the_original_weights() -> None:
    out = Head(pooling=("weightedmean",), include_prompt=False)(HIDDEN, MASK, prefix_tokens=1)
    # row 0: tokens 2 and 3 with weights 2 and 3
    np.testing.assert_allclose(out[0], (2 * np.array([3.0, -4.0]) + 3 * np.array([5.0, 0.0])) / 5, rtol=1e-6)


def test_normalize_gives_unit_rows_and_leaves_a_zero_row_zero() -> None:
    out = normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_dense_is_activation_of_the_affine_map() -> None:
    layer = DenseLayer(weight=np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]], np.float32),
                       bias=np.array([0.0, 1.0, 0.5], np.float32), activation="tanh")
    np.testing.assert_allclose(layer(np.array([[1.0, 2.0]], np.float32)), np.tanh([[1.0, 4.0, -3.5]]), rtol=1e-6)
    plus = DenseLayer(weight=np.eye(2, dtype=np.float32), activation="identity", residual="identity")
    np.testing.assert_allclose(plus(np.array([[1.0, 2.0]], np.float32)), [[2.0, 4.0]])


def test_head_applies_dense_before_normalising() -> None:
    layer = DenseLayer(weight=np.array([[2.0, 0.0]], np.float32), activation="identity")
    out = Head(pooling=("cls",), dense=(layer,), normalize=True)(HIDDEN, MASK)
    np.testing.assert_allclose(out, [[1.0], [1.0]])


@pytest.mark.parametrize(
    ("spec", "name"),
    [("torch.nn.modules.activation.Tanh", "tanh"), ("torch.nn.modules.linear.Identity", "identity"),
     ("torch.nn.modules.activation.GELU", "gelu"), (None, "tanh"), ("my.module.Swish", None)],
)
def test_activation_names_from_sentence_transformers_configs(spec: str | None, name: str | None) -> None:
    assert activation_name(spec) == name


def test_gelu_is_the_exact_erf_form() -> None:
    import torch

    x = np.linspace(-4, 4, 33, dtype=np.float32)[None, :]
    layer = DenseLayer(weight=np.eye(33, dtype=np.float32), activation="gelu")
    np.testing.assert_allclose(layer(x), torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), atol=1e-6)
