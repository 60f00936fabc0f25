"""The benchmark model's FLOP parameter count (``medvl.tools.bench.bench_model``), counted by hand."""

from __future__ import annotations

from medvl.tools.bench.bench_model import flop_params


def test_flop_params_counts_qwen2_matmul_weights(tiny_model):
    c = tiny_model.config.text_config
    h, i, v, layers = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    # q/k/v carry biases in Qwen2, o and the MLP do not; two RMSNorms per layer + the final one;
    # the tied embedding is counted once, as the LM head
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    assert c.tie_word_embeddings
    assert flop_params(tiny_model) == layers * per_layer + h + v * h
