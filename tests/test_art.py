"""The associative retrieval data and model (the `art` task)."""

import torch

from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.plugin_manager.manager import PluginSystem
from crnn_plugins.tasks.art import QUERY_MARK, VOCAB, ARTOptions, ARTTask, decode, generate_art


def test_vocabulary():
    assert len(VOCAB) == 37 and VOCAB[:2] == ["a", "b"] and VOCAB[26] == "0" and VOCAB[36] == "?"


def test_sequences_follow_the_definition():
    data = generate_art(2000, 4, seed=3)
    tokens, target = data["tokens"], data["target"]
    assert tokens.shape == (2000, 11) and target.shape == (2000,)
    keys, digits = tokens[:, 0:8:2], tokens[:, 1:8:2]
    assert (keys < 26).all() and ((digits >= 26) & (digits < 36)).all()
    assert all(len(set(row.tolist())) == 4 for row in keys)  # keys without replacement
    assert (tokens[:, 8] == QUERY_MARK).all() and (tokens[:, 9] == QUERY_MARK).all()
    query = tokens[:, 10]
    match = keys == query[:, None]
    assert (match.sum(1) == 1).all()  # the query is exactly one of the keys
    assert torch.equal(digits[match], target)  # the target is its digit
    text = decode(tokens[0])
    assert len(text) == 11 and text[8:10] == "??"


def test_generation_is_seeded_and_splits_differ():
    task = ARTTask(ARTOptions(train_size=500, val_size=300))
    again = ARTTask(ARTOptions(train_size=500, val_size=300))
    assert torch.equal(task.dataset("train")["tokens"], again.dataset("train")["tokens"])
    assert task.dataset("val")["tokens"].shape == (300, 11)
    assert not torch.equal(task.dataset("train")["tokens"][:300], task.dataset("val")["tokens"])
    other = ARTTask(ARTOptions(train_size=500, val_size=300, data_seed=1))
    assert not torch.equal(task.dataset("train")["tokens"], other.dataset("train")["tokens"])


def test_digits_are_roughly_uniform_and_queries_uniform_over_positions():
    data = generate_art(20000, 4, seed=0)
    counts = torch.bincount(data["target"] - 26, minlength=10).float() / 20000
    assert (counts - 0.1).abs().max() < 0.015
    position = (data["tokens"][:, 0:8:2] == data["tokens"][:, 10:11]).float().argmax(1)
    assert (torch.bincount(position, minlength=4).float() / 20000 - 0.25).abs().max() < 0.015


def test_model_shapes_and_shared_embedding():
    system = PluginSystem(load_entry_points=False)
    spec = ModelSpec("fastweights", "learned", "art", cell_options={"backend": "reference"},
                     task_options={"train_size": 64, "val_size": 64})
    built = build_model(spec, system)
    batch = {k: v[:8] for k, v in built.task.dataset("train").items()}
    logits = built.model(batch)
    assert logits.shape == (8, 37)
    module = built.model.task_module
    torch.testing.assert_close(module.context(batch), module.embedding(batch["tokens"][:, 0]))
    assert built.spec.context == "linear" and built.model.context_net.out_features == 50
    assert set(built.model.init.heads) == {"h", "A"}


def test_authors_generator_and_initialisation_options():
    """key_letters=25 never uses 'z' as a key (the authors' generator); embedding_init=zeros and
    head_init=variance_scaling (TF's variance_scaling(2.0): truncated normal, fan-in, zero bias)."""
    data = generate_art(4000, 4, seed=1, key_letters=25)
    keys = data["tokens"][:, 0:8:2]
    assert keys.max().item() == 24 and (data["tokens"][:, -1] != 25).all()
    assert generate_art(4000, 4, seed=1)["tokens"][:, 0:8:2].max().item() == 25  # the default uses 'z'
    torch.manual_seed(0)
    module = ARTTask(ARTOptions(embedding_init="zeros", head_init="variance_scaling", head_hidden=400)).build_module(50)
    assert module.embedding.weight.abs().sum() == 0
    first, last = module.out[0], module.out[2]
    assert first.bias.abs().sum() == 0 and last.bias.abs().sum() == 0
    std = first.weight.std().item()
    assert abs(std - (2.0 / 50) ** 0.5) < 0.02  # the truncated normal's std is the target sqrt(2 / fan_in)
    assert first.weight.abs().max().item() <= 2 * (2.0 / 50) ** 0.5 / 0.87962566103423978 + 1e-6
    default = ARTTask(ARTOptions()).build_module(50)
    assert default.embedding.weight.abs().sum() > 0 and default.out[0].bias.abs().sum() > 0
